"""Small PyTorch helpers used across networks, training loop and metrics.

The names are those stylegan2-ada-pytorch's network code calls (`misc.assert_shape`,
`misc.constant`, `misc.profiled_function`, ...), so the source embedded in its pickles runs
against this module.
"""

import contextlib
import functools
import re
import warnings
import weakref

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# Cached constant tensors: building a tensor from numpy every forward pass is slow.

_constant_cache = dict()

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A tensor holding `value` (broadcast to `shape`), created once per argument set and reused.

    Callers must not modify the result in place.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    device = torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        # A tensor created under inference_mode could not be used by autograd later.
        with torch.inference_mode(False):
            tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
            if shape is not None:
                tensor = tensor.expand(torch.broadcast_shapes(tensor.shape, shape))
            tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor

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

def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None): # pylint: disable=redefined-builtin
    """torch.nan_to_num (kept under this name for code written against older PyTorch)."""
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)

#----------------------------------------------------------------------------
# Shape checks that also work while tracing.

class suppress_tracer_warnings(warnings.catch_warnings):
    """Context manager that silences torch.jit.TracerWarning (for checks on traced shapes)."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        return self

def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless tensor.shape matches ref_shape; None entries match any size."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim} (shape {list(tensor.shape)}), '
                             f'expected {len(ref_shape)} (shape {list(ref_shape)})')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor) or isinstance(size, torch.Tensor):
            # Symbolic sizes while tracing: record the check in the graph.
            with suppress_tracer_warnings():
                torch._assert(torch.equal(torch.as_tensor(size), torch.as_tensor(ref_size)),
                              f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size} '
                                 f'(shape {list(tensor.shape)}, expected {list(ref_shape)})')

#----------------------------------------------------------------------------

def profiled_function(fn):
    """Decorator: show calls of fn as a named range in the PyTorch profiler."""
    @functools.wraps(fn)
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    return decorator

#----------------------------------------------------------------------------

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream for a DataLoader, sharded across ranks.

    With shuffle=True the stream is a sequence of passes, each a permutation of all indices:
    the first by `seed`, and after visiting a position its index swaps with a random one
    among the last `window_size` * len positions visited, so each pass reorders the last.
    Rank r takes every num_replicas-th index of the global stream starting at r.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler: the dataset is empty')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'InfiniteSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}')
        if not 0 <= window_size <= 1:
            raise ValueError(f'InfiniteSampler: window_size must be in [0, 1], got {window_size}')
        super().__init__() # torch >= 2.2 no longer accepts the data source here
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        order = np.arange(len(self.dataset))
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))

        idx = 0
        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank:
                yield int(order[i])
            if window >= 2:
                # Swap only with positions already visited in this pass, so every pass
                # over the data is an exact permutation and later passes differ.
                j = i - rnd.randint(min(window, i + 1))
                order[i], order[j] = order[j], order[i]
            idx += 1

#----------------------------------------------------------------------------
# Parameters and buffers.

def params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())

def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy every parameter and buffer of dst_module from the same name in src_module.

    Returns the names in dst_module that src_module lacks (left untouched). With
    require_all=True a missing name raises KeyError instead. A shape mismatch always raises.
    """
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src_tensors:
            missing.append(name)
            continue
        src = src_tensors[name]
        if src.shape != tensor.shape:
            raise ValueError(f'copy_params_and_buffers: "{name}" has shape {list(src.shape)} in the source '
                             f'but {list(tensor.shape)} in the destination')
        tensor.copy_(src.detach()).requires_grad_(tensor.requires_grad)
    if require_all and missing:
        raise KeyError(f'copy_params_and_buffers: source module lacks {len(missing)} tensor(s): {", ".join(missing)}')
    return missing

#----------------------------------------------------------------------------
# DistributedDataParallel helpers.

@contextlib.contextmanager
def ddp_sync(module, sync):
    """Context: with sync=False, skip DDP's gradient all-reduce (gradient accumulation)."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer equals rank 0's (no-op without torch.distributed).

    A collective: the verdict is all-reduced, so every rank raises together. A rank raising
    alone would leave the others blocked in their next collective until the timeout.
    """
    assert isinstance(module, torch.nn.Module)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    names, differs = [], []
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        names.append(fullname)
        differs.append((tensor != other).any())
    if not names:
        return
    num_differing = torch.stack(differs).to(torch.float32)    # per tensor: ranks that differ from rank 0
    torch.distributed.all_reduce(num_differing)
    bad = [name for name, n in zip(names, num_differing.tolist()) if n > 0]
    if bad:
        raise AssertionError(f'DDP consistency check failed: {", ".join(bad)} differ(s) from rank 0 on some rank')

#----------------------------------------------------------------------------
# Module summary table.

def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run module(*inputs) once and print a table of submodules, parameter counts and output shapes.

    Returns the module's outputs.
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    # Record every submodule call (outermost first by nesting level) with forward hooks.
    entries = []
    nesting = [0]

    def pre_hook(_mod, _inputs):
        nesting[0] += 1

    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            outputs = [t for t in outputs if isinstance(t, torch.Tensor)]
            entries.append(dnnlib.EasyDict(mod=mod, outputs=outputs))

    hooks = [mod.register_forward_pre_hook(pre_hook) for mod in module.modules()]
    hooks += [mod.register_forward_hook(post_hook) for mod in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    # Attribute each tensor to the first (innermost) module that reported it.
    tensors_seen = set()
    for e in entries:
        e.unique_params = [t for t in e.mod.parameters() if id(t) not in tensors_seen]
        e.unique_buffers = [t for t in e.mod.buffers() if id(t) not in tensors_seen]
        e.unique_outputs = [t for t in e.outputs if id(t) not in tensors_seen]
        tensors_seen |= {id(t) for t in e.unique_params + e.unique_buffers + e.unique_outputs}
    if skip_redundant:
        entries = [e for e in entries if len(e.unique_params) or len(e.unique_buffers) or len(e.unique_outputs)]

    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows += [['---'] * len(rows[0])]
    param_total = 0
    buffer_total = 0
    submodule_names = {mod: name for name, mod in module.named_modules()}
    for e in entries:
        name = '<top-level>' if e.mod is module else submodule_names[e.mod]
        param_size = sum(t.numel() for t in e.unique_params)
        buffer_size = sum(t.numel() for t in e.unique_buffers)
        output_shapes = [str(list(t.shape)) for t in e.outputs]
        output_dtypes = [str(t.dtype).split('.')[-1] for t in e.outputs]
        rows += [[
            name + (':0' if len(e.outputs) >= 2 else ''),
            str(param_size) if param_size else '-',
            str(buffer_size) if buffer_size else '-',
            (output_shapes + ['-'])[0],
            (output_dtypes + ['-'])[0],
        ]]
        for idx in range(1, len(e.outputs)):
            rows += [[name + f':{idx}', '-', '-', output_shapes[idx], output_dtypes[idx]]]
        param_total += param_size
        buffer_total += buffer_size
    rows += [['---'] * len(rows[0])]
    rows += [['Total', str(param_total), str(buffer_total), '-', '-']]

    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)))
    print()
    return outputs

#----------------------------------------------------------------------------
