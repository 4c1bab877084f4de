"""Pickles that carry their own source code.

`@persistent_class` makes instances of a class pickle together with the full source of the
module that defines it; unpickling executes that source into a fresh module, so a network
snapshot loads even after the code on disk has changed or is gone. The format is that of
stylegan2-ada-pytorch (version 6), so its network pickles load here and ours load there.

Pickle format: each persistent object reduces to `_reconstruct_persistent_obj(meta)` with
meta = dict(type='class', version=6, module_src=<source>, class_name=<name>, state=<__dict__>).
The embedded source only imports `torch_utils.*`, `numpy`, `torch`, ... by their public names.
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

_version = 6            # Pickle format version; stylegan2-ada-pytorch writes 6 as well.
_decorators = set()     # Every class produced by persistent_class().
_import_hooks = []      # Callables meta -> meta, run before embedded source executes.
_module_to_src_dict = dict()    # module -> source it was created from / read from
_src_to_module_dict = dict()    # sha256(source) -> module executed from it

#----------------------------------------------------------------------------

def persistent_class(orig_class):
    """Class decorator: pickle instances together with the source of the defining module.

    The constructor arguments are kept (deep-copied before the constructor runs) and
    exposed as `obj.init_args` / `obj.init_kwargs`, so the object can be rebuilt from
    them, e.g. `type(obj)(*obj.init_args, **obj.init_kwargs)`.

    The defining module must be importable at decoration time and `orig_class` must be
    reachable as a top-level name in it (no nested or dynamically renamed classes).
    """
    if not isinstance(orig_class, type):
        raise TypeError(f'persistent_class expects a class, got {type(orig_class).__name__}')
    if is_persistent(orig_class):
        return orig_class
    if orig_class.__module__ not in sys.modules:
        raise ValueError(f'persistent_class: module "{orig_class.__module__}" of class "{orig_class.__name__}" is not imported')
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module, required=False) # None => error only when pickling

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        @functools.wraps(orig_class.__init__) # keeps the constructor's signature visible to inspect
        def __init__(self, *args, **kwargs):
            # Copy before the constructor runs, so in-place edits of the arguments by the
            # constructor do not leak into the recorded ones.
            init_args = copy.deepcopy(args)
            init_kwargs = copy.deepcopy(kwargs)
            super().__init__(*args, **kwargs)
            self._init_args = init_args
            self._init_kwargs = init_kwargs

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __deepcopy__(self, memo):
            # Copy the state directly: keeps the class identity and skips the source lookup.
            cls = type(self)
            obj = cls.__new__(cls)
            memo[id(self)] = obj
            _set_state(obj, copy.deepcopy(self.__getstate__(), memo))
            return obj

        def __reduce__(self):
            # An undecorated subclass of a persistent class must not be re-created as its base.
            if type(self) is not Decorator:
                return (copyreg.__newobj__, (type(self),), self.__getstate__())
            if self._orig_module_src is None:
                raise pickle.PicklingError(f'Cannot pickle persistent class "{self._orig_class_name}": '
                                           f'the source of module "{orig_class.__module__}" is not available')
            meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                        class_name=self._orig_class_name, state=self.__getstate__())
            return (_reconstruct_persistent_obj, (meta,))

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    Decorator.__doc__ = orig_class.__doc__
    _decorators.add(Decorator)
    return Decorator

#----------------------------------------------------------------------------

def is_persistent(obj):
    """True if obj is a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError: # unhashable
        pass
    return type(obj) in _decorators

#----------------------------------------------------------------------------

def import_hook(hook):
    """Register `hook(meta) -> meta`, called on every persistent object being unpickled.

    `meta` is an EasyDict with type, version, module_src, class_name and state (an EasyDict);
    a hook may edit it (e.g. patch the source or rename state keys) before anything executes.
    Hooks run in registration order; each must return the (possibly new) meta.
    """
    if not callable(hook):
        raise TypeError('import_hook expects a callable')
    _import_hooks.append(hook)

#----------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    """Unpickle one persistent object (the name stylegan2-ada-pytorch pickles call)."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        if meta is None:
            raise ValueError(f'persistence import hook {hook!r} returned None instead of meta')

    if meta.version != _version:
        raise pickle.UnpicklingError(f'Unsupported persistent object format version {meta.version} '
                                     f'(this code reads version {_version})')
    if meta.type != 'class':
        raise pickle.UnpicklingError(f'Unsupported persistent object type "{meta.type}"')

    module = _src_to_module(meta.module_src)
    if meta.class_name not in module.__dict__:
        raise pickle.UnpicklingError(f'Embedded source does not define class "{meta.class_name}"')
    decorator_class = persistent_class(module.__dict__[meta.class_name])
    obj = decorator_class.__new__(decorator_class)
    _set_state(obj, meta.state)
    return obj

def _set_state(obj, state):
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(state)
    else:
        obj.__dict__.update(state)

#----------------------------------------------------------------------------

def _module_to_src(module, required=True):
    """Source code of a module: the embedded one for modules we created, else from disk."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        try:
            src = inspect.getsource(module)
        except (OSError, TypeError):
            if required:
                raise
            return None
        _module_to_src_dict[module] = src
        # Identical source in several modules (a module re-imported under another name):
        # keep mapping to one that is still imported.
        key = _src_key(src)
        existing = _src_to_module_dict.get(key, None)
        if existing is None or sys.modules.get(existing.__name__, None) is not existing:
            _src_to_module_dict[key] = module
    return src

def _src_key(src):
    return hashlib.sha256(src.encode('utf-8')).hexdigest()

def _src_to_module(src):
    """Module executed from `src`; the same source always maps to the same module."""
    key = _src_key(src)
    module = _src_to_module_dict.get(key, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        # Register before executing: persistent_class() runs inside the source and looks
        # both the module (sys.modules) and its source (_module_to_src_dict) up.
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[key] = module
        filename = f'<persistent module {module_name}>'
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename) # readable tracebacks
        try:
            exec(compile(src, filename, 'exec'), module.__dict__) # pylint: disable=exec-used
        except BaseException:
            del sys.modules[module_name]
            del _module_to_src_dict[module]
            del _src_to_module_dict[key]
            raise
    return module

#----------------------------------------------------------------------------
