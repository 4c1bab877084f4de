"""Training statistics gathered across devices and processes.

`report(name, value)` adds values to per-device float64 accumulators (count, sum, sum of
squares) without synchronising with the host; a `Collector` periodically sums them over
devices and ranks (`update()`) and answers num / mean / std for the values reported since
its previous update.
"""

import re

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------

_num_moments = 3                # [count, sum, sum of squares]
_counter_dtype = torch.float64  # Accumulator precision.
_rank = 0                       # Rank of this process (report0 reports only on rank 0).
_sync_device = None             # Device for the cross-rank all-reduce; None = choose by backend.
_counters = dict()              # name -> device -> tensor [_num_moments], not yet synced
_cumulative = dict()            # name -> tensor [_num_moments], everything synced so far (CPU)

#----------------------------------------------------------------------------

def init_multiprocessing(rank, sync_device):
    """Set this process's rank and the device used for the all-reduce in Collector.update().

    Call once per process, before the first update. sync_device: torch.device('cuda', i) for
    NCCL, None (CPU) for gloo or a single process. Calling it again (several training runs in
    one process, as in the tests) just replaces both settings.
    """
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device

#----------------------------------------------------------------------------

def report(name, value):
    """Accumulate the elements of `value` (scalar, array or tensor) under `name`; returns value.

    Cheap: no host synchronisation. Every rank must report the same names (an empty value
    registers a name without counting anything), since updates all-reduce by name.
    """
    if name not in _counters:
        _counters[name] = dict()

    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value

    elems = elems.detach().flatten()
    dtype = torch.float32 if elems.device.type == 'mps' else _counter_dtype # MPS has no float64
    elems = elems.to(dtype)
    moments = torch.stack([
        torch.ones_like(elems).sum(),
        elems.sum(),
        elems.square().sum(),
    ])
    device = moments.device
    counters = _counters[name]
    if device not in counters:
        counters[device] = torch.zeros_like(moments)
    counters[device].add_(moments)
    return value

def report0(name, value):
    """report() on rank 0; other ranks only register the name (so all-reduces stay aligned)."""
    report(name, value if _rank == 0 else [])
    return value

#----------------------------------------------------------------------------

class Collector:
    """Reads the statistics reported since its previous update().

    regex: only names that fully match are collected. keep_previous: a name that received no
    values since the last update keeps its previous numbers (otherwise it disappears).
    Several collectors may coexist; each sees every reported value once.
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = dict()   # name -> cumulative moments at our last update
        self._moments = dict()      # name -> moments between our last two updates
        self.update()
        self._moments.clear()

    def names(self):
        """Names reported so far that match the regex (sorted)."""
        return sorted(name for name in _counters if self._regex.fullmatch(name))

    def update(self):
        """Sum the accumulated values over devices and ranks; a collective call under torch.distributed."""
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name):
        assert self._regex.fullmatch(name), f'"{name}" does not match this collector\'s regex'
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def num(self, name):
        """Number of scalars reported under name between the last two updates."""
        return int(self._get_delta(name)[0])

    def mean(self, name):
        """Their mean (nan if none)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name):
        """Their population standard deviation (nan if none, 0 for a single value)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if int(delta[0]) == 1:
            return 0.0
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self):
        """EasyDict name -> EasyDict(num, mean, std), e.g. for a JSON log line."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name):
        """Shorthand for mean(name)."""
        return self.mean(name)

#----------------------------------------------------------------------------

def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1

def _sync(names):
    """Move the pending counters of `names` into _cumulative (all-reduced); returns [(name, cumulative)]."""
    if len(names) == 0:
        return []

    device = _sync_device
    if device is None:
        device = torch.device('cpu')
        if _distributed() and torch.distributed.get_backend() == 'nccl':
            device = torch.device('cuda', torch.cuda.current_device())

    deltas = []
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device=device, dtype=_counter_dtype))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)

    if _distributed():
        torch.distributed.all_reduce(deltas)

    deltas = deltas.cpu()
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
    return [(name, _cumulative[name]) for name in names]

#----------------------------------------------------------------------------

default_collector = Collector(regex='.*', keep_previous=True)

#----------------------------------------------------------------------------
