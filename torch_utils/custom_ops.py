"""Build and load the C++/CUDA extensions behind `torch_utils.ops`.

Every op has a plain-PyTorch reference beside it, so a build that fails is never fatal by
default: `get_plugin` warns once, loudly, with the compiler output, and returns None so the
caller uses the reference. `TOOLKIT_STRICT_OPS=1` turns a failed build into an exception.

Builds are cached on disk in a directory named after a hash of the source contents, the torch,
CUDA and Python versions, the GPU architecture(s) and the build options; an edited kernel or a
new GPU therefore never loads a stale binary. Concurrent processes serialise on a lock file
that records its owner; a lock left behind by a killed build is detected (dead owner pid, or
older than `TOOLKIT_OPS_LOCK_TIMEOUT` seconds) and removed.

Multi-process training: import the op modules (each registers its loader on import) and call
`prebuild_all()` once in the launcher before worker processes start. Workers then find the finished build on disk and import it without compiling or
waiting on locks; a failed build is remembered on disk too (file `FAILED` in the build
directory), so workers fall back at once instead of each compiling again.

Environment variables:
    TOOLKIT_STRICT_OPS=1         a failed build raises instead of falling back.
    TOOLKIT_OPS_VERBOSE=1        show the compiler command lines and output.
    TOOLKIT_OPS_CACHE_DIR=DIR    where builds live (default: $DNNLIB_CACHE_DIR/torch_extensions,
                                 else ~/.cache/dnnlib/torch_extensions).
    TOOLKIT_OPS_RETRY=1          rebuild even if an earlier process recorded a failure.
    TOOLKIT_OPS_LOCK_TIMEOUT=S   age in seconds after which a build lock counts as stale (900).
"""

import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import sysconfig
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch

STRICT_ENV = 'TOOLKIT_STRICT_OPS'
VERBOSE_ENV = 'TOOLKIT_OPS_VERBOSE'
CACHE_ENV = 'TOOLKIT_OPS_CACHE_DIR'
RETRY_ENV = 'TOOLKIT_OPS_RETRY'
LOCK_TIMEOUT_ENV = 'TOOLKIT_OPS_LOCK_TIMEOUT'
DEFAULT_LOCK_TIMEOUT = 900.0

LOCK_NAME = 'toolkit_build.lock'    # ours: holds "pid host start_time"
TORCH_LOCK_NAME = 'lock'            # torch.utils.cpp_extension's FileBaton (no owner info)
DONE_NAME = 'BUILT'
FAILED_NAME = 'FAILED'


class OpsBuildWarning(RuntimeWarning):
    """A custom op could not be built; the plain-PyTorch reference is used instead."""


class OpsBuildError(RuntimeError):
    """A custom op could not be built and TOOLKIT_STRICT_OPS=1 forbids falling back."""


_loaded: Dict[str, object] = {}         # build key -> imported module
_failed: Dict[str, str] = {}            # build key -> failure message (never retried in-process)
_registry: Dict[str, Callable[[], object]] = {}   # plugin name -> zero-argument loader


def _env_flag(name: str) -> bool:
    return os.environ.get(name, '').strip().lower() not in ('', '0', 'false', 'no', 'off')


def strict_mode() -> bool:
    """True when TOOLKIT_STRICT_OPS asks for failed builds to be fatal."""
    return _env_flag(STRICT_ENV)


def cache_root() -> str:
    """Directory under which every build directory lives."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    import dnnlib  # imported late: dnnlib is only needed for the default location
    return dnnlib.make_cache_dir_path('torch_extensions')


def gpu_arch_tag() -> str:
    """The GPU architectures a build targets, as torch's extension builder will choose them."""
    if os.environ.get('TORCH_CUDA_ARCH_LIST'):
        return 'arch=' + os.environ['TORCH_CUDA_ARCH_LIST'].strip()
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return 'sm=' + ','.join(f'{major}{minor}' for major, minor in caps)
    return 'nogpu'


def build_key(module_name: str, sources: Sequence[str], headers: Sequence[str] = (),
              build_kwargs: Optional[dict] = None) -> str:
    """Hex digest naming one build: file names and contents, toolchain versions, GPU arch, options."""
    h = hashlib.sha256()
    def add(text):
        h.update(str(text).encode('utf-8'))
        h.update(b'\0')
    add(module_name)
    for path in list(sources) + list(headers or ()):
        add(os.path.basename(path))
        with open(path, 'rb') as f:
            h.update(hashlib.sha256(f.read()).digest())
    add(torch.__version__)
    add(torch.version.cuda)
    add(gpu_arch_tag())
    add(sys.version_info[:2])
    add(sysconfig.get_platform())
    add(sorted((k, repr(v)) for k, v in (build_kwargs or {}).items()))
    return h.hexdigest()[:24]

