"""Pickles that carry their own source code.

`@persistent_class` makes instances of a class pickle together with the full source of the
module that defines it; unpickling executes that source into a fresh module, so a network
snapshot loads even after the code on disk has changed or is gone. The format is that of
stylegan2-ada-pytorch (version 6), so its network pickles load here and ours load there.

Pickle format: each persistent object reduces to `_reconstruct_persistent_obj(meta)` with
meta = dict(type='class', version=6, module_src=<source>, class_name=<name>, state=<__dict__>),
where the state holds the constructor arguments as `_init_args` / `_init_kwargs`. The embedded
source only imports `torch_utils.*`, `numpy`, `torch`, ... by their public names.
"""

import copy
import copyreg
import functools
import hashlib
import inspect
import linecache
import pickle
import sys
import types
import uuid

import dnnlib

#----------------------------------------------------------------------------

_version = 6                    # format version written and read (stylegan2-ada-pytorch's as well)
_decorators = set()             # every class made by persistent_class()
_import_hooks = []              # callables meta -> meta, applied before embedded source runs
_module_to_src_dict = dict()    # module -> the source it runs
_src_to_module_dict = dict()    # _src_key(source) -> the module running it

#----------------------------------------------------------------------------

def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source of the defining module.

    The constructor's arguments are recorded (copied before the constructor runs) and read back
    as `obj.init_args` / `obj.init_kwargs`, so `type(obj)(*obj.init_args, **obj.init_kwargs)`
    builds a fresh twin. The defining module must be imported when the decorator runs, with the
    class as one of its top-level names.
    """
    if not isinstance(orig_class, type):
        raise TypeError(f'persistent_class expects a class, got {type(orig_class).__name__}')
    if is_persistent(orig_class):
        return orig_class
    home = sys.modules.get(orig_class.__module__)
    if home is None:
        raise ValueError(f'persistent_class: module "{orig_class.__module__}" of class "{orig_class.__name__}" is not imported')

    namespace = dict(_PERSISTENT_METHODS, __module__=orig_class.__module__, __qualname__=orig_class.__qualname__,
                     __doc__=orig_class.__doc__,
                     _orig_module_src=_module_to_src(home, required=False), # None: fails only when pickled
                     _orig_class_name=orig_class.__name__)
    persistent = type(orig_class.__name__, (orig_class,), namespace)

    @functools.wraps(orig_class.__init__) # keeps the constructor's signature visible to inspect
    def __init__(self, *args, **kwargs):
        # Copied first: a constructor editing its arguments must not change the record.
        recorded = copy.deepcopy((args, kwargs))
        super(persistent, self).__init__(*args, **kwargs)
        self._init_args, self._init_kwargs = recorded

    persistent.__init__ = __init__
    _decorators.add(persistent)
    return persistent

def _init_args(self):
    return copy.deepcopy(self._init_args)

def _init_kwargs(self):
    return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

def _deepcopy(self, memo):
    # Straight from the state: keeps the class and skips looking the source up again.
    twin = type(self).__new__(type(self))
    memo[id(self)] = twin
    _set_state(twin, copy.deepcopy(self.__getstate__(), memo))
    return twin

def _reduce(self):
    cls = type(self)
    if cls not in _decorators:
        # A plain subclass of a persistent class pickles as itself, not as its persistent base.
        return copyreg.__newobj__, (cls,), self.__getstate__()
    if cls._orig_module_src is None:
        raise pickle.PicklingError(f'Cannot pickle persistent class "{cls._orig_class_name}": '
                                   f'the source of module "{cls.__module__}" is not available')
    meta = dict(type='class', version=_version, module_src=cls._orig_module_src,
                class_name=cls._orig_class_name, state=self.__getstate__())
    return _reconstruct_persistent_obj, (meta,)

_PERSISTENT_METHODS = dict(init_args=property(_init_args), init_kwargs=property(_init_kwargs),
                           __deepcopy__=_deepcopy, __reduce__=_reduce)

#----------------------------------------------------------------------------

def is_persistent(obj):
    """True for a class made by persistent_class() and for its instances."""
    if isinstance(obj, type):
        return obj in _decorators
    return type(obj) in _decorators

def import_hook(hook):
    """Register `hook(meta) -> meta`, called on every persistent object being unpickled.

    `meta` is an EasyDict with type, version, module_src, class_name and state (an EasyDict);
    a hook may edit it (patch the source, rename state keys) before anything executes. Hooks
    run in the order registered, each returning the meta the next one gets.
    """
    if not callable(hook):
        raise TypeError('import_hook expects a callable')
    _import_hooks.append(hook)

#----------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    """Unpickle one persistent object (stylegan2-ada-pytorch's pickles call this name)."""
    meta = dnnlib.EasyDict(meta, state=dnnlib.EasyDict(meta['state']))
    for hook in _import_hooks:
        patched = hook(meta)
        if patched is None:
            raise ValueError(f'persistence import hook {hook!r} returned None instead of meta')
        meta = patched
    if meta.version != _version:
        raise pickle.UnpicklingError(f'Unsupported persistent object format version {meta.version} '
                                     f'(this code reads version {_version})')
    if meta.type != 'class':
        raise pickle.UnpicklingError(f'Unsupported persistent object type "{meta.type}"')
    defined = vars(_src_to_module(meta.module_src))
    if meta.class_name not in defined:
        raise pickle.UnpicklingError(f'Embedded source does not define class "{meta.class_name}"')
    cls = persistent_class(defined[meta.class_name])
    obj = cls.__new__(cls)
    _set_state(obj, meta.state)
    return obj

def _set_state(obj, state):
    if callable(getattr(obj, '__setstate__', None)):
        obj.__setstate__(state)
    else:
        vars(obj).update(state)

#----------------------------------------------------------------------------
# Modules and their source, both ways.

def _src_key(src):
    return hashlib.sha256(src.encode('utf-8')).hexdigest()

def _module_to_src(module, required=True):
    """The source a module runs: the embedded one for modules made here, else its file."""
    if module in _module_to_src_dict:
        return _module_to_src_dict[module]
    try:
        src = inspect.getsource(module)
    except (OSError, TypeError):
        if required:
            raise
        return None
    _module_to_src_dict[module] = src
    # A module imported again under another name has the same source: point the source at
    # a module that is still imported.
    known = _src_to_module_dict.get(_src_key(src))
    if known is None or sys.modules.get(known.__name__) is not known:
        _src_to_module_dict[_src_key(src)] = module
    return src

def _src_to_module(src):
    """The module executed from `src`, created on first use; one module per distinct source."""
    key = _src_key(src)
    if key in _src_to_module_dict:
        return _src_to_module_dict[key]
    name = f'_imported_module_{uuid.uuid4().hex}'
    module = types.ModuleType(name)
    # Registered before running: the decorators inside look up both the module and its source.
    sys.modules[name] = module
    _module_to_src_dict[module] = src
    _src_to_module_dict[key] = module
    filename = f'<persistent module {name}>'
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename) # readable tracebacks
    try:
        exec(compile(src, filename, 'exec'), vars(module)) # pylint: disable=exec-used
    except BaseException:
        del sys.modules[name], _module_to_src_dict[module], _src_to_module_dict[key]
        raise
    return module

#----------------------------------------------------------------------------
