"""Small PyTorch helpers used across networks, training loop and metrics.

Network pickles written by stylegan2-ada-pytorch embed their own networks.py, which calls
`misc.assert_shape`, `misc.suppress_tracer_warnings`, `misc.profiled_function` and
`misc.constant`; those names and signatures are kept so that source still runs here.
"""

import contextlib
import functools
import itertools
import re
import warnings
import weakref

import numpy as np
import torch

#----------------------------------------------------------------------------
# Constant tensors, built once per distinct request (from numpy on every forward is slow).

_made_constants = {}

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A tensor holding `value` (broadcast to `shape` if given), shared between callers that
    ask for the same value, shape, dtype, device and memory format. Never modify it in place."""
    array = np.asarray(value)
    request = (
        array.dtype.str, array.shape, array.tobytes(),
        None if shape is None else tuple(shape),
        torch.get_default_dtype() if dtype is None else dtype,
        torch.device('cpu' if device is None else device),
        torch.contiguous_format if memory_format is None else memory_format,
    )
    made = _made_constants.get(request)
    if made is None:
        made = _made_constants[request] = _build_constant(array, *request[3:])
    return made

def _build_constant(array, shape, dtype, device, memory_format):
    # Built outside inference mode even when first requested inside it: an inference tensor
    # could not take part in autograd when it is reused later.
    with torch.inference_mode(False):
        built = torch.tensor(array, dtype=dtype, device=device)
        if shape is not None:
            built = torch.broadcast_to(built, torch.broadcast_shapes(built.shape, shape))
        return built.contiguous(memory_format=memory_format)

#----------------------------------------------------------------------------
# A 0-dim tensor's value known on the host. Reading a CUDA scalar with float() waits for the
# GPU; a value we wrote ourselves does not have to be read back.

_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_host_values = dict()   # id(tensor) -> (weak reference, version counter, value)

def host_value(tensor):
    """float(tensor), remembered together with the tensor's version counter: read from the
    device (a sync on CUDA) only the first time and after the tensor was changed in place by
    code that did not go through set_host_value(). Nothing is stored on the tensor itself."""
    entry = _host_values.get(id(tensor))
    if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
        return entry[2]
    value = float(tensor)
    _remember(tensor, value)
    return value

def set_host_value(tensor, value):
    """tensor.fill_(value) with the host copy kept, rounded to the tensor's dtype the way the
    fill rounds it, so that host_value() needs no device read."""
    with torch.no_grad():
        tensor.fill_(value)
    rounding = _NUMPY_FLOAT.get(tensor.dtype)
    stored = float(rounding(value)) if rounding is not None else float(tensor)
    _remember(tensor, stored)
    return stored

def _remember(tensor, value):
    key = id(tensor)
    def forget(ref):
        if _host_values.get(key, (None,))[0] is ref:
            del _host_values[key]
    _host_values[key] = (weakref.ref(tensor, forget), tensor._version, value)

#----------------------------------------------------------------------------
# Shape checks that also hold while tracing.

@contextlib.contextmanager
def suppress_tracer_warnings():
    """Within the block, torch.jit.TracerWarning is not shown (checks on traced sizes raise it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield

def assert_shape(tensor, ref_shape):
    """AssertionError unless tensor's shape is ref_shape, where None stands for any size.

    Sizes that are tensors (as while tracing) are compared by an assert recorded in the graph.
    """
    shape = list(tensor.shape)
    expected = list(ref_shape)
    if len(shape) != len(expected):
        raise AssertionError(f'Wrong number of dimensions: got {len(shape)} (shape {shape}), '
                             f'expected {len(expected)} (shape {expected})')
    for axis, got, want in zip(itertools.count(), shape, expected):
        if want is None:
            continue
        if torch.is_tensor(got) or torch.is_tensor(want):
            with suppress_tracer_warnings():
                same = torch.equal(torch.as_tensor(got), torch.as_tensor(want))
                torch._assert(same, f'Wrong size for dimension {axis}: expected {want}')
            continue
        if got != want:
            raise AssertionError(f'Wrong size for dimension {axis}: got {got}, expected {want} '
                                 f'(shape {shape}, expected {expected})')

#----------------------------------------------------------------------------

def profiled_function(fn):
    """Decorator: calls of fn appear as a range named after it in the PyTorch profiler."""
    label = fn.__name__

    @functools.wraps(fn)
    def in_named_range(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return in_named_range

#----------------------------------------------------------------------------

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream for a DataLoader, sharded across ranks.

    Without shuffling the stream repeats 0..len-1. With shuffling it is a sequence of passes,
    each a permutation of all indices: the first drawn from `seed`; afterwards each visited
    position trades its index with one at most `window_size` * len positions back in the same
    pass, so the next pass comes out reordered. Rank r gets entries r, r + num_replicas, ...
    of that one global stream, so the ranks together see every entry once. `skip` drops the
    first `skip` entries of this rank's stream (a resumed run reads on where it stopped).
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5, skip=0):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler: the dataset is empty')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'InfiniteSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}')
        if not 0 <= window_size <= 1:
            raise ValueError(f'InfiniteSampler: window_size must be in [0, 1], got {window_size}')
        super().__init__() # torch >= 2.2 no longer accepts the data source here
        self.dataset = dataset
        self.rank, self.num_replicas = rank, num_replicas
        self.shuffle, self.seed, self.window_size = shuffle, seed, window_size
        self.skip = int(skip)

    def __iter__(self):
        return itertools.islice(self._global_stream(), self.rank + self.skip * self.num_replicas, None, self.num_replicas)

    def _global_stream(self):
        size = len(self.dataset)
        if not self.shuffle:
            yield from itertools.chain.from_iterable(itertools.repeat(range(size)))
            return
        rng = np.random.RandomState(self.seed)
        order = rng.permutation(size)
        reach = int(np.rint(size * self.window_size))
        for step in itertools.count():
            here = step % size
            yield int(order[here])
            if reach >= 2:
                # Only positions already visited in this pass take part, so each pass
                # stays an exact permutation.
                there = here - rng.randint(min(reach, here + 1))
                order[[here, there]] = order[[there, here]]

