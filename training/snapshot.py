"""Snapshots and network files: writing a run's snapshots, reading any network file, and
the plan for resuming from one.

Reading (`load_network`) accepts our snapshots, network pickles written by
stylegan2-ada-pytorch (their embedded source runs against our `torch_utils`, then the
networks are rebuilt as our own classes with the weights copied by name), and the safe
format: `<name>.safetensors` (tensors only) plus `<name>.json` (class paths and constructor
keywords), which executes nothing but our own importable classes (`export_safe` writes it;
`python legacy.py --source snap.pkl --dest out` is its command line).

Writing (`save_snapshot`): `network-snapshot-{kimg:06d}.pkl` with the upstream keys and a
`resume_state` from which a resumed run continues exactly (docs/architecture.md, Snapshot).

Resuming (`open_resume`): one `ResumePlan` says whether a run continues a snapshot in full
or starts from its weights only, and does each part of the restore where the loop calls it.
"""

import copy
import glob
import hashlib
import io
import json
import os
import pickle
import random
import struct

import numpy as np
import torch

import dnnlib
from torch_utils import misc
from torch_utils import persistence

#----------------------------------------------------------------------------

NETWORK_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')
SAFE_FORMAT = 'gan-toolkit-safe-networks'
SAFE_VERSION = 1
SAFE_MODULE_PREFIXES = ('training.', 'plugins.') # the only code the safe loader will construct

# Our class for each class name found in a pickle (upstream names are the same).
_OUR_CLASSES = {
    'Generator': 'training.networks.Generator',
    'Discriminator': 'training.networks.Discriminator',
    'MappingNetwork': 'training.networks.MappingNetwork',
    'SynthesisNetwork': 'training.networks.SynthesisNetwork',
    'AugmentPipe': 'training.augment.AugmentPipe',
}

class InvalidSnapshotError(ValueError):
    """A network file that cannot be read (truncated, corrupted, wrong kind of file)."""

class UnsafeFormatError(ValueError):
    """A pickle was given where only the safe format is allowed."""

#----------------------------------------------------------------------------
# Entry points.

def load_network(path_or_url, safe=False, verbose=True, force_fp16=False):
    """Load a network file (path or URL) into a dict with G, D, G_ema, augment_pipe, training_set_kwargs.

    The kind of file is recognised by its content: a pickle (our snapshot or an upstream
    one) or the safe format (`x.safetensors` with `x.json` beside it; either name works).
    safe=True refuses pickles, which can execute arbitrary code when loaded.
    """
    path = str(path_or_url)
    if path.endswith('.json') or path.endswith('.safetensors'):
        return load_safe(path, verbose=verbose)
    with dnnlib.util.open_url(path, verbose=verbose) as f:
        head = f.read(16)
        f.seek(0)
        if _looks_like_safetensors(head):
            return load_safe(path, verbose=verbose)
        if safe:
            raise UnsafeFormatError(
                f'Refusing to load "{path}" with safe=True: it is a pickle, and loading a pickle can execute '
                f'arbitrary code. Convert it once where you trust it: python legacy.py --source {path} --dest NAME, '
                f'then load NAME.safetensors.')
        return load_network_pkl(f, force_fp16=force_fp16, verbose=verbose, name=path)

def load_network_pkl(f, force_fp16=False, verbose=True, name=None):
    """Read a network pickle from an open binary file; returns the snapshot dict.

    Every key of the pickle is kept; G, D, G_ema, augment_pipe and training_set_kwargs are
    added as None when absent. Networks whose class is not our current one (upstream
    pickles, snapshots of older code) are rebuilt as our classes when every tensor maps by
    name; otherwise the pickled object is kept and the unmapped names are reported.
    force_fp16: rebuild G / D with num_fp16_res=4, conv_clamp=256.
    """
    name = name or getattr(f, 'name', None) or 'network pickle'
    head = f.read(16)
    if getattr(f, 'seekable', lambda: False)():
        f.seek(0)
    else:
        f = io.BufferedReader(_PrefixedReader(head, f))
    if _looks_like_safetensors(head) or head.lstrip()[:1] == b'{': # safetensors, or its JSON half
        if not isinstance(getattr(f, 'name', None), str):
            raise InvalidSnapshotError(f'{name} is in the safe format: load it with load_network(path)')
        return load_safe(f.name, verbose=verbose)
    if verbose:
        print(f'Loading {name}: a pickle, which can execute code; load only files you trust '
              f'(safe alternative: python legacy.py --source FILE --dest NAME, then load NAME.safetensors).')
    data = _unpickle(f, name)
    data = _as_snapshot_dict(data, name)
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        if data[key] is not None:
            data[key] = _to_our_class(data[key], key, verbose)
    if force_fp16:
        for key in ('G', 'D', 'G_ema'):
            if data[key] is not None:
                data[key] = _with_fp16(data[key], key)
    return data

