"""Small utilities shared by every part of the toolkit: attribute dicts, loading objects
by dotted name, logging to a file, and `open_url` with a local download cache.

The public names follow stylegan2-ada-pytorch's `dnnlib.util`, so configuration dicts
(`class_name='training.dataset.ImageFolderDataset'`) and old scripts keep working.
"""

import functools
import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
import time
import types
import urllib.parse
from typing import Any, Tuple, Union

#----------------------------------------------------------------------------
# Attribute dictionary.

class EasyDict(dict):
    """A dict whose items are also attributes: `d.key` reads, sets and deletes `d['key']`."""

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        raise AttributeError(name)   # what getattr(d, name, default) and copy/pickle expect

    __setattr__ = dict.__setitem__

    def __delattr__(self, name: str) -> None:
        if name not in self:
            raise AttributeError(name)
        del self[name]

#----------------------------------------------------------------------------
# Logging stdout/stderr to a file.

class Logger:
    """Copy everything printed to stdout and stderr into a log file; the console still shows it.

    train.py keeps one for the whole run; it also works as a context manager. `close()` puts
    the original streams back (both end up on the original stdout meanwhile).
    """

    def __init__(self, file_name: str = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = None if file_name is None else open(file_name, file_mode)
        self.should_flush = should_flush
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _sinks(self) -> list:
        return [sink for sink in (self.file, self.stdout) if sink is not None]

    def write(self, text: Union[str, bytes]) -> None:
        text = text.decode() if isinstance(text, bytes) else text
        for sink in self._sinks() if text else []:
            sink.write(text)
            if self.should_flush:   # the log stays complete if the run is killed
                sink.flush()

    def flush(self) -> None:
        for sink in self._sinks():
            sink.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.flush()
        for stream in ('stdout', 'stderr'):
            if getattr(sys, stream) is self:   # a stream replaced by someone else stays theirs
                setattr(sys, stream, getattr(self, stream))
        log_file, self.file = self.file, None
        if log_file is not None:
            log_file.close()

#----------------------------------------------------------------------------
# Cache directory.

def make_cache_dir_path(*paths: str) -> str:
    """A path in the cache directory: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib (in the temp
    directory when there is no home)."""
    root = os.environ.get('DNNLIB_CACHE_DIR')
    if root is None:
        home = os.environ.get('HOME') or os.environ.get('USERPROFILE') or tempfile.gettempdir()
        root = os.path.join(home, '.cache', 'dnnlib')
    return os.path.join(root, *paths)

#----------------------------------------------------------------------------
# Small helpers.

def format_time(seconds: Union[int, float]) -> str:
    """Human-readable duration: '42s', '3m 05s', '2h 03m 04s', '1d 02h 03m'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // (60 * 60)}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // (24 * 60 * 60)}d {(s // (60 * 60)) % 24:02d}h {(s // 60) % 60:02d}m'

#----------------------------------------------------------------------------
# Objects by dotted name ('training.networks.Generator').

def _is_missing_module(error: ModuleNotFoundError, module_name: str) -> bool:
    """True if importing module_name failed because it (or a parent package) does not exist,
    rather than because of an error inside it."""
    return error.name is not None and (module_name + '.').startswith(error.name + '.')

def get_module_from_obj_name(obj_name: str) -> Tuple[types.ModuleType, str]:
    """Split 'pkg.mod.attr.sub' into (imported module, 'attr.sub'), the longest module first.

    When no split resolves, the error is the first real one: a module that exists but failed
    to import, else the attribute missing from the longest module found.
    """
    parts = obj_name.split('.')
    broken_import = missing_attr = None
    for cut in range(len(parts), 0, -1):
        module_name, attr_path = '.'.join(parts[:cut]), '.'.join(parts[cut:])
        try:
            module = importlib.import_module(module_name)
        except Exception as e: # pylint: disable=broad-except
            if not (isinstance(e, ModuleNotFoundError) and _is_missing_module(e, module_name)):
                broken_import = broken_import or e
            continue
        try:
            get_obj_from_module(module, attr_path)
        except AttributeError as e:
            missing_attr = missing_attr or (module_name, attr_path, e)
            continue
        return module, attr_path
    if broken_import is not None:
        raise broken_import
    if missing_attr is not None:
        module_name, attr_path, cause = missing_attr
        raise AttributeError(f'Cannot find "{obj_name}": module "{module_name}" has no attribute "{attr_path}"') from cause
    raise ImportError(f'Cannot find "{obj_name}": no importable module along that dotted path')

def get_obj_from_module(module: types.ModuleType, obj_name: str) -> Any:
    """module.a.b.c for obj_name 'a.b.c' (the module itself for '')."""
    return functools.reduce(getattr, obj_name.split('.'), module) if obj_name else module

def get_obj_by_name(name: str) -> Any:
    """The Python object with the given dotted name ('training.networks.Generator')."""
    return get_obj_from_module(*get_module_from_obj_name(name))

def call_func_by_name(*args, func_name: str = None, **kwargs) -> Any:
    """Look a callable up by dotted name and call it with the remaining arguments."""
    if func_name is None:
        raise TypeError('call_func_by_name: func_name is required')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)

def construct_class_by_name(*args, class_name: str = None, **kwargs) -> Any:
    """Look a class up by dotted name and construct it with the remaining arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------
# URLs and downloads.

def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True if obj is a string that looks like an http(s) URL (or a file:// URL when allowed)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        res = urllib.parse.urlparse(obj)
    except Exception:
        return False
    if not res.netloc:
        return False
    return res.scheme in ('http', 'https')

def expand_user(ctx: Any, param: Any, value: Any) -> Any:
    """click callback for path options: '~/x' -> '$HOME/x'. A shell expands '~' only at the start
    of a word, so in `--data=~/x.zip` (as upstream's README writes it) the program must."""
    if isinstance(value, str) and value.startswith('~'):
        return os.path.expanduser(value)
    return value

def _file_url_to_path(url: str) -> str:
    """'file:///abs/path' -> '/abs/path' (percent-decoded; Windows drive letters handled)."""
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parsed.path)
    if parsed.netloc and parsed.netloc != 'localhost':
        path = '//' + parsed.netloc + path # UNC share
    if re.match(r'^/[a-zA-Z]:[/\\]', path):
        path = path[1:]
    return path

def _sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()

def _check_sha256(actual: str, expected: str, what: str) -> None:
    if actual.lower() != expected.lower():
        raise IOError(f'SHA-256 mismatch for {what}: expected {expected.lower()}, got {actual}. '
                      f'The file is corrupted or is not the one expected; delete it and download it again.')

def _cache_file_name(url: str) -> Tuple[str, str]:
    """(hash of the URL, file name) used for the cache entry '<md5>_<name>'."""
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    name = re.sub(r'[^0-9a-zA-Z-._]', '_', name)
    return url_md5, name

def cache_path_for_url(url: str, cache_dir: str = None) -> str:
    """Where open_url keeps (or would keep) its copy of `url`: a user without network access
    can put the file there by hand."""
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5, name = _cache_file_name(url)
    return os.path.join(cache_dir, f'{url_md5}_{name}')

# Seconds a download may wait for the server (to connect, and between two pieces of data).
# Tests and slow links set it through the environment.
DOWNLOAD_TIMEOUT_ENV = 'DNNLIB_DOWNLOAD_TIMEOUT'
DEFAULT_DOWNLOAD_TIMEOUT = 30.0

class DownloadError(IOError):
    """A URL could not be fetched; the message says why and what to do instead."""

class _PermanentHTTPError(IOError):
    """An HTTP answer that another attempt would not change (404, 403, ...)."""

def _download_timeout(timeout: float = None) -> float:
    if timeout is not None:
        return float(timeout)
    return float(os.environ.get(DOWNLOAD_TIMEOUT_ENV, DEFAULT_DOWNLOAD_TIMEOUT))

class _Progress:
    """One status line on stderr: rewritten in place on a terminal, printed once per stage in logs."""

    def __init__(self, url: str, total: int, enabled: bool):
        self.url, self.total, self.enabled = url, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.started = self.last = time.time()
        size = f' ({total / 2**20:.1f} MiB)' if total else ''
        self._say(f'Downloading {url}{size} ...', end='' if self.tty else '\n')

    def _say(self, text: str, end: str = '\n') -> None:
        if self.enabled:
            print(text, end=end, file=sys.stderr, flush=True)

    def update(self, done: int) -> None:
        now = time.time()
        if self.tty and now - self.last >= 0.5:
            self.last = now
            pct = f' {100 * done / self.total:.0f}%' if self.total else ''
            self._say(f'\rDownloading {self.url} ... {done / 2**20:.1f} MiB{pct}', end='')

    def finish(self, done: int) -> None:
        lead = '\r' if self.tty else ''
        self._say(f'{lead}Downloaded {self.url}: {done / 2**20:.2f} MiB in {time.time() - self.started:.1f} s')

def _fetch(url: str, dst: Any, timeout: float, verbose: bool) -> int:
    """One attempt: stream the body of `url` into the binary file `dst`. Returns the byte count.

    A body shorter than its Content-Length is an error (the connection dropped), so a
    truncated file is never taken for the real one.
    """
    import requests
    with requests.get(url, stream=True, timeout=timeout, headers={'User-Agent': 'dnnlib'}) as res:
        if 400 <= res.status_code < 500 and res.status_code not in (408, 429):
            raise _PermanentHTTPError(f'the server answered {res.status_code} {res.reason}; check the address')
        res.raise_for_status()
        total = int(res.headers.get('Content-Length') or 0) or None
        progress = _Progress(url, total, verbose)
        done = 0
        for chunk in res.iter_content(chunk_size=1 << 16):
            dst.write(chunk)
            done += len(chunk)
            progress.update(done)
    if total is not None and done != total:
        raise IOError(f'the connection closed after {done} of {total} bytes')
    if done == 0:
        raise IOError('the server sent an empty file')
    progress.finish(done)
    return done

def _fetch_with_retries(url: str, dst_path: str, num_attempts: int, timeout: float, verbose: bool) -> None:
    """Download `url` into `dst_path`, retrying network failures with a short back-off."""
    last_error = None
    for attempt in range(num_attempts):
        if attempt > 0:
            wait = min(2.0 ** (attempt - 1), timeout)
            if verbose:
                print(f'Download of {url} failed ({last_error}); retrying in {wait:g} s '
                      f'(attempt {attempt + 1} of {num_attempts})', file=sys.stderr, flush=True)
            time.sleep(wait)
        try:
            with open(dst_path, 'wb') as f:
                _fetch(url, f, timeout, verbose)
            return
        except _PermanentHTTPError as e:
            raise DownloadError(f'Could not download "{url}": {e}.') from None
        except Exception as e: # requests' connection errors and timeouts, short bodies
            last_error = _describe_network_error(e, timeout)
    raise DownloadError(f'Could not download "{url}" after {num_attempts} attempts: {last_error}. If this machine '
                        f'is offline or the address is unreachable, download the file by other means and pass its '
                        f'local path instead of the URL (or put it at {cache_path_for_url(url)}).')

def _describe_network_error(e: Exception, timeout: float) -> str:
    import requests
    if isinstance(e, requests.exceptions.Timeout):
        return f'no answer within {timeout:g} s (set {DOWNLOAD_TIMEOUT_ENV} to wait longer)'
    if isinstance(e, requests.exceptions.ConnectionError):
        return f'cannot connect ({type(e).__name__})'
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return 'the connection closed before the whole file arrived'
    return str(e) or type(e).__name__

def open_url(url: str, cache_dir: str = None, num_attempts: int = 3, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, sha256: str = None, timeout: float = None) -> Any:
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    http(s) downloads land in `cache_dir` (default `make_cache_dir_path('downloads')`) as
    '<md5 of url>_<file name>' and later calls read the cached copy without touching the
    network. `sha256` (hex) verifies the content. Network failures are retried
    `num_attempts` times; `timeout` (seconds, default $DNNLIB_DOWNLOAD_TIMEOUT or 30) bounds
    each wait for the server. A progress line goes to stderr when `verbose`. Returns an open
    binary file object, or the local file name when `return_filename=True` (needs `cache=True`
    for URLs). Failures raise DownloadError (an IOError) with one readable message.
    """
    assert num_attempts >= 1
    assert not (return_filename and (not cache))

    # Local paths and file:// URLs: no cache involved.
    if not re.match('^[a-z]+://', url):
        if not os.path.exists(url):
            raise FileNotFoundError(f'No such file: "{url}"')
        if sha256 is not None:
            _check_sha256(_sha256_of_file(url), sha256, f'"{url}"')
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        filename = _file_url_to_path(url)
        if not os.path.exists(filename):
            raise FileNotFoundError(f'No such file: "{filename}" (from "{url}")')
        if sha256 is not None:
            _check_sha256(_sha256_of_file(filename), sha256, f'"{url}"')
        return filename if return_filename else open(filename, 'rb')
    if not is_url(url):
        raise ValueError(f'Unsupported URL "{url}": expected a local path, file://, http:// or https://')

    # Cache hit?
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    cache_file = cache_path_for_url(url, cache_dir)
    if cache and os.path.isfile(cache_file):
        if sha256 is None or _sha256_of_file(cache_file).lower() == sha256.lower():
            return cache_file if return_filename else open(cache_file, 'rb')
        if verbose:
            print(f'Cached copy of "{url}" has the wrong SHA-256; downloading it again.', file=sys.stderr)

    # Download into a temporary file beside the cache entry and rename it into place only when
    # complete and verified: an interrupted or corrupt download never becomes a cache entry, and
    # concurrent processes never read a half-written one.
    temp_dir = cache_dir if cache else None
    if temp_dir is not None:
        os.makedirs(temp_dir, exist_ok=True)
    fd, temp_file = tempfile.mkstemp(prefix='tmp_' + os.path.basename(cache_file) + '.', dir=temp_dir)
    os.close(fd)
    try:
        _fetch_with_retries(url, temp_file, num_attempts, _download_timeout(timeout), verbose)
        if sha256 is not None:
            _check_sha256(_sha256_of_file(temp_file), sha256, f'download of "{url}"')
        if not cache:
            with open(temp_file, 'rb') as f:
                return io.BytesIO(f.read())
        os.chmod(temp_file, 0o644) # mkstemp makes it private; a cache entry is readable like any download
        os.replace(temp_file, cache_file)
    finally:
        if os.path.exists(temp_file):
            os.remove(temp_file)
    return cache_file if return_filename else open(cache_file, 'rb')
