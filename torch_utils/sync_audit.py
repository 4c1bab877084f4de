"""Find the host-device synchronisations in a piece of code, on any device.

On a GPU, every read of a device value by the host (`.item()`, `float(t)`, `bool(t)`,
`.tolist()`, `.cpu()`, data-dependent shapes such as `nonzero` or boolean-mask indexing)
makes the CPU wait until the GPU has drained its queue. While it waits no new kernels are
queued, so at small resolutions, where a training step is bound by launch overhead, each
such read costs a bubble of idle GPU time. `SyncAudit` records these reads, with the line of
our code that caused each one, so they can be found and tested for on a CPU-only machine:

    with SyncAudit() as audit:
        step()
    assert audit.events == [], audit.report()

Operators are seen through a TorchDispatchMode (`_local_scalar_dense` behind item / float /
int / bool, `nonzero`, `masked_select`, `unique`, indexing with a boolean mask, ...); the
Python-level readers that do not go through the dispatcher (`Tensor.tolist`, `.cpu()`,
`.numpy()`) are wrapped while the audit is active. On a CPU run these are reported even
though they cost nothing there, because the same line would wait for the GPU on CUDA.
"""

import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_SYNC_PACKETS = {_aten._local_scalar_dense, _aten.nonzero, _aten.masked_select, _aten.unique_consecutive,
                 _aten._unique2, _aten.unique_dim, _aten.is_nonzero, _aten.equal}
_PY_READERS = ('tolist', 'cpu', 'numpy')
_FACTORIES = ('tensor', 'as_tensor')
_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_OPTIM_DIR = os.path.join(_TORCH_DIR, 'optim')

def _frames():
    return [f for f in reversed(traceback.extract_stack()[:-1]) if os.path.abspath(f.filename) != _HERE]

def _caller(frames):
    """'file:line (function)' of the innermost frame outside torch."""
    for frame in frames:
        path = os.path.abspath(frame.filename)
        if not path.startswith(_TORCH_DIR):
            return f'{os.path.relpath(path)}:{frame.lineno} ({frame.name})'
    return '<unknown>'

def _is_sync(func, args, kwargs):
    packet = func.overloadpacket
    if packet in _SYNC_PACKETS:
        return True
    if packet in (_aten.index, _aten.index_put_, _aten.index_put):
        return _has_bool_index(args)
    if packet is _aten.repeat_interleave:      # tensor repeats without output_size: the size is read back
        return 'Tensor' in func._overloadname and kwargs.get('output_size') is None
    return False

def _has_bool_index(args):
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or [])

class SyncAudit(TorchDispatchMode):
    """Context manager: `events` is a list of (what, where) for every host read inside it."""

    def __init__(self):
        super().__init__()
        self.events = []
        self._saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            frames = _frames()
            # Optimizers that are not `capturable` keep their step counters on the host and
            # read them there: no device involved.
            host_counter = func.overloadpacket is _aten._local_scalar_dense and args[0].device.type == 'cpu' \
                and any(os.path.abspath(f.filename).startswith(_OPTIM_DIR) for f in frames[:3])
            if not host_counter:
                self.events.append((str(func), _caller(frames)))
        return func(*args, **kwargs)

    def __enter__(self):
        for name in _PY_READERS:
            original = getattr(torch.Tensor, name)
            self._saved[(torch.Tensor, name)] = original
            setattr(torch.Tensor, name, self._wrap_reader(name, original))
        for name in _FACTORIES:
            original = getattr(torch, name)
            self._saved[(torch, name)] = original
            setattr(torch, name, self._wrap_factory(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for (owner, name), original in self._saved.items():
                setattr(owner, name, original)
            self._saved = {}

    def _wrap_reader(self, name, original):
        audit = self
        def reader(tensor, *args, **kwargs):
            audit.events.append((f'Tensor.{name}', _caller(_frames())))
            return original(tensor, *args, **kwargs)
        return reader

    def _wrap_factory(self, name, original):
        # torch.tensor(data, device=...) builds the tensor on the host and copies it with a
        # blocking copy, which on CUDA waits for the stream (misc.constant caches such tensors).
        audit = self
        def factory(data, *args, **kwargs):
            if kwargs.get('device') is not None and not isinstance(data, torch.Tensor):
                audit.events.append((f'torch.{name}(host data, device=...)', _caller(_frames())))
            return original(data, *args, **kwargs)
        return factory

    def counts(self):
        """{where: number of reads} over all events."""
        out = {}
        for what, where in self.events:
            key = f'{where}: {what}'
            out[key] = out.get(key, 0) + 1
        return out

    def report(self):
        return '\n'.join(f'{n:5d}x {key}' for key, n in sorted(self.counts().items())) or '(no host reads)'