#----------------------------------------------------------------------------
# Cross-process build lock that survives killed builds.

def lock_timeout() -> float:
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # exists, owned by someone else
    except OSError:
        return False
    return True


def lock_is_stale(path: str, timeout: Optional[float] = None) -> bool:
    """A lock is stale when its owner on this host is dead, or when it is older than `timeout`.

    A lock without readable owner information (e.g. torch's own FileBaton) is judged by age alone.
    """
    timeout = lock_timeout() if timeout is None else timeout
    try:
        age = time.time() - os.path.getmtime(path)
        with open(path, 'r') as f:
            fields = f.read().split()
    except FileNotFoundError:
        return False    # already released
    except OSError:
        fields = []
        age = timeout + 1
    if age > timeout:
        return True
    if len(fields) >= 2 and fields[0].isdigit() and fields[1] == socket.gethostname():
        return not _pid_alive(int(fields[0]))
    return False


class BuildLock:
    """Exclusive lock file in a build directory: `with BuildLock(dir): ...`.

    Waits while another live process holds it; removes it when stale (see `lock_is_stale`).
    """

    def __init__(self, build_dir: str, timeout: Optional[float] = None, poll: float = 0.2):
        self.path = os.path.join(build_dir, LOCK_NAME)
        self.timeout = lock_timeout() if timeout is None else timeout
        self.poll = poll
        self.broke_stale = False

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if lock_is_stale(self.path, self.timeout):
                    _remove_quietly(self.path)
                    self.broke_stale = True
                    continue
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(f'{os.getpid()} {socket.gethostname()} {time.time():.0f}\n')
            return

    def release(self) -> None:
        _remove_quietly(self.path)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

#----------------------------------------------------------------------------
# Building and loading.

def _lib_ext() -> str:
    return '.pyd' if os.name == 'nt' else '.so'


def _import_built(module_name: str, so_path: str):
    spec = importlib.util.spec_from_file_location(module_name, so_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_sources(paths: List[str], dest_dir: str) -> List[str]:
    """Copy files flat into dest_dir so that the compiled code is exactly what was hashed."""
    os.makedirs(dest_dir, exist_ok=True)
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f'custom op sources must have distinct file names, got {names}')
    copied = []
    for src in paths:
        dst = os.path.join(dest_dir, os.path.basename(src))
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def _build_and_load(module_name: str, sources: List[str], headers: List[str], key: str,
                    build_kwargs: dict):
    build_dir = os.path.join(cache_root(), f'{module_name}-{key}')
    so_path = os.path.join(build_dir, module_name + _lib_ext())
    done_path = os.path.join(build_dir, DONE_NAME)
    failed_path = os.path.join(build_dir, FAILED_NAME)

    def finished_build():
        return os.path.isfile(done_path) and os.path.isfile(so_path)

    def recorded_failure():
        if _env_flag(RETRY_ENV) or not os.path.isfile(failed_path):
            return None
        with open(failed_path, 'r', errors='replace') as f:
            return (f'an earlier build in {build_dir} failed (delete that directory or set '
                    f'{RETRY_ENV}=1 to try again). Its output:\n{f.read()}')

    if finished_build():        # fast path: no lock, no ninja
        return _import_built(module_name, so_path)
    if (msg := recorded_failure()) is not None:
        raise RuntimeError(msg)

    os.makedirs(build_dir, exist_ok=True)
    with BuildLock(build_dir):
        if finished_build():    # another process built it while we waited
            return _import_built(module_name, so_path)
        if (msg := recorded_failure()) is not None:
            raise RuntimeError(msg)
        # We hold our lock, so nobody is building here: a torch baton left over is stale.
        _remove_quietly(os.path.join(build_dir, TORCH_LOCK_NAME))
        _remove_quietly(failed_path)
        src_dir = os.path.join(build_dir, 'src')
        copied = _copy_sources(list(sources) + list(headers), src_dir)
        copied_sources = copied[:len(sources)]
        from torch.utils import cpp_extension  # heavy import, only needed to build
        try:
            module = cpp_extension.load(name=module_name, sources=copied_sources,
                                        build_directory=build_dir, verbose=_env_flag(VERBOSE_ENV),
                                        **build_kwargs)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                with open(failed_path, 'w') as f:
                    f.write(str(exc))
            raise
        with open(done_path, 'w') as f:
            f.write(key + '\n')
        return module


