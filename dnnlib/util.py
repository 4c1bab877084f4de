"""Small utilities shared by every part of the toolkit: attribute dicts, loading objects
by dotted name, logging to a file, and `open_url` with a local download cache.

The public names follow stylegan2-ada-pytorch's `dnnlib.util`, so configuration dicts
(`class_name='training.dataset.ImageFolderDataset'`) and old scripts keep working.
"""

import fnmatch
import hashlib
import importlib
import inspect
import io
import os
import re
import shutil
import sys
import tempfile
import types
import urllib.parse
import urllib.request
import uuid
from typing import Any, List, Tuple, Union

#----------------------------------------------------------------------------
# Attribute dictionary.

class EasyDict(dict):
    """A dict whose items can also be read and written as attributes (`d.key`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name)

#----------------------------------------------------------------------------
# Logging stdout/stderr to a file.

class Logger(object):
    """Tee everything written to stdout (and stderr) into a log file as well.

    Used as a context manager or kept alive for the whole run (train.py); `close()`
    restores the original streams.
    """

    def __init__(self, file_name: str = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = None
        if file_name is not None:
            self.file = open(file_name, file_mode)
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def write(self, text: Union[str, bytes]) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.flush()
        # If the streams were replaced by someone else meanwhile, leave them alone.
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

#----------------------------------------------------------------------------
# Cache directory.

_dnnlib_cache_dir = None

def set_cache_dir(path: str) -> None:
    """Override the cache directory for this process (takes precedence over the environment)."""
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path

def make_cache_dir_path(*paths: str) -> str:
    """Path inside the download cache: `$DNNLIB_CACHE_DIR`, else `~/.cache/dnnlib`."""
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if 'HOME' in os.environ:
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if 'USERPROFILE' in os.environ:
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)

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

def format_time_brief(seconds: Union[int, float]) -> str:
    """Like format_time, but only the two largest units: '3m 05s', '2h 03m', '1d 02h'."""
    return ' '.join(format_time(seconds).split(' ')[:2])

#----------------------------------------------------------------------------
# Objects by dotted name ('training.networks.Generator').

def get_module_from_obj_name(obj_name: str) -> Tuple[types.ModuleType, str]:
    """Split 'pkg.mod.attr.sub' into (imported module, 'attr.sub'), trying the longest module first."""
    parts = obj_name.split('.')
    name_pairs = [('.'.join(parts[:i]), '.'.join(parts[i:])) for i in range(len(parts), 0, -1)]

    # Try each split, longest module name first.
    for module_name, local_obj_name in name_pairs:
        try:
            module = importlib.import_module(module_name)
            get_obj_from_module(module, local_obj_name)
            return module, local_obj_name
        except Exception:
            pass

    # Nothing worked: re-raise the error of the first import that failed for a reason
    # other than "this module does not exist", so the user sees the real cause.
    for module_name, _local_obj_name in name_pairs:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + '.')):
                continue
            raise
    for module_name, local_obj_name in name_pairs:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            get_obj_from_module(module, local_obj_name)
        except AttributeError as e:
            raise AttributeError(f'Cannot find "{obj_name}": module "{module_name}" has no attribute "{local_obj_name}"') from e
    raise ImportError(f'Cannot find "{obj_name}": no importable module along that dotted path')

def get_obj_from_module(module: types.ModuleType, obj_name: str) -> Any:
    """Traverse 'a.b.c' attributes starting from a module."""
    if obj_name == '':
        return module
    obj = module
    for part in obj_name.split('.'):
        obj = getattr(obj, part)
    return obj

def get_obj_by_name(name: str) -> Any:
    """The Python object with the given dotted name ('training.networks.Generator')."""
    module, obj_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, obj_name)

def call_func_by_name(*args, func_name: str = None, **kwargs) -> Any:
    """Find a callable by dotted name and call it with the given arguments."""
    assert func_name is not None
    func_obj = get_obj_by_name(func_name)
    if not callable(func_obj):
        raise TypeError(f'"{func_name}" is not callable')
    return func_obj(*args, **kwargs)

def construct_class_by_name(*args, class_name: str = None, **kwargs) -> Any:
    """Find a class by dotted name and construct it with the given arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

def get_module_dir_by_obj_name(obj_name: str) -> str:
    """Directory of the module that defines the named object."""
    module, _ = get_module_from_obj_name(obj_name)
    return os.path.dirname(inspect.getfile(module))

def is_top_level_function(obj: Any) -> bool:
    """True if obj is a function defined at module level (so it can be found by name)."""
    return callable(obj) and obj.__name__ in sys.modules[obj.__module__].__dict__

def get_top_level_function_name(obj: Any) -> str:
    """Dotted name of a top-level function, e.g. 'training.loss.foo'."""
    assert is_top_level_function(obj)
    module = obj.__module__
    if module == '__main__':
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + '.' + obj.__name__

#----------------------------------------------------------------------------
# File system helpers.

def list_dir_recursively_with_ignore(dir_path: str, ignores: List[str] = None, add_base_to_relative: bool = False) -> List[Tuple[str, str]]:
    """All files under dir_path as (absolute path, relative path), skipping names that match
    any fnmatch pattern in `ignores` (a matching directory is skipped whole)."""
    if not os.path.isdir(dir_path):
        raise NotADirectoryError(f'Not a directory: "{dir_path}"')
    ignores = list(ignores or [])
    skip = lambda name: any(fnmatch.fnmatch(name, pattern) for pattern in ignores)
    prefix = os.path.basename(os.path.normpath(dir_path)) if add_base_to_relative else ''
    result = []
    for root, dirs, files in os.walk(dir_path, topdown=True):
        dirs[:] = [d for d in dirs if not skip(d)] # pruning in place stops os.walk descending
        for f in sorted(files):
            if not skip(f):
                path = os.path.join(root, f)
                result.append((path, os.path.join(prefix, os.path.relpath(path, dir_path))))
    return result

def copy_files_and_create_dirs(files: List[Tuple[str, str]]) -> None:
    """Copy (src, dst) pairs, creating destination directories as needed."""
    for src, dst in files:
        target_dir = os.path.dirname(dst)
        if target_dir:
            os.makedirs(target_dir, exist_ok=True)
        shutil.copyfile(src, dst)

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
            import urllib.error
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
