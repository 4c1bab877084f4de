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
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, List, Tuple, Union

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

def open_url(url: str, cache_dir: str = None, num_attempts: int = 3, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, sha256: str = None) -> Any:
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    http(s) downloads land in `cache_dir` (default `make_cache_dir_path('downloads')`) as
    '<md5 of url>_<file name>' and later calls read the cached copy without touching the
    network. `sha256` (hex) verifies the content. Returns an open binary file object, or
    the local file name when `return_filename=True` (which needs `cache=True` for URLs).
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
    url_md5, url_name = _cache_file_name(url)
    cache_file = os.path.join(cache_dir, f'{url_md5}_{url_name}')
    if cache and os.path.isfile(cache_file):
        if sha256 is None or _sha256_of_file(cache_file).lower() == sha256.lower():
            return cache_file if return_filename else open(cache_file, 'rb')
        if verbose:
            print(f'Cached copy of "{url}" has the wrong SHA-256; downloading it again.')

    # Download, retrying on network errors.
    url_data = None
    last_error = None
    if verbose:
        print(f'Downloading {url} ...', end='', flush=True)
    for attempts_left in reversed(range(num_attempts)):
        try:
            req = urllib.request.Request(url, headers={'User-Agent': 'dnnlib'})
            with urllib.request.urlopen(req, timeout=30) as res:
                url_data = res.read()
            if len(url_data) == 0:
                raise IOError('empty response')
            break
        except Exception as e: # network errors, HTTP errors, timeouts
            last_error = e
            if isinstance(e, urllib.error.HTTPError) and e.code in (403, 404):
                break # retrying will not help
            if attempts_left == 0:
                break
    if url_data is None:
        if verbose:
            print(' failed')
        raise IOError(f'Could not download "{url}": {last_error}. If this machine is offline or the '
                      f'address is unreachable, download the file by other means and pass its local path '
                      f'instead of the URL.') from last_error
    if verbose:
        print(' done')

    if sha256 is not None:
        _check_sha256(hashlib.sha256(url_data).hexdigest(), sha256, f'download of "{url}"')

    # Save to the cache atomically (a temp file renamed into place), so concurrent
    # processes never read a half-written entry.
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        temp_file = os.path.join(cache_dir, 'tmp_' + uuid.uuid4().hex + '_' + url_md5 + '_' + url_name)
        with open(temp_file, 'wb') as f:
            f.write(url_data)
        os.replace(temp_file, cache_file)
        if return_filename:
            return cache_file

    assert not return_filename
    return io.BytesIO(url_data)