#----------------------------------------------------------------------------
# Parameters and buffers.

def named_params_and_buffers(module):
    """[(name, tensor)]: the module's parameters, then its buffers."""
    return [*module.named_parameters(), *module.named_buffers()]

def params_and_buffers(module):
    """The tensors of named_params_and_buffers(module)."""
    return [tensor for _name, tensor in named_params_and_buffers(module)]

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Fill dst_module's parameters and buffers from the tensors of the same name in src_module.

    Returns the dst names src_module lacks (left as they are). Nothing is written if a shape
    differs (ValueError) or, with require_all=True, if a name is missing (KeyError).
    """
    available = dict(named_params_and_buffers(src_module))
    targets = named_params_and_buffers(dst_module)
    missing = [name for name, _ in targets if name not in available]
    if require_all and missing:
        raise KeyError(f'copy_params_and_buffers: source module lacks {len(missing)} tensor(s): {", ".join(missing)}')
    found = [(name, available[name], dst) for name, dst in targets if name in available]
    clashes = [f'"{name}" is {list(src.shape)} in the source but {list(dst.shape)} in the destination'
               for name, src, dst in found if src.shape != dst.shape]
    if clashes:
        raise ValueError('copy_params_and_buffers: ' + '; '.join(clashes))
    for _name, src, dst in found:
        dst.copy_(src)
    return missing

#----------------------------------------------------------------------------

def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer equals rank 0's (no-op without torch.distributed).

    A collective: the verdict is all-reduced, so every rank raises together. A rank raising
    alone would leave the others blocked in their next collective until the timeout.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    prefix = type(module).__name__ + '.'
    checked = [(prefix + name, tensor.detach()) for name, tensor in named_params_and_buffers(module)]
    checked = [(name, t) for name, t in checked if ignore_regex is None or not re.fullmatch(ignore_regex, name)]
    if not checked:
        return
    differs = torch.stack([_differs_from_rank0(t) for _name, t in checked]).to(torch.float32)
    dist.all_reduce(differs)   # per tensor: how many ranks differ from rank 0
    bad = [name for (name, _t), count in zip(checked, differs.tolist()) if count > 0]
    if bad:
        raise AssertionError(f'DDP consistency check failed: {", ".join(bad)} differ(s) from rank 0 on some rank')

def _differs_from_rank0(tensor):
    if tensor.is_floating_point():
        tensor = torch.nan_to_num(tensor)   # NaN != NaN would flag identical tensors
    rank0 = tensor.clone()
    torch.distributed.broadcast(rank0, src=0)
    return torch.ne(tensor, rank0).any()

#----------------------------------------------------------------------------