#----------------------------------------------------------------------------
# Pickles.

class _PrefixedReader(io.RawIOBase):
    """Re-attach bytes already read from a non-seekable stream."""
    def __init__(self, prefix, f):
        self._prefix, self._f = prefix, f
    def readable(self):
        return True
    def readinto(self, b):
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._f.read(len(b))
        b[:len(data)] = data
        return len(data)

def _looks_like_safetensors(head):
    """safetensors: 8-byte little-endian header length, then the JSON header."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack('<Q', head[:8])
    return 2 <= n < (1 << 31) and head[8:9] == b'{'

def _unpickle(f, name):
    try:
        return pickle.load(f)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.startswith('dnnlib.tflib'):
            raise InvalidSnapshotError(f'{name} is a TensorFlow network pickle (stylegan2 / stylegan2-ada TF); '
                                       f'convert it to a PyTorch pickle with stylegan2-ada-pytorch first') from e
        raise InvalidSnapshotError(f'{name} is not a valid network snapshot (truncated or corrupted): '
                                   f'it refers to a module that does not exist here ({e})') from e
    except Exception as e: # pickle raises many kinds of errors on damaged data
        raise InvalidSnapshotError(f'{name} is not a valid network snapshot (truncated or corrupted): '
                                   f'{type(e).__name__}: {e}') from e

def _as_snapshot_dict(data, name):
    if not isinstance(data, dict):
        raise InvalidSnapshotError(f'{name} is not a network snapshot: it holds a {type(data).__name__}, '
                                   f'expected a dict with G, D, G_ema')
    data = dict(data)
    for key in NETWORK_KEYS + ('training_set_kwargs',):
        data.setdefault(key, None)
    if not any(isinstance(data[key], torch.nn.Module) for key in ('G', 'D', 'G_ema')):
        raise InvalidSnapshotError(f'{name} is not a network snapshot: none of G, D, G_ema is a network '
                                   f'(keys: {", ".join(sorted(map(str, data)))})')
    for key in NETWORK_KEYS:
        if data[key] is not None and not isinstance(data[key], torch.nn.Module):
            raise InvalidSnapshotError(f'{name}: "{key}" is a {type(data[key]).__name__}, not a network')
    return data

#----------------------------------------------------------------------------
# Converting pickled networks into our classes.

def _our_class_for(obj):
    """Our class with the same role as obj's class, or None if there is none to convert to."""
    class_path = _OUR_CLASSES.get(type(obj).__name__, None)
    if class_path is None:
        return None
    try:
        return dnnlib.util.get_obj_by_name(class_path)
    except (ImportError, AttributeError):
        return None

def _to_our_class(obj, key, verbose):
    """obj rebuilt as our current class with its tensors copied, or obj itself if that is not faithful."""
    cls = _our_class_for(obj)
    if cls is None or type(obj) is cls or not persistence.is_persistent(obj):
        return obj
    try:
        # The constructor's random init is overwritten below; it must not draw from the caller's
        # RNG either: whether a file needs rebuilding depends on the process's history
        # (persistence caches embedded modules), and a run's networks are drawn after the load.
        with torch.random.fork_rng(devices=[]):
            new = cls(*obj.init_args, **obj.init_kwargs)
    except Exception as e:
        print(f'Note: {key} ({type(obj).__name__}) kept as pickled: our class does not accept its '
              f'constructor arguments ({type(e).__name__}: {e})')
        return obj
    _transplant_swapped_submodules(obj, new)
    report = _copy_tensors(obj, new)
    if report.unused or report.unfilled_params or report.shape_mismatch:
        print(f'Note: {key} ({type(obj).__name__}) kept as pickled, because its tensors do not map one-to-one '
              f'onto {cls.__module__}.{cls.__name__}: ' + report.describe())
        return obj
    if report.unfilled_buffers and verbose:
        print(f'Note: {key}: buffers left at their initial value: {", ".join(report.unfilled_buffers)}')
    new.train(obj.training)
    return new

