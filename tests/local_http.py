"""A real HTTP server on 127.0.0.1 for tests of downloads: it serves a dict of files, records
every request, and can misbehave on purpose (cut a body short, never answer, fail with 503)."""

import http.server
import threading

class LocalServer:
    """`with LocalServer({'/a.pkl': b'...'}) as srv:` -> srv.url('/a.pkl'), srv.requests.

    behaviour[path] changes what that path does:
      'short'  sends the headers of the whole file but only half of its body, then closes;
      'hang'   never answers (until the server stops);
      'fail'   answers 503 Service Unavailable.
    Any other path that is not in `files` answers 404.
    """

    def __init__(self, files=None, behaviour=None):
        self.files = dict(files or {})
        self.behaviour = dict(behaviour or {})
        self.requests = []
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                how = server.behaviour.get(self.path)
                if how == 'hang':
                    server.stopping.wait(60)
                    return
                if how == 'fail':
                    self.send_error(503)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if how == 'short' else data)
                if how == 'short':
                    self.close_connection = True

            def log_message(self, *args):
                pass

        return Handler

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