def get_plugin(module_name: str, sources: Sequence[str], headers: Optional[Sequence[str]] = None,
               source_dir: Optional[str] = None, **build_kwargs):
    """Build (or load the cached build of) a C++/CUDA extension; None when the build failed.

    Args:
        module_name:   Python module name of the extension (the PYBIND11_MODULE name).
        sources:       .cpp / .cu files to compile (relative to `source_dir` if given).
        headers:       files the sources include; they take part in the cache key and are
                       copied next to the sources.
        source_dir:    directory the file names are relative to.
        **build_kwargs: passed to `torch.utils.cpp_extension.load` (extra_cflags, ...).

    Returns the module, or None after warning once (OpsBuildWarning) that the build failed;
    with TOOLKIT_STRICT_OPS=1 raises OpsBuildError instead. A failure is remembered for the
    life of the process: later calls return None at once, without another warning.
    """
    headers = list(headers or [])
    sources = list(sources)
    if source_dir is not None:
        sources = [os.path.join(source_dir, s) for s in sources]
        headers = [os.path.join(source_dir, h) for h in headers]
    try:
        key = build_key(module_name, sources, headers, build_kwargs)
    except OSError as exc:
        return _fail(f'{module_name}:unhashable', module_name, f'cannot read its sources: {exc}', exc)
    if key in _loaded:
        return _loaded[key]
    if key in _failed:
        if strict_mode():
            raise OpsBuildError(_failed[key])
        return None
    try:
        module = _build_and_load(module_name, sources, headers, key, build_kwargs)
    except Exception as exc:    # any failure means "use the reference"; the message says why
        return _fail(key, module_name, str(exc), exc)
    _loaded[key] = module
    return module


def _fail(key: str, module_name: str, detail: str, exc: BaseException):
    bar = '=' * 78
    msg = (f'\n{bar}\nCustom op "{module_name}" could not be built; falling back to the slower '
           f'plain-PyTorch reference implementation.\nSet {STRICT_ENV}=1 to make this an error, '
           f'{VERBOSE_ENV}=1 to see the full build.\nBuild output:\n{detail}\n{bar}')
    first = key not in _failed
    _failed[key] = msg
    if strict_mode():
        raise OpsBuildError(msg) from exc
    if first:
        warnings.warn(msg, OpsBuildWarning, stacklevel=3)
    return None

#----------------------------------------------------------------------------
# Pre-building before worker processes start.

def register_plugin(name: str, loader: Callable[[], object]) -> None:
    """Called by each op module: `loader()` builds/loads its extension and returns it or None."""
    _registry[name] = loader


def plugin_loader(module_name: str, sources: List[str], headers: List[str], source_dir: str) -> Callable[[], object]:
    """The `_load_plugin()` of an op module, registered for prebuild_all().

    It returns the compiled extension, or None (no CUDA, or the build failed and was reported),
    and looks it up once per process: get_plugin hashes the sources, which is too slow per call.
    """
    result = []

    def load():
        if not result:
            plugin = None
            if torch.cuda.is_available():
                plugin = get_plugin(module_name, sources=sources, headers=headers, source_dir=source_dir)
            result.append(plugin)   # not reached when TOOLKIT_STRICT_OPS makes a failure raise
        return result[0]

    register_plugin(module_name, load)
    return load


def prebuild_all(verbose: bool = True) -> Dict[str, bool]:
    """Build every registered custom op now, in this process; returns {plugin name: built?}.

    An op module registers its loader when it is imported (plugin_loader); the caller imports
    the ones it will use, so this module needs no import of the ops built on top of it.

    Call it from the training launcher before starting worker processes (e.g. before
    `torch.multiprocessing.spawn`), so that the compile happens once and the workers only
    import the finished build. Without CUDA nothing is built (CPU tensors always use the
    reference ops) and {} is returned. It initialises CUDA in this process, so start workers
    with the 'spawn' method afterwards (forked children cannot use CUDA).
    """
    if not torch.cuda.is_available():
        return {}
    status = {}
    for name, loader in sorted(_registry.items()):
        t0 = time.time()
        status[name] = loader() is not None
        if verbose:
            state = 'ready' if status[name] else 'FAILED (reference fallback)'
            print(f'custom op {name}: {state} ({time.time() - t0:.1f} s)', flush=True)
    return status


def reset_state_for_tests() -> None:
    """Forget loaded and failed builds of this process (tests only)."""
    _loaded.clear()
    _failed.clear()