def _transplant_swapped_submodules(src, dst):
    """Where src holds a submodule of another class than dst's constructor built (a plugin
    swapped it, e.g. G.mapping.embed), put (a copy of) src's submodule into dst."""
    for name, src_child in list(src.named_children()):
        dst_child = dst._modules.get(name, None)
        if dst_child is None or type(dst_child).__name__ != type(src_child).__name__:
            setattr(dst, name, copy.deepcopy(src_child))
        else:
            _transplant_swapped_submodules(src_child, dst_child)

class _CopyReport(dnnlib.EasyDict):
    def describe(self):
        parts = []
        if self.unused:
            parts.append(f'not in our class: {", ".join(self.unused)}')
        if self.unfilled_params:
            parts.append(f'missing from the pickle: {", ".join(self.unfilled_params)}')
        if self.shape_mismatch:
            parts.append(f'different shapes: {", ".join(self.shape_mismatch)}')
        return '; '.join(parts)

@torch.no_grad()
def _copy_tensors(src, dst):
    """Copy parameters and buffers by name; report what did not map."""
    src_tensors = dict(misc.named_params_and_buffers(src))
    dst_params = {name for name, _ in dst.named_parameters()}
    report = _CopyReport(unused=[], unfilled_params=[], unfilled_buffers=[], shape_mismatch=[], copied=0)
    used = set()
    for name, tensor in misc.named_params_and_buffers(dst):
        if name not in src_tensors:
            (report.unfilled_params if name in dst_params else report.unfilled_buffers).append(name)
            continue
        used.add(name)
        value = src_tensors[name]
        if value.shape != tensor.shape:
            report.shape_mismatch.append(f'{name} {list(value.shape)} vs {list(tensor.shape)}')
            continue
        tensor.copy_(value.detach())
        tensor.requires_grad_(value.requires_grad)
        report.copied += 1
    report.unused = [name for name in src_tensors if name not in used]
    return report

def _with_fp16(module, key):
    """Rebuild G / D with fp16 in the 4 highest resolutions and conv_clamp=256."""
    if not persistence.is_persistent(module):
        return module
    kwargs = module.init_kwargs
    if key in ('G', 'G_ema'):
        kwargs.setdefault('synthesis_kwargs', {})
        kwargs.synthesis_kwargs = dict(kwargs.synthesis_kwargs, num_fp16_res=4, conv_clamp=256)
    else:
        kwargs.num_fp16_res = 4
        kwargs.conv_clamp = 256
    if kwargs == module.init_kwargs:
        return module
    new = type(module)(*module.init_args, **kwargs)
    _transplant_swapped_submodules(module, new)
    misc.copy_params_and_buffers(module, new, require_all=True)
    new.train(module.training).requires_grad_(False)
    return new

#----------------------------------------------------------------------------
# Safe format: tensors in safetensors, structure in JSON.

def _safe_paths(path):
    base = str(path)
    for ext in ('.safetensors', '.json'):
        if base.endswith(ext):
            base = base[:-len(ext)]
    return base + '.safetensors', base + '.json'

def _class_path(cls):
    return f'{cls.__module__}.{cls.__qualname__}'

def _check_whitelisted(class_path):
    """The class a safe file names, if it is one of our importable network classes."""
    if not class_path.startswith(SAFE_MODULE_PREFIXES):
        raise InvalidSnapshotError(f'Safe network file names class "{class_path}"; only classes from '
                                   f'{", ".join(p + "*" for p in SAFE_MODULE_PREFIXES)} may be constructed')
    try:
        cls = dnnlib.util.get_obj_by_name(class_path)
    except (ImportError, AttributeError) as e:
        raise InvalidSnapshotError(f'Safe network file names class "{class_path}", which this code does not have ({e})') from e
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__.startswith(SAFE_MODULE_PREFIXES)):
        raise InvalidSnapshotError(f'Safe network file names "{class_path}", which is not a network class of this code')
    return cls

