"""Training statistics gathered across devices and processes.

`report(name, value)` adds the count, sum and sum of squares of `value`'s elements to a
float64 accumulator on value's device, without a host synchronisation. A `Collector` folds
the accumulators of every device and rank into running totals (`update()`, a collective under
torch.distributed) and answers num / mean / std for what was reported between its last two
updates. Several collectors may watch the same names; each sees every value once.
"""

import math
import re

import torch

import dnnlib

#----------------------------------------------------------------------------

_rank = 0           # rank of this process: report0 counts only on rank 0
_sync_device = None # where update() all-reduces; None = the CPU, or the GPU under NCCL
_pending = {}       # name -> {device: float64 [count, sum, sum of squares] not yet folded}
_totals = {}        # name -> CPU float64 [count, sum, sum of squares], all ranks, ever

def init_multiprocessing(rank, sync_device):
    """Tell this process its rank and the device its all-reduces run on.

    Call before the first update: sync_device is torch.device('cuda', i) under NCCL and None
    under gloo or in a single process. A second call (several runs in one process, as in the
    tests) simply replaces both.
    """
    global _rank, _sync_device
    _rank, _sync_device = rank, sync_device

#----------------------------------------------------------------------------

def report(name, value):
    """Count the elements of `value` (number, sequence or tensor) under `name`; returns value.

    Every rank must report the same names, in any order, since updates all-reduce them by
    name: a rank with nothing to count reports an empty value, which only registers the name.
    """
    per_device = _pending.setdefault(name, {})
    flat = torch.as_tensor(value).detach().reshape(-1)
    if flat.numel() > 0:
        # MPS has no float64; everywhere else the sums are kept in double precision.
        flat = flat.to(torch.float32 if flat.device.type == 'mps' else torch.float64)
        moments = torch.stack([torch.full_like(flat[0], flat.numel()), flat.sum(), flat.square().sum()])
        if moments.device in per_device:
            per_device[moments.device].add_(moments)
        else:
            per_device[moments.device] = moments
    return value

def report0(name, value):
    """Like report(), counting only on rank 0; the other ranks just register the name."""
    report(name, value if _rank == 0 else ())
    return value

#----------------------------------------------------------------------------

def _fold(names):
    """Move what was reported under `names` (on every device and rank) into _totals.

    Returns {name: its totals}. A collective call when several processes train together.
    """
    if not names:
        return {}
    multi_process = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1
    device = _sync_device
    if device is None:
        nccl = multi_process and torch.distributed.get_backend() == 'nccl'
        device = torch.device('cuda', torch.cuda.current_device()) if nccl else torch.device('cpu')
    fresh = torch.zeros([len(names), 3], dtype=torch.float64, device=device)
    for row, name in zip(fresh, names):
        for moments in _pending[name].values():
            row.add_(moments.to(device=device, dtype=torch.float64))
        _pending[name].clear()
    if multi_process:
        torch.distributed.all_reduce(fresh)
    for row, name in zip(fresh.cpu(), names):
        _totals.setdefault(name, torch.zeros([3], dtype=torch.float64)).add_(row)
    return {name: _totals[name] for name in names}

#----------------------------------------------------------------------------

class Collector:
    """num / mean / std of the values reported between this collector's last two update()s.

    regex: the names this collector reads (full match). keep_previous: a name that got no new
    values keeps its last numbers (otherwise it reads as empty until new values arrive).
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._pattern = re.compile(regex)
        self._keep_previous = keep_previous
        # Totals as of our last update; what was reported before we existed is not ours.
        self._baseline = {name: total.clone() for name, total in _fold(self.names()).items()}
        self._window = {}   # name -> (count, sum, sum of squares) between the last two updates

    def names(self):
        """The names reported so far that this collector reads, sorted."""
        return sorted(filter(self._pattern.fullmatch, _pending))

    def update(self):
        """Fold in everything reported since the last call (collective under torch.distributed)."""
        if not self._keep_previous:
            self._window = {}
        for name, total in _fold(self.names()).items():
            before = self._baseline.get(name)
            change = total - before if before is not None else total.clone()
            self._baseline[name] = total.clone()
            count, value_sum, square_sum = change.tolist()
            if count != 0:
                self._window[name] = (count, value_sum, square_sum)

    def _moments(self, name):
        if not self._pattern.fullmatch(name):
            raise KeyError(f'"{name}" is not among the names this collector reads ({self._pattern.pattern})')
        return self._window.get(name, (0.0, 0.0, 0.0))

    def num(self, name):
        """How many scalars were reported under name."""
        return int(self._moments(name)[0])

    def mean(self, name):
        """Their mean; nan if there were none."""
        count, value_sum, _ = self._moments(name)
        return value_sum / count if count else float('nan')

    def std(self, name):
        """Their population standard deviation; nan if none (or not finite), 0 for one value."""
        count, value_sum, square_sum = self._moments(name)
        if count == 0 or not math.isfinite(value_sum):
            return float('nan')
        if count == 1:
            return 0.0
        mean = value_sum / count
        return math.sqrt(max(square_sum / count - mean * mean, 0.0))

    def as_dict(self):
        """{name: {num, mean, std}} for every name read (EasyDicts), e.g. for a JSON log line."""
        return dnnlib.EasyDict({name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                                for name in self.names()})

    def __getitem__(self, name):
        """Shorthand for mean(name)."""
        return self.mean(name)

#----------------------------------------------------------------------------

default_collector = Collector(regex='.*', keep_previous=True)
