"""custom_ops: cache key, stale-lock recovery, one loud warning then fallback on a failed
build (remembered in-process and on disk), strict mode, and a real tiny build that a second
"process" imports from the cache without compiling."""

import os
import shutil
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch

from torch_utils import custom_ops


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv(custom_ops.CACHE_ENV, str(tmp_path / 'cache'))
    for name in (custom_ops.STRICT_ENV, custom_ops.RETRY_ENV, custom_ops.LOCK_TIMEOUT_ENV, 'TORCH_CUDA_ARCH_LIST'):
        monkeypatch.delenv(name, raising=False)
    custom_ops.reset_state_for_tests()
    yield
    custom_ops.reset_state_for_tests()


def _have_compiler():
    try:
        import ninja  # noqa: F401  (torch's builder needs it)
    except ImportError:
        return False
    return shutil.which('c++') is not None or shutil.which('g++') is not None


needs_compiler = pytest.mark.skipif(not _have_compiler(), reason='needs a C++ compiler and ninja')

#----------------------------------------------------------------------------
# Cache key.

def test_build_key_tracks_contents_options_and_arch(tmp_path, monkeypatch):
    src = tmp_path / 'op.cpp'
    hdr = tmp_path / 'op.h'
    src.write_text('int f() { return 1; }\n')
    hdr.write_text('#pragma once\n')
    key = lambda **kw: custom_ops.build_key('op', [str(src)], [str(hdr)], kw)
    k0 = key()
    assert k0 == key()                                  # deterministic
    src.write_text('int f() { return 2; }\n')
    k1 = key()
    assert k1 != k0                                     # source contents
    hdr.write_text('#pragma once\n#define X 1\n')
    assert key() != k1                                  # header contents
    k2 = key()
    assert key(extra_cflags=['-O3']) != k2              # build options
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '8.0')
    k3 = key()
    assert k3 != k2                                     # GPU architecture
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')
    assert key() != k3
    monkeypatch.setattr(torch, '__version__', torch.__version__ + '.other')
    assert key() != k3 and key() != k2                  # torch version

#----------------------------------------------------------------------------
# Locks.

def _dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_lock_of_dead_process_is_broken(tmp_path):
    lock = tmp_path / custom_ops.LOCK_NAME
    import socket
    lock.write_text(f'{_dead_pid()} {socket.gethostname()} {time.time():.0f}\n')
    assert custom_ops.lock_is_stale(str(lock), timeout=900)
    t0 = time.time()
    with custom_ops.BuildLock(str(tmp_path), timeout=900) as held:
        assert held.broke_stale
        assert lock.read_text().split()[0] == str(os.getpid())
    assert time.time() - t0 < 5
    assert not lock.exists()                            # released


def test_old_lock_is_broken_and_fresh_live_lock_is_waited_for(tmp_path):
    lock = tmp_path / custom_ops.LOCK_NAME
    import socket
    # Live owner (this process) but older than the timeout: stale.
    lock.write_text(f'{os.getpid()} {socket.gethostname()} 0\n')
    old = time.time() - 100
    os.utime(lock, (old, old))
    assert custom_ops.lock_is_stale(str(lock), timeout=50)
    assert not custom_ops.lock_is_stale(str(lock), timeout=500)
    # Fresh lock of a live owner: acquire waits until it is released.
    lock.write_text(f'{os.getpid()} {socket.gethostname()} {time.time():.0f}\n')
    releaser = threading.Timer(0.5, lambda: os.remove(lock))
    releaser.start()
    t0 = time.time()
    with custom_ops.BuildLock(str(tmp_path), timeout=900, poll=0.05) as held:
        waited = time.time() - t0
        assert not held.broke_stale
    releaser.join()
    assert 0.4 < waited < 5


def test_ownerless_lock_judged_by_age(tmp_path):
    lock = tmp_path / 'lock'           # torch's FileBaton writes no owner
    lock.write_text('')
    assert not custom_ops.lock_is_stale(str(lock), timeout=60)
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert custom_ops.lock_is_stale(str(lock), timeout=60)

#----------------------------------------------------------------------------
# Failed builds.

BROKEN = '#error deliberate_failure_marker\n'


def _count_loads(monkeypatch):
    from torch.utils import cpp_extension
    calls = []
    real = cpp_extension.load

    def counting(*args, **kwargs):
        calls.append(kwargs.get('name'))
        return real(*args, **kwargs)
    monkeypatch.setattr(cpp_extension, 'load', counting)
    return calls


@needs_compiler
def test_failed_build_warns_once_then_falls_back(tmp_path, monkeypatch):
    src = tmp_path / 'broken_op.cpp'
    src.write_text(BROKEN)
    calls = _count_loads(monkeypatch)
    with pytest.warns(custom_ops.OpsBuildWarning, match='deliberate_failure_marker') as rec:
        assert custom_ops.get_plugin('toolkit_test_broken', [str(src)]) is None
    assert len(rec) == 1 and 'falling back' in str(rec[0].message)
    assert len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')                  # a second warning would raise here
        for _ in range(3):
            assert custom_ops.get_plugin('toolkit_test_broken', [str(src)]) is None
    assert len(calls) == 1                              # never rebuilt in this process

    # A new process (simulated) reads the recorded failure instead of compiling again...
    custom_ops.reset_state_for_tests()
    with pytest.warns(custom_ops.OpsBuildWarning, match='earlier build'):
        assert custom_ops.get_plugin('toolkit_test_broken', [str(src)]) is None
    assert len(calls) == 1
    # ...unless asked to retry (the builder runs again).
    custom_ops.reset_state_for_tests()
    monkeypatch.setenv(custom_ops.RETRY_ENV, '1')
    with pytest.warns(custom_ops.OpsBuildWarning):
        assert custom_ops.get_plugin('toolkit_test_broken', [str(src)]) is None
    assert len(calls) == 2


