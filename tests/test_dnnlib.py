"""dnnlib.util: open_url (local HTTP server, cache, sha256, offline), dotted-name lookup, helpers."""

import copy
import hashlib
import http.server
import os
import pickle
import socket
import sys
import threading

import pytest

import dnnlib
from dnnlib import util

#----------------------------------------------------------------------------
# A tiny HTTP server on 127.0.0.1 that counts requests.

class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}          # path -> bytes
    requests = []       # paths requested

    def do_GET(self):
        type(self).requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

@pytest.fixture
def server():
    _Handler.files = {'/weights/model.pkl': b'network bytes ' * 100}
    _Handler.requests = []
    httpd = http.server.HTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}', _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

#----------------------------------------------------------------------------

def test_download_then_cache_hit(server, tmp_path):
    base, handler = server
    url = base + '/weights/model.pkl'
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == handler.files['/weights/model.pkl']
    assert handler.requests == ['/weights/model.pkl']
    cached = [p for p in os.listdir(tmp_path)]
    assert len(cached) == 1 and cached[0].endswith('_model.pkl')

    # Second call: served from the cache, the server sees no new request.
    fname = util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True)
    assert os.path.dirname(fname) == str(tmp_path)
    with open(fname, 'rb') as f:
        assert f.read() == handler.files['/weights/model.pkl']
    assert len(handler.requests) == 1

    # cache=False downloads again and leaves nothing new behind.
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False, cache=False) as f:
        assert f.read() == handler.files['/weights/model.pkl']
    assert len(handler.requests) == 2
    assert len(os.listdir(tmp_path)) == 1

def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    base, _handler = server
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'envcache'))
    assert util.make_cache_dir_path('downloads') == str(tmp_path / 'envcache' / 'downloads')
    assert dnnlib.make_cache_dir_path('x') == str(tmp_path / 'envcache' / 'x')
    fname = util.open_url(base + '/weights/model.pkl', verbose=False, return_filename=True)
    assert fname.startswith(str(tmp_path / 'envcache' / 'downloads'))

def test_sha256_check(server, tmp_path):
    base, handler = server
    data = handler.files['/weights/model.pkl']
    good = hashlib.sha256(data).hexdigest()
    bad = '0' * 64
    with util.open_url(base + '/weights/model.pkl', cache_dir=str(tmp_path), verbose=False, sha256=good) as f:
        assert f.read() == data
    with pytest.raises(IOError) as info:
        util.open_url(base + '/weights/model.pkl', cache_dir=str(tmp_path / 'other'), verbose=False, sha256=bad)
    assert bad in str(info.value) and good in str(info.value)
    assert not os.path.exists(tmp_path / 'other') # a bad download is not cached

    # Local files are checked too.
    local = tmp_path / 'local.bin'
    local.write_bytes(data)
    with util.open_url(str(local), sha256=good) as f:
        assert f.read() == data
    with pytest.raises(IOError, match='SHA-256 mismatch'):
        util.open_url(str(local), sha256=bad)

def test_single_attempt_download(server, tmp_path):
    # metrics.detectors downloads with num_attempts=1: the first attempt must be able to succeed.
    base, handler = server
    with util.open_url(base + '/weights/model.pkl', cache_dir=str(tmp_path), num_attempts=1, verbose=False) as f:
        assert f.read() == handler.files['/weights/model.pkl']

def test_unreachable_url_gives_clear_error(tmp_path):
    url = f'http://127.0.0.1:{_free_port()}/detector.pkl'
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=False)
    msg = str(info.value)
    assert url in msg
    assert 'local path' in msg

def test_http_404_is_an_error(server, tmp_path):
    base, handler = server
    with pytest.raises(IOError, match='404'):
        util.open_url(base + '/missing.pkl', cache_dir=str(tmp_path), num_attempts=3, verbose=False)
    assert handler.requests == ['/missing.pkl'] # not retried

def test_local_paths_and_file_urls(tmp_path):
    path = tmp_path / 'a b.bin'
    path.write_bytes(b'hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'hello'
    assert util.open_url(str(path), return_filename=True) == str(path)
    url = path.as_uri() # file:///.../a%20b.bin
    assert url.startswith('file://')
    with util.open_url(url) as f:
        assert f.read() == b'hello'
    with pytest.raises(FileNotFoundError, match='nope.bin'):
        util.open_url(str(tmp_path / 'nope.bin'))
    with pytest.raises(FileNotFoundError):
        util.open_url((tmp_path / 'nope.bin').as_uri())

def test_is_url():
    assert util.is_url('https://example.com/x.pkl')
    assert util.is_url('http://127.0.0.1:8000/x')
    assert not util.is_url('/tmp/x.pkl')
    assert not util.is_url('file:///tmp/x.pkl')
    assert util.is_url('file:///tmp/x.pkl', allow_file_urls=True)
    assert not util.is_url(None)

#----------------------------------------------------------------------------

def test_easydict():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1 and d['b'] == 2
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    with pytest.raises(AttributeError):
        del d.missing
    assert getattr(d, 'missing', 7) == 7 and vars(d) == {}   # attributes live in the dict only
    nested = dnnlib.EasyDict(x=dnnlib.EasyDict(y=[1]))
    for twin in (copy.deepcopy(nested), pickle.loads(pickle.dumps(nested))):
        assert type(twin) is dnnlib.EasyDict and type(twin.x) is dnnlib.EasyDict and twin == nested
        assert twin.x.y is not nested.x.y

def test_construct_class_by_name():
    obj = util.construct_class_by_name(class_name='dnnlib.util.EasyDict', x=3)
    assert isinstance(obj, dnnlib.EasyDict) and obj.x == 3
    assert util.call_func_by_name(3, 4, func_name='math.hypot') == 5.0
    assert util.get_obj_by_name('os.path.join') is os.path.join
    module, name = util.get_module_from_obj_name('os.path.join')
    assert module is os.path and name == 'join'
    with pytest.raises(AttributeError, match='no attribute "Nope"'):
        util.construct_class_by_name(class_name='dnnlib.util.Nope')
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_package_xyz.Thing')

def test_name_lookup_reports_the_real_import_error(tmp_path, monkeypatch):
    # A module that exists but fails to import: its own error, not "cannot find".
    (tmp_path / 'broken_mod_for_lookup.py').write_text('import no_such_dependency_xyz\nclass Thing: pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match='no_such_dependency_xyz'):
        util.construct_class_by_name(class_name='broken_mod_for_lookup.Thing')
    with pytest.raises(TypeError, match='not callable'):
        util.call_func_by_name(func_name='math.pi')

def test_format_time():
    assert util.format_time(0) == '0s'
    assert util.format_time(59.4) == '59s'
    assert util.format_time(125) == '2m 05s'
    assert util.format_time(3 * 3600 + 4 * 60 + 5) == '3h 04m 05s'
    assert util.format_time(2 * 86400 + 3 * 3600 + 4 * 60) == '2d 03h 04m'

def test_logger_tees_stdout(tmp_path):
    log = tmp_path / 'log.txt'
    old_stdout = sys.stdout
    old_stderr = sys.stderr
    with util.Logger(str(log)):
        print('to both')
        print('an error', file=sys.stderr)
        sys.stdout.write(b'bytes too\n')
        assert log.read_text() == 'to both\nan error\nbytes too\n'   # flushed as written
    assert sys.stdout is old_stdout and sys.stderr is old_stderr
    with util.Logger(str(log), file_mode='a'):
        print('appended')
    assert log.read_text().endswith('bytes too\nappended\n')

#----------------------------------------------------------------------------
