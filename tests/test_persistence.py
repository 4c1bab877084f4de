"""torch_utils.persistence: pickles that embed their module source."""

import copy
import importlib
import inspect
import pickle
import pickletools
import sys
import textwrap

import pytest
import torch

from torch_utils import persistence

_MODULE_SRC = textwrap.dedent('''
    """A throwaway module with a persistent network (written to a temp dir by the test)."""
    import torch
    from torch_utils import misc
    from torch_utils import persistence

    SCALE = 2.0

    @persistence.persistent_class
    class TinyNet(torch.nn.Module):
        def __init__(self, in_features, out_features, cfg={}):
            super().__init__()
            self.fc = torch.nn.Linear(in_features, out_features)
            self.register_buffer('offset', torch.arange(out_features, dtype=torch.float32))
            self.cfg = dict(cfg)

        def forward(self, x):
            misc.assert_shape(x, [None, self.fc.in_features])
            return self.fc(x) * SCALE + self.offset
''')

def _forget_module(module):
    """Make the module unreachable: gone from sys.modules and persistence's caches."""
    del sys.modules[module.__name__]
    src = persistence._module_to_src_dict.pop(module)
    persistence._src_to_module_dict.pop(persistence._src_key(src), None)

@pytest.fixture
def tinynet_module(tmp_path, monkeypatch):
    name = 'persist_test_mod_' + tmp_path.name.replace('-', '_')
    (tmp_path / f'{name}.py').write_text(_MODULE_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)
    src = persistence._module_to_src_dict.pop(module, None)
    if src is not None and persistence._src_to_module_dict.get(persistence._src_key(src)) is module:
        del persistence._src_to_module_dict[persistence._src_key(src)]

#----------------------------------------------------------------------------

def test_roundtrip_after_module_is_gone(tinynet_module, tmp_path):
    torch.manual_seed(0)
    net = tinynet_module.TinyNet(3, 4, cfg=dict(a=1))
    x = torch.randn(5, 3)
    ref = net(x).detach()
    data = pickle.dumps(net)

    # Remove every trace of the defining module, including its file.
    sys.path.remove(str(tmp_path))
    (tmp_path / f'{tinynet_module.__name__}.py').unlink()
    _forget_module(tinynet_module)

    loaded = pickle.loads(data)
    module_name = type(loaded).__module__
    assert module_name.startswith('_imported_module_')
    assert type(loaded).__name__ == 'TinyNet'
    assert persistence.is_persistent(loaded)
    assert torch.equal(loaded(x), ref)
    assert loaded.cfg == {'a': 1}
    assert loaded.init_args == (3, 4) and loaded.init_kwargs == {'cfg': {'a': 1}}

    # The same embedded source maps to the same module: loading again reuses the class,
    # and re-pickling keeps the embedded source.
    again = pickle.loads(pickle.dumps(loaded))
    assert type(again) is type(loaded)
    assert torch.equal(again(x), ref)

def test_pickle_format_matches_upstream(tinynet_module):
    net = tinynet_module.TinyNet(2, 2)
    reduced = net.__reduce__()
    assert reduced[0] is persistence._reconstruct_persistent_obj
    meta = reduced[1][0]
    assert set(meta) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'TinyNet'
    assert meta['module_src'] == _MODULE_SRC
    assert '_init_kwargs' in meta['state'] and '_parameters' in meta['state']
    # The pickle refers to the reconstruct function by its public dotted name.
    ops = [arg for _op, arg, _pos in pickletools.genops(pickle.dumps(net)) if isinstance(arg, str)]
    assert 'torch_utils.persistence' in ops and '_reconstruct_persistent_obj' in ops

def test_deepcopy_and_init_kwargs(tinynet_module):
    cfg = dict(a=[1, 2])
    net = tinynet_module.TinyNet(3, 2, cfg=cfg)
    cfg['a'].append(3) # later edits by the caller must not leak into the recorded kwargs
    assert net.init_kwargs == {'cfg': {'a': [1, 2]}}
    kw = net.init_kwargs
    kw['cfg']['a'].append(99) # the property returns a copy
    assert net.init_kwargs.cfg == {'a': [1, 2]}

    clone = copy.deepcopy(net)
    assert type(clone) is type(net)
    assert clone.fc.weight is not net.fc.weight
    assert torch.equal(clone.fc.weight, net.fc.weight)
    with torch.no_grad():
        clone.fc.weight.add_(1)
    assert not torch.equal(clone.fc.weight, net.fc.weight)
    assert list(inspect.signature(type(net)).parameters) == ['in_features', 'out_features', 'cfg']
    rebuilt = type(net)(*net.init_args, **net.init_kwargs)
    assert rebuilt.fc.weight.shape == net.fc.weight.shape

def test_import_hook_patches_source(tinynet_module):
    net = tinynet_module.TinyNet(3, 3)
    x = torch.randn(2, 3)
    ref = net(x).detach()
    data = pickle.dumps(net)
    _forget_module(tinynet_module)

    seen = []
    def hook(meta):
        seen.append(meta.class_name)
        if meta.class_name == 'TinyNet':
            meta.module_src = meta.module_src.replace('SCALE = 2.0', 'SCALE = 3.0')
        return meta
    persistence.import_hook(hook)
    try:
        loaded = pickle.loads(data)
    finally:
        persistence._import_hooks.remove(hook)
    assert seen == ['TinyNet']
    # forward = fc(x) * SCALE + offset, so the patched net gives 1.5x the scaled part.
    offset = net.offset
    assert torch.allclose(loaded(x) - offset, (ref - offset) * 1.5, atol=1e-6)

def test_is_persistent(tinynet_module):
    assert persistence.is_persistent(tinynet_module.TinyNet)
    assert persistence.is_persistent(tinynet_module.TinyNet(1, 1))
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))
    assert not persistence.is_persistent({})
    # Decorating twice is a no-op.
    assert persistence.persistent_class(tinynet_module.TinyNet) is tinynet_module.TinyNet

def test_wrong_version_is_a_clear_error(tinynet_module):
    meta = tinynet_module.TinyNet(1, 1).__reduce__()[1][0]
    meta = dict(meta, version=5)
    with pytest.raises(pickle.UnpicklingError, match='version 5'):
        persistence._reconstruct_persistent_obj(meta)

def test_undecorated_subclass_pickles_as_itself(tinynet_module):
    # A subclass that is not itself persistent must not come back as its base class.
    class_name = 'SubNet'
    sub = type(class_name, (tinynet_module.TinyNet,), {'__module__': tinynet_module.__name__})
    setattr(tinynet_module, class_name, sub)
    obj = sub(2, 2)
    clone = copy.deepcopy(obj)
    assert type(clone) is sub

#----------------------------------------------------------------------------