@needs_compiler
def test_strict_mode_raises(tmp_path, monkeypatch):
    src = tmp_path / 'broken_op.cpp'
    src.write_text(BROKEN)
    monkeypatch.setenv(custom_ops.STRICT_ENV, '1')
    with pytest.raises(custom_ops.OpsBuildError, match='deliberate_failure_marker'):
        custom_ops.get_plugin('toolkit_test_strict', [str(src)])
    with pytest.raises(custom_ops.OpsBuildError):     # the cached failure raises too
        custom_ops.get_plugin('toolkit_test_strict', [str(src)])


def test_missing_source_is_a_reported_failure(tmp_path):
    with pytest.warns(custom_ops.OpsBuildWarning, match='cannot read'):
        assert custom_ops.get_plugin('toolkit_test_missing', ['nope.cpp'], source_dir=str(tmp_path)) is None

#----------------------------------------------------------------------------
# A real build.

TINY = r'''
#include <pybind11/pybind11.h>
#include "tiny.h"
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("triple", [](int v) { return TINY_FACTOR * v; }); }
'''


@needs_compiler
def test_real_build_cached_and_reused_without_compiling(tmp_path, monkeypatch):
    (tmp_path / 'tiny.cpp').write_text(TINY)
    (tmp_path / 'tiny.h').write_text('#pragma once\n#define TINY_FACTOR 3\n')
    key = custom_ops.build_key('toolkit_test_tiny', [str(tmp_path / 'tiny.cpp')], [str(tmp_path / 'tiny.h')], {})
    build_dir = os.path.join(os.environ[custom_ops.CACHE_ENV], f'toolkit_test_tiny-{key}')
    # A killed earlier build left torch's baton behind: it must not block us.
    os.makedirs(build_dir)
    with open(os.path.join(build_dir, custom_ops.TORCH_LOCK_NAME), 'w'):
        pass
    calls = _count_loads(monkeypatch)
    mod = custom_ops.get_plugin('toolkit_test_tiny', ['tiny.cpp'], headers=['tiny.h'], source_dir=str(tmp_path))
    assert mod is not None and mod.triple(7) == 21
    assert len(calls) == 1
    assert os.path.isfile(os.path.join(build_dir, custom_ops.DONE_NAME))
    assert not os.path.exists(os.path.join(build_dir, custom_ops.TORCH_LOCK_NAME))
    assert custom_ops.get_plugin('toolkit_test_tiny', ['tiny.cpp'], headers=['tiny.h'], source_dir=str(tmp_path)) is mod
    # Another process finds the finished build and imports it without invoking the builder.
    code = ('import sys; sys.path.insert(0, %r)\n'
            'from torch.utils import cpp_extension\n'
            'cpp_extension.load = lambda *a, **k: sys.exit("builder called")\n'
            'from torch_utils import custom_ops\n'
            'm = custom_ops.get_plugin("toolkit_test_tiny", ["tiny.cpp"], headers=["tiny.h"], source_dir=%r)\n'
            'print(m.triple(5))\n') % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(tmp_path))
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == '15'


def test_prebuild_all_without_cuda_builds_nothing():
    if torch.cuda.is_available():
        pytest.skip('CUDA present: prebuild_all would compile')
    assert custom_ops.prebuild_all(verbose=False) == {}
    from torch_utils.ops import bias_act, upfirdn2d
    assert bias_act._load_plugin() is None and upfirdn2d._load_plugin() is None


@needs_compiler
def test_concurrent_processes_build_once(tmp_path):
    """Two processes asking for the same op at the same time: one compiles, the other waits on
    the lock and imports the result."""
    (tmp_path / 'tiny.cpp').write_text(TINY)
    (tmp_path / 'tiny.h').write_text('#pragma once\n#define TINY_FACTOR 4\n')
    code = ('import sys; sys.path.insert(0, %r)\n'
            'from torch.utils import cpp_extension\n'
            'real = cpp_extension.load\n'
            'def load(*a, **k):\n'
            '    print("BUILD", flush=True)\n'
            '    return real(*a, **k)\n'
            'cpp_extension.load = load\n'
            'from torch_utils import custom_ops\n'
            'm = custom_ops.get_plugin("toolkit_test_race", ["tiny.cpp"], headers=["tiny.h"], source_dir=%r)\n'
            'print("RESULT", m.triple(6), flush=True)\n') % (
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(tmp_path))
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert 'RESULT 24' in out
    assert sum(out.count('BUILD') for out, _ in outs) == 1