def _to_json_value(value, where):
    """JSON form of constructor arguments; tuples are tagged so they come back as tuples."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list,)):
        return [_to_json_value(v, where) for v in value]
    if isinstance(value, tuple):
        return {'__tuple__': [_to_json_value(v, where) for v in value]}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ValueError(f'{where}: dict key {k!r} is not a string; cannot store it in the safe format')
        if '__tuple__' in value:
            raise ValueError(f'{where}: the key "__tuple__" is reserved by the safe format')
        return {k: _to_json_value(v, f'{where}.{k}') for k, v in value.items()}
    if hasattr(value, 'item') and getattr(value, 'ndim', None) == 0: # numpy / torch scalar
        return value.item()
    raise ValueError(f'{where}: a {type(value).__name__} cannot be stored in the safe format (JSON)')

def _from_json_value(value):
    if isinstance(value, list):
        return [_from_json_value(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {'__tuple__'}:
            return tuple(_from_json_value(v) for v in value['__tuple__'])
        return dnnlib.EasyDict({k: _from_json_value(v) for k, v in value.items()})
    return value

def _describe_module(module, where):
    cls = type(module)
    if not persistence.is_persistent(module):
        raise ValueError(f'{where} is a {_class_path(cls)}, which does not record its constructor arguments '
                         f'(not a persistent class); it cannot be stored in the safe format')
    class_path = _class_path(cls)
    try:
        importable = dnnlib.util.get_obj_by_name(class_path) is cls
    except (ImportError, AttributeError):
        importable = False
    if not importable or not class_path.startswith(SAFE_MODULE_PREFIXES):
        raise ValueError(f'{where} is a {cls.__name__} whose code is not one of our importable modules '
                         f'({class_path}): load the file with legacy.load_network() first so it is converted')
    return dict(class_name=class_path,
                init_args=_to_json_value(module.init_args, f'{where}.init_args'),
                init_kwargs=_to_json_value(dict(module.init_kwargs), f'{where}.init_kwargs'))

def _build(desc):
    cls = _check_whitelisted(desc['class_name'])
    args = _from_json_value(desc.get('init_args', {'__tuple__': []}))
    kwargs = _from_json_value(desc.get('init_kwargs', {}))
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        # Arguments our classes never wrote (a hand edit, corruption, another program's file).
        raise InvalidSnapshotError(f'not a valid network file: {desc["class_name"]} cannot be built from the '
                                   f'recorded arguments ({type(e).__name__}: {e})') from None

def _ctor_differs(a, b):
    """True if two persistent modules were built with different constructor arguments."""
    if not (persistence.is_persistent(a) and persistence.is_persistent(b)):
        return False
    return (_to_json_value(a.init_args, '') != _to_json_value(b.init_args, '') or
            _to_json_value(dict(a.init_kwargs), '') != _to_json_value(dict(b.init_kwargs), ''))

def _find_swaps(actual, fresh, prefix, out):
    """Dotted paths where `actual` holds a submodule that the constructor of `fresh` would not
    build (another class, other constructor arguments, or none at all)."""
    for name, child in actual._modules.items():
        path = prefix + name
        fresh_child = fresh._modules.get(name, None) if fresh is not None else None
        if child is None:
            if fresh_child is not None:
                out.append(dict(path=path, class_name=None))
            continue
        if fresh_child is None or type(fresh_child) is not type(child) or _ctor_differs(child, fresh_child):
            desc = _describe_module(child, path)
            out.append(dict(path=path, **desc))
            fresh_child = _build(desc)
        _find_swaps(child, fresh_child, path + '.', out)
    if fresh is not None:
        for name, fresh_child in fresh._modules.items():
            if name not in actual._modules and fresh_child is not None:
                out.append(dict(path=prefix + name, class_name=None, deleted=True))

def _apply_swaps(module, swaps):
    for swap in swaps:
        *parents, leaf = swap['path'].split('.')
        parent = module
        for p in parents:
            parent = getattr(parent, p)
        if swap.get('class_name') is None:
            if swap.get('deleted', False):
                parent._modules.pop(leaf, None)
            else:
                parent._modules[leaf] = None # a submodule slot set to None
        else:
            setattr(parent, leaf, _build(swap))

def export_safe(network_dict, out_path):
    """Write network_dict's networks as `<out>.safetensors` + `<out>.json`; returns both paths."""
    import safetensors.torch
    st_path, json_path = _safe_paths(out_path)
    tensors = dict()
    networks = dict()
    for key in NETWORK_KEYS:
        module = network_dict.get(key, None)
        if module is None:
            continue
        desc = _describe_module(module, key)
        swaps = []
        _find_swaps(module, _build(desc), '', swaps)
        networks[key] = dict(desc, training=module.training, submodules=swaps,
                             requires_grad=any(p.requires_grad for p in module.parameters()))
        for name, value in module.state_dict().items():
            # clone: safetensors refuses tensors that share memory
            tensors[f'{key}.{name}'] = value.detach().cpu().contiguous().clone()
    if not networks:
        raise ValueError('export_safe: the dict holds none of ' + ', '.join(NETWORK_KEYS))
    meta = dict(format=SAFE_FORMAT, version=SAFE_VERSION, networks=networks,
                training_set_kwargs=_to_json_value(network_dict.get('training_set_kwargs', None), 'training_set_kwargs'))
    out_dir = os.path.dirname(os.path.abspath(st_path))
    os.makedirs(out_dir, exist_ok=True)
    safetensors.torch.save_file(tensors, st_path + '.tmp', metadata={'format': SAFE_FORMAT})
    _make_readable(st_path + '.tmp') # safetensors writes 0600; an export is shared like the .json beside it
    os.replace(st_path + '.tmp', st_path)
    with open(json_path + '.tmp', 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(json_path + '.tmp', json_path)
    return st_path, json_path

def _make_readable(path):
    """Give `path` the mode a file created with open() gets: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

def load_safe(path, verbose=True):
    """Load the safe format (`x.safetensors` + `x.json`, local paths or URLs); executes no pickled code."""
    import safetensors.torch
    st_path, json_path = _safe_paths(path)
    try:
        json_file = dnnlib.util.open_url(json_path, return_filename=True, verbose=verbose)
        st_file = dnnlib.util.open_url(st_path, return_filename=True, verbose=verbose)
    except FileNotFoundError as e:
        raise FileNotFoundError(f'The safe network format needs both {st_path} and {json_path}: {e}') from e
    try:
        with open(json_file, 'r') as f:
            meta = json.load(f)
        if meta.get('format') != SAFE_FORMAT:
            raise ValueError(f'"format" is {meta.get("format")!r}, expected {SAFE_FORMAT!r}')
        if meta.get('version') != SAFE_VERSION:
            raise ValueError(f'version {meta.get("version")!r} is not supported (this code reads {SAFE_VERSION})')
        tensors = safetensors.torch.load_file(st_file)
    except Exception as e:
        raise InvalidSnapshotError(f'{path} is not a valid network snapshot (truncated or corrupted): '
                                   f'{type(e).__name__}: {e}') from e

    data = dict((key, None) for key in NETWORK_KEYS)
    for key, desc in meta['networks'].items():
        if key not in NETWORK_KEYS:
            raise InvalidSnapshotError(f'{json_path}: unknown network "{key}"')
        try:
            module = _build(desc)
            _apply_swaps(module, desc.get('submodules', []))
        except InvalidSnapshotError as e:
            raise InvalidSnapshotError(f'{json_path}: {e}') from None
        prefix = key + '.'
        state = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InvalidSnapshotError(f'{st_path} does not match the structure in {json_path} for {key}: '
                                       f'missing {list(missing)}, unexpected {list(unexpected)}')
        module.train(bool(desc.get('training', False)))
        module.requires_grad_(bool(desc.get('requires_grad', False)))
        data[key] = module
    data['training_set_kwargs'] = _from_json_value(meta.get('training_set_kwargs', None))
    return data

#----------------------------------------------------------------------------
# Writing a run's snapshots.

def save_snapshot(run_dir, G, D, G_ema, augment_pipe, training_set_kwargs, phases, plugins, loss, cur_nimg, cur_tick,
                  batch_idx, rng_state, options, num_gpus, rank, snapshot_keep):
    """Write network-snapshot-{kimg:06d}.pkl (rank 0) and return (path, data).

    Besides the upstream keys it holds `resume_state`: what a resumed run needs to continue
    exactly where this one stopped (optimizers, plugin state, counters, RNG of every rank).
    """
    if num_gpus > 1:
        for module in [G, D, G_ema]:
            misc.check_ddp_consistency(module, ignore_regex=r'.*\.[^.]+_(avg|ema)')
    rank_states = gather_objects(dict(rng=rng_state, loss=loss.state_dict(), param_digest=param_digest([G, D, G_ema])), num_gpus)
    plugin_states = plugins.state_for_snapshot()   # on every rank: a plugin may all-reduce here
    data = dict(G=_snapshot_module(G), D=_snapshot_module(D), G_ema=_snapshot_module(G_ema),
                augment_pipe=_snapshot_module(augment_pipe), training_set_kwargs=dict(training_set_kwargs))
    snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{cur_nimg // 1000:06d}.pkl')
    if rank == 0:
        data['resume_state'] = tensors_to_cpu(dict(
            G_opt=phases[0].opt.state_dict(), D_opt=phases[-1].opt.state_dict(),
            plugins=plugin_states, cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx,
            rng=rank_states[0]['rng'], loss=rank_states[0]['loss'], rank_states=rank_states,
            options=copy.deepcopy(options)))
        write_pickle_atomic(data, snapshot_pkl)
        prune_snapshots(run_dir, snapshot_keep)
    return snapshot_pkl, data

def tensors_to_cpu(obj):
    """obj with every tensor in it (nested dicts, lists, tuples) on the CPU. Optimizer states hold
    CUDA tensors; pickled as such, a snapshot would not load on a machine without a GPU and would
    land on cuda:0 in every process that loads it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if type(obj) is dict:
        return {key: tensors_to_cpu(value) for key, value in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(tensors_to_cpu(value) for value in obj)
    return obj

def _snapshot_module(module):
    if module is None:
        return None
    return copy.deepcopy(module).eval().requires_grad_(False).cpu()

def param_digest(modules):
    """SHA-1 of all parameter bytes: the snapshot records one per rank, so replicas can be compared."""
    import hashlib
    h = hashlib.sha1()
    for module in modules:
        for name, p in module.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

def gather_objects(obj, num_gpus):
    """[obj of rank 0, obj of rank 1, ...] (on every rank)."""
    if num_gpus == 1:
        return [obj]
    out = [None] * num_gpus
    torch.distributed.all_gather_object(out, obj)
    return out

def write_pickle_atomic(obj, path):
    """Pickle to `path.tmp`, fsync, then rename: a crash never leaves a truncated snapshot."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        pickle.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

def prune_snapshots(run_dir, keep):
    """Delete all but the newest `keep` network snapshots of a run."""
    if not keep or keep <= 0:
        return
    snaps = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    for path in snaps[:-keep]:
        os.remove(path)

#----------------------------------------------------------------------------
# RNG streams: a snapshot records them, a full resume continues them.

def get_rng_state():
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(), cuda=None)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state

def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

#----------------------------------------------------------------------------
# Resuming.

def resume_mode(path, plugin_classes, c, opts):
    """How a run starts from the network file `path`, decided once while the config is built:
    None (no file), 'full' (a snapshot with `resume_state` that every active plugin agrees to
    continue, Plugin.resume_mode) or 'weights' (only the weights are taken over)."""
    if path is None:
        return None
    data = load_network(path, verbose=False)
    if data.get('resume_state') is None:
        return 'weights'
    modes = [cls.resume_mode(data, c, opts) for cls in plugin_classes]
    return 'weights' if 'weights' in modes else 'full'

def open_resume(path, mode, log=print):
    """The resume plan for `path` in the `mode` resume_mode() decided (path None: a fresh start,
    every step of the plan does nothing)."""
    if path is None:
        return ResumePlan(None, None, log)
    if mode not in ('full', 'weights'):
        raise ValueError(f'resuming from "{path}" needs resume_mode "full" or "weights" (training.snapshot.resume_mode '
                         f'decides it with the config), got {mode!r}')
    log(f'Resuming from "{path}"')
    return ResumePlan(load_network(path), mode, log)

class ResumePlan:
    """How a run starts from a network file, in the mode decided with the config, restored step by step.

    mode: None (fresh start); 'full' (a snapshot with `resume_state`: weights, optimizer moments,
    plugin states, counters, the image stream and the RNG continue exactly where it stopped);
    'weights' (a network file without it, or a snapshot a plugin declines to continue through
    Plugin.resume_mode: the weights are copied by name and shape, everything else starts fresh).
    Every step does nothing where the mode does not call for it.
    """
    def __init__(self, data, mode, log=print):
        self.data = data
        self.mode = mode
        self.state = data.get('resume_state') if mode == 'full' else None
        self.log = log
        if mode == 'full' and self.state is None:
            raise ValueError('the resume file has no training state to continue (it changed since the config was built?)')
        if mode == 'weights' and data.get('resume_state') is not None:
            self.log('Resume: starting from the weights only; counters, optimizers, plugin states and RNG start fresh')

    @property
    def full(self):
        return self.mode == 'full'

    def load_weights(self, G, D, G_ema):
        """Copy G, D, G_ema by name and shape; a weights-only start logs the tensors left at init."""
        self._copy_weights(G, D, G_ema, report=self.mode == 'weights')

    def load_weights_after_setup(self, G, D, G_ema):
        """A full resume copies the weights again after the plugins' setup, so that modules a plugin
        added are filled from the snapshot too."""
        if self.full:
            self._copy_weights(G, D, G_ema, report=False)

    def _copy_weights(self, G, D, G_ema, report):
        if self.data is None:
            return
        for name, module in [('G', G), ('D', D), ('G_ema', G_ema)]:
            if self.data.get(name) is None:
                continue
            skipped = copy_matching_params(self.data[name], module)
            if skipped and report:
                self.log(f'Resume: {len(skipped)} tensors of {name} not in the pickle or shaped differently, left at init: '
                         + ', '.join(skipped[:8]) + (' ...' if len(skipped) > 8 else ''))

    def load_augment_pipe(self, augment_pipe):
        # Only a full resume continues p; from a network file without our training state (an upstream
        # pickle, a transfer source) p starts where the command line says (--p, or 0 for ADA).
        if self.full and augment_pipe is not None and self.data.get('augment_pipe') is not None:
            copy_matching_params(self.data['augment_pipe'], augment_pipe)

    def images_to_skip(self, batch_per_rank):
        """Real images of this process's stream that the resumed run has already read."""
        return int(self.state['batch_idx']) * batch_per_rank if self.full else 0

    def restore(self, phases, plugins, loss, rank, num_gpus):
        """Optimizer moments, plugin states, path-length mean, counters and this rank's RNG streams of
        a full resume; returns (cur_nimg, cur_tick, batch_idx). Call it last: nothing after it may
        draw from the RNG streams it continues."""
        if not self.full:
            return 0, 0, 0
        state = self.state
        for opt_name, opt in [('G_opt', phases[0].opt), ('D_opt', phases[-1].opt)]:
            configured = [{k: v for k, v in group.items() if k != 'params'} for group in opt.param_groups]
            try:
                opt.load_state_dict(state[opt_name])
            except (ValueError, KeyError) as e:
                self.log(f'Resume: {opt_name} state not restored ({e}); starting it fresh')
            for group, hyper in zip(opt.param_groups, configured):   # moments resume; lr / betas follow this run's config
                group.update(hyper)
        plugins.load_state(state.get('plugins', {}))
        cur_nimg, cur_tick, batch_idx = int(state['cur_nimg']), int(state['cur_tick']), int(state['batch_idx'])
        self.log(f'Resume: continuing at kimg {cur_nimg / 1000:.3f}, tick {cur_tick}, iteration {batch_idx}')
        self._restore_rng_and_loss(loss, rank, num_gpus)
        return cur_nimg, cur_tick, batch_idx

    def _restore_rng_and_loss(self, loss, rank, num_gpus):
        rank_states = self.state.get('rank_states')
        if rank_states is not None and len(rank_states) == num_gpus:
            set_rng_state(rank_states[rank]['rng'])
            loss.load_state_dict(rank_states[rank].get('loss'))
        elif rank == 0 and 'rng' in self.state:   # saved by a different number of processes
            set_rng_state(self.state['rng'])
            loss.load_state_dict(self.state.get('loss'))

def copy_matching_params(src, dst):
    """Copy parameters/buffers from src to dst where name and shape match.

    Returns the dst names left untouched (missing in src or shaped differently): with a
    weights-only pickle from another configuration (transfer learning) these are reported.
    """
    src_tensors = dict(misc.named_params_and_buffers(src))
    skipped = []
    with torch.no_grad():
        for name, tensor in misc.named_params_and_buffers(dst):
            if name in src_tensors and src_tensors[name].shape == tensor.shape:
                tensor.copy_(src_tensors[name].detach())
            else:
                skipped.append(name)
    return skipped
