"""legacy.py: our snapshots, upstream-format pickles (converted to our classes), the safe format,
damaged files."""

import copy
import gzip
import inspect
import json
import os
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

import dnnlib
import legacy
from torch_utils import persistence

networks = pytest.importorskip('training.networks')

G_KWARGS = dict(z_dim=8, w_dim=8, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
D_KWARGS = dict(img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
TRAINING_SET_KWARGS = dict(class_name='training.dataset.ImageFolderDataset', path='/data/x.zip',
                           use_labels=True, max_size=10, xflip=False, resolution=16)

@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # These networks are tiny: with a shared, busy CPU, intra-op threads only add contention.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

def _snapshot(module_ns=networks, c_dim=2, seed=0, augment_ns=None):
    """A snapshot dict like the training loop writes, with tiny networks from `module_ns`
    (and an AugmentPipe from `augment_ns`, if given)."""
    torch.manual_seed(seed)
    G = module_ns.Generator(c_dim=c_dim, **G_KWARGS)
    D = module_ns.Discriminator(c_dim=c_dim, **D_KWARGS)
    with torch.no_grad(): # non-trivial buffers, so that copying them is tested too
        G.mapping.w_avg.normal_()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    augment_pipe = None
    if augment_ns is not None:
        augment_pipe = augment_ns.AugmentPipe(xflip=1, rotate90=1, xint=1, brightness=1, imgfilter_bands=[1, 0.5, 1, 1])
        augment_pipe.p.fill_(0.3)
        augment_pipe = augment_pipe.eval().requires_grad_(False)
    return dict(G=G.eval().requires_grad_(False), D=D.eval().requires_grad_(False), G_ema=G_ema,
                augment_pipe=augment_pipe, training_set_kwargs=dict(TRAINING_SET_KWARGS))

def _inputs(c_dim=2, n=3):
    gen = torch.Generator().manual_seed(123)
    z = torch.randn(n, G_KWARGS['z_dim'], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else torch.zeros(n, 0)
    img = torch.randn(n, 3, 16, 16, generator=gen)
    return z, c, img

def _outputs(data, c_dim=2):
    z, c, img = _inputs(c_dim)
    with torch.no_grad():
        return data['G_ema'](z, c, noise_mode='const'), data['D'](img, c)

def _write(tmp_path, data, name='snap.pkl'):
    path = tmp_path / name
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)

def _forget_source(src):
    """Drop the module executed from `src`, as if the pickle were loaded in a fresh process."""
    key = persistence._src_key(src)
    module = persistence._src_to_module_dict.pop(key)
    persistence._module_to_src_dict.pop(module, None)
    sys.modules.pop(module.__name__, None)

#----------------------------------------------------------------------------

def test_our_snapshot_to_safe_format_gives_identical_outputs(tmp_path, capsys):
    augment = pytest.importorskip('training.augment')
    data = _snapshot(augment_ns=augment)
    data['resume_state'] = dict(cur_nimg=1000)
    ref_img, ref_logits = _outputs(data)
    pkl = _write(tmp_path, data)

    loaded = legacy.load_network(pkl)
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and 'execute code' in line[0] and 'safetensors' in line[0]
    assert type(loaded['G_ema']) is networks.Generator and type(loaded['D']) is networks.Discriminator
    assert type(loaded['augment_pipe']) is augment.AugmentPipe and loaded['resume_state'] == dict(cur_nimg=1000)
    img, logits = _outputs(loaded)
    assert torch.equal(img, ref_img) and torch.equal(logits, ref_logits)

    st_path, json_path = legacy.export_safe(loaded, str(tmp_path / 'model'))
    assert st_path.endswith('model.safetensors') and json_path.endswith('model.json')
    meta = json.loads(open(json_path).read())
    assert meta['networks']['G_ema']['class_name'] == 'training.networks.Generator'
    assert meta['networks']['G_ema']['submodules'] == []

    for entry in (st_path, json_path):
        safe = legacy.load_network(entry, safe=True)
        assert type(safe['G_ema']) is networks.Generator
        img, logits = _outputs(safe)
        assert torch.equal(img, ref_img) and torch.equal(logits, ref_logits)
        assert safe['training_set_kwargs'] == TRAINING_SET_KWARGS
        assert isinstance(safe['training_set_kwargs'], dnnlib.EasyDict)
        assert safe['G_ema'].init_kwargs == loaded['G_ema'].init_kwargs
        assert not safe['G_ema'].training and not any(p.requires_grad for p in safe['G_ema'].parameters())
        for name, value in loaded['G'].state_dict().items():
            assert torch.equal(safe['G'].state_dict()[name], value), name
        pipe = safe['augment_pipe']
        assert type(pipe) is augment.AugmentPipe and float(pipe.p) == pytest.approx(0.3)
        assert pipe.init_kwargs == dict(xflip=1, rotate90=1, xint=1, brightness=1, imgfilter_bands=[1, 0.5, 1, 1])
    assert capsys.readouterr().out == '' # the safe format prints no pickle warning

    # The training loop's path: an open file goes through load_network_pkl.
    for entry in (st_path, json_path):
        with dnnlib.util.open_url(entry) as f:
            via_pkl_api = legacy.load_network_pkl(f)
        assert torch.equal(_outputs(via_pkl_api)[0], ref_img)

def test_safe_format_keeps_swapped_submodules(tmp_path):
    data = _snapshot()
    G_ema = data['G_ema']
    # Plugin-style changes: the class embedding built with other arguments than the mapping
    # network would use, a layer rebuilt with other arguments, an added module.
    G_ema.mapping.embed = networks.FullyConnectedLayer(2, 8, activation='lrelu', lr_multiplier=0.5, bias_init=1)
    G_ema.mapping.fc1 = networks.FullyConnectedLayer(8, 8, activation='lrelu', lr_multiplier=0.01) # as built: no entry
    G_ema.mapping.extra = networks.MinibatchStdLayer(group_size=2) # a module the constructor never builds
    G_ema.synthesis.b16.torgb = networks.ToRGBLayer(8, 3, w_dim=8, kernel_size=1, conv_clamp=64)
    data['D'].b4.mbstd = None # ... a submodule slot set to None, one deleted
    del data['D'].b4.out
    ref_img = _outputs(dict(data, D=_snapshot()['D']))[0]
    paths = legacy.export_safe(data, str(tmp_path / 'swapped.safetensors'))
    meta = json.loads(open(paths[1]).read())
    swaps = {s['path']: s for s in meta['networks']['G_ema']['submodules']}
    assert set(swaps) == {'mapping.embed', 'mapping.extra', 'synthesis.b16.torgb'}
    assert swaps['mapping.extra']['class_name'] == 'training.networks.MinibatchStdLayer'
    assert swaps['mapping.embed']['init_kwargs']['lr_multiplier'] == 0.5
    assert meta['networks']['D']['submodules'] == [dict(path='b4.mbstd', class_name=None),
                                                   dict(path='b4.out', class_name=None, deleted=True)]

    safe = legacy.load_network(paths[0], safe=True)
    assert safe['G_ema'].mapping.embed.init_kwargs.lr_multiplier == 0.5
    assert safe['G_ema'].synthesis.b16.torgb.init_kwargs.conv_clamp == 64
    assert safe['D'].b4.mbstd is None and 'mbstd' in safe['D'].b4._modules and not hasattr(safe['D'].b4, 'out')
    assert type(safe['G_ema'].mapping.extra) is networks.MinibatchStdLayer
    z, c, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(safe['G_ema'](z, c, noise_mode='const'), ref_img)

def test_safe_loader_only_builds_our_classes(tmp_path):
    st_path, json_path = legacy.export_safe(_snapshot(), str(tmp_path / 'm'))
    meta = json.loads(open(json_path).read())
    for bad in ['os.system', 'torch.nn.Linear', 'training.networks.torch.nn.Linear', 'training.networks.np.save']:
        meta['networks']['G']['class_name'] = bad
        with open(json_path, 'w') as f:
            json.dump(meta, f)
        with pytest.raises(legacy.InvalidSnapshotError, match='class'):
            legacy.load_network(st_path, safe=True)

def test_force_fp16(tmp_path):
    data = legacy.load_network(_write(tmp_path, _snapshot()), force_fp16=True, verbose=False)
    assert data['G_ema'].init_kwargs.synthesis_kwargs['num_fp16_res'] == 4
    assert data['G_ema'].init_kwargs.synthesis_kwargs['conv_clamp'] == 256
    assert data['D'].init_kwargs.num_fp16_res == 4
    # On the CPU fp16 layers run in fp32, so with clamping far away the outputs agree.
    ref_img, ref_logits = _outputs(_snapshot())
    img, logits = _outputs(data)
    assert torch.allclose(img, ref_img, atol=1e-5) and torch.allclose(logits, ref_logits, atol=1e-5)

#----------------------------------------------------------------------------
# Upstream-format pickles.

_UPSTREAM_SRC = textwrap.dedent('''
    """A network module shaped like those embedded in stylegan2-ada-pytorch pickles.

    Upstream's embedded networks.py and augment.py re-run against our torch_utils and dnnlib;
    this stand-in calls every name and keyword they use, so renaming or deleting one fails here.
    """
    import numpy as np
    import torch
    from torch_utils import misc
    from torch_utils import persistence
    from torch_utils import training_stats
    from torch_utils.ops import conv2d_resample
    from torch_utils.ops import upfirdn2d
    from torch_utils.ops import bias_act
    from torch_utils.ops import fma
    from torch_utils.ops import conv2d_gradfix
    from torch_utils.ops import grid_sample_gradfix

    @misc.profiled_function
    def scale_and_shift(x, w, b):
        return fma.fma(x, w, b)

    @persistence.persistent_class
    class TinyUpstreamNet(torch.nn.Module):
        def __init__(self, channels, resolution, activation='lrelu'):
            super().__init__()
            self.channels = channels
            self.resolution = resolution
            self.activation = activation
            self.act_gain = bias_act.activation_funcs[activation].def_gain
            self.weight = torch.nn.Parameter(torch.randn([channels, channels, 3, 3]))
            self.bias = torch.nn.Parameter(torch.randn([channels]))
            self.register_buffer('resample_filter', upfirdn2d.setup_filter([1, 3, 3, 1]))
            self.register_buffer('Hz_geom', upfirdn2d.setup_filter(np.array([0.1, 0.4, 0.4, 0.1]) * 2))

        def forward(self, x):
            misc.assert_shape(x, [None, self.channels, self.resolution, self.resolution])
            with misc.suppress_tracer_warnings(): # upstream: group sizes of the minibatch-std layer
                n = int(torch.min(torch.as_tensor(2), torch.as_tensor(x.shape[0])))
            # Layers (networks.py): conv with resampling, fused bias + activation, modulated conv.
            y = conv2d_resample.conv2d_resample(x=x, w=self.weight, f=self.resample_filter, down=2, padding=1)
            y = bias_act.bias_act(y, self.bias, act=self.activation, gain=self.act_gain, clamp=256)
            y = conv2d_resample.conv2d_resample(x=y, w=self.weight.to(y.dtype), f=self.resample_filter, up=2,
                                                padding=1, flip_weight=False)
            grouped = y[:n].reshape(1, -1, *y.shape[2:])
            w = self.weight.repeat(n, 1, 1, 1)
            grouped = conv2d_resample.conv2d_resample(x=grouped, w=w, f=None, padding=1, groups=n, flip_weight=True)
            y = torch.cat([grouped.reshape(n, -1, *y.shape[2:]), y[n:]])
            img = upfirdn2d.upsample2d(y, self.resample_filter)
            img = upfirdn2d.downsample2d(img, self.resample_filter)
            img = upfirdn2d.filter2d(img, self.resample_filter)
            # Augmentation (augment.py): padded resampling, grid_sample, grouped conv, constants.
            img = upfirdn2d.upsample2d(x=img, f=self.Hz_geom, up=2)
            img = upfirdn2d.downsample2d(x=img, f=self.Hz_geom, down=2, padding=-2, flip_filter=True)
            theta = misc.constant(np.array([[[0.9, 0.1, 0], [-0.1, 0.9, 0]]]), device=img.device).repeat(img.shape[0], 1, 1)
            grid = torch.nn.functional.affine_grid(theta, list(img.shape), align_corners=False)
            img = grid_sample_gradfix.grid_sample(img, grid)
            kernel = misc.constant([[[[0.25, 0.5, 0.25]]]], device=img.device).repeat(img.shape[1], 1, 1, 1)
            img = conv2d_gradfix.conv2d(input=img, weight=kernel, padding=[0, 1], groups=img.shape[1])
            training_stats.report('stand_in/mean', img)
            return scale_and_shift(img, misc.constant(0.5), misc.constant(np.float32(1)))
''')

def test_upstream_format_pickle_loads_and_runs(tmp_path):
    module = persistence._src_to_module(_UPSTREAM_SRC)
    torch.manual_seed(1)
    net = module.TinyUpstreamNet(channels=4, resolution=8)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = net(x)
    assert ref.shape == (2, 4, 6, 6)
    pkl = _write(tmp_path, dict(G_ema=net, training_set_kwargs=None))
    # Upstream pickles call this function by name with this exact meta.
    assert b'_reconstruct_persistent_obj' in open(pkl, 'rb').read()
    _forget_source(_UPSTREAM_SRC)

    data = legacy.load_network(pkl, verbose=False)
    assert set(['G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs']) <= set(data)
    assert data['G'] is None and data['D'] is None and data['augment_pipe'] is None
    loaded = data['G_ema']
    assert type(loaded).__module__.startswith('_imported_module_') # the embedded source ran
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)

def test_upstream_generator_converts_to_our_classes_with_identical_outputs(tmp_path, capsys):
    # stylegan2-ada-pytorch's networks.py is not available here; our networks.py has the same
    # class names, constructor keywords and tensor names, so running its source as an
    # embedded module reproduces what an upstream pickle holds.
    augment = pytest.importorskip('training.augment')
    src = inspect.getsource(networks) + '\n# embedded copy\n'
    aug_src = inspect.getsource(augment) + '\n# embedded copy\n'
    upstream = persistence._src_to_module(src)
    upstream_aug = persistence._src_to_module(aug_src)
    data = _snapshot(module_ns=upstream, c_dim=2, augment_ns=upstream_aug)
    assert type(data['G_ema']) is upstream.Generator
    ref_img, ref_logits = _outputs(data)
    pkl = _write(tmp_path, data)
    _forget_source(src)
    _forget_source(aug_src)

    rng = torch.random.get_rng_state()
    loaded = legacy.load_network(pkl, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), rng)    # rebuilding drew nothing from the caller's RNG
    assert 'kept as pickled' not in capsys.readouterr().out
    for key, cls in [('G', networks.Generator), ('G_ema', networks.Generator), ('D', networks.Discriminator),
                     ('augment_pipe', augment.AugmentPipe)]:
        assert type(loaded[key]) is cls, key
        assert not loaded[key].training and not any(p.requires_grad for p in loaded[key].parameters())
    img, logits = _outputs(loaded)
    assert torch.equal(img, ref_img) and torch.equal(logits, ref_logits)
    assert torch.equal(loaded['G_ema'].mapping.w_avg, data['G_ema'].mapping.w_avg)
    assert float(loaded['augment_pipe'].p) == pytest.approx(0.3)
    assert loaded['augment_pipe'].imgfilter_bands == [1, 0.5, 1, 1]

    # ... and from there into the safe format.
    paths = legacy.export_safe(loaded, str(tmp_path / 'converted'))
    assert torch.equal(_outputs(legacy.load_network(paths[0], safe=True))[0], ref_img)

def test_unmappable_network_is_kept_and_reported(tmp_path, capsys):
    src = inspect.getsource(networks) + '\n# embedded copy 2\n'
    upstream = persistence._src_to_module(src)
    data = _snapshot(module_ns=upstream, c_dim=0)
    data['G_ema'].register_buffer('extra_stat', torch.ones(3)) # something our class does not have
    pkl = _write(tmp_path, data)
    _forget_source(src)
    loaded = legacy.load_network(pkl, verbose=False)
    out = capsys.readouterr().out
    assert 'G_ema (Generator) kept as pickled' in out and 'extra_stat' in out
    assert type(loaded['G_ema']) is not networks.Generator
    assert type(loaded['G']) is networks.Generator

#----------------------------------------------------------------------------
# Refusals and damaged files.

def test_safe_mode_refuses_pickles(tmp_path):
    pkl = _write(tmp_path, _snapshot())
    with pytest.raises(legacy.UnsafeFormatError, match='pickle') as info:
        legacy.load_network(pkl, safe=True)
    assert 'legacy.py --source' in str(info.value)

def test_truncated_and_corrupted_snapshots(tmp_path):
    pkl = _write(tmp_path, _snapshot())
    raw = open(pkl, 'rb').read()
    for name, content in [('trunc.pkl', raw[:len(raw) // 2]), ('trunc2.pkl', raw[:20]),
                          ('garbage.pkl', bytes(range(256)) * 4), ('empty.pkl', b'')]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(legacy.InvalidSnapshotError) as info:
            legacy.load_network(str(path), verbose=False)
        msg = str(info.value)
        assert msg.startswith(f'{path} is not a valid network snapshot (truncated or corrupted): '), msg

    st_path, _json_path = legacy.export_safe(_snapshot(), str(tmp_path / 'm'))
    data = open(st_path, 'rb').read()
    with open(st_path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(legacy.InvalidSnapshotError, match='not a valid network snapshot'):
        legacy.load_network(st_path, safe=True)

def test_pickle_of_something_else(tmp_path):
    with pytest.raises(legacy.InvalidSnapshotError, match='expected a dict'):
        legacy.load_network(_write(tmp_path, [1, 2, 3]), verbose=False)
    with pytest.raises(legacy.InvalidSnapshotError, match='none of G, D, G_ema'):
        legacy.load_network(_write(tmp_path, dict(a=1)), verbose=False)

def test_cli_export(tmp_path):
    from click.testing import CliRunner
    pkl = _write(tmp_path, _snapshot())
    result = CliRunner().invoke(legacy.convert_network, ['--source', pkl, '--dest', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    assert (tmp_path / 'out.safetensors').exists() and (tmp_path / 'out.json').exists()
    result = CliRunner().invoke(legacy.convert_network, ['--source', str(tmp_path / 'out.json'), '--dest', str(tmp_path / 'back.pkl')])
    assert result.exit_code == 0, result.output
    back = legacy.load_network(str(tmp_path / 'back.pkl'), verbose=False)
    assert torch.equal(_outputs(back)[0], _outputs(_snapshot())[0])

#----------------------------------------------------------------------------

def test_safe_file_with_an_unexpected_keyword_is_not_a_valid_network_file(tmp_path):
    st_path, json_path = legacy.export_safe(_snapshot(), str(tmp_path / 'm'))
    meta = json.loads(open(json_path).read())
    meta['networks']['G']['init_kwargs']['hand_edited'] = 1
    with open(json_path, 'w') as f:
        json.dump(meta, f)
    with pytest.raises(legacy.InvalidSnapshotError) as info:
        legacy.load_network(st_path, verbose=False)
    msg = str(info.value)
    assert msg.startswith(f'{json_path}: not a valid network file: training.networks.Generator cannot be built')
    assert 'hand_edited' in msg

def test_safe_export_is_readable_like_other_files(tmp_path):
    import os
    st_path, json_path = legacy.export_safe(_snapshot(), str(tmp_path / 'm'))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(st_path).st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(st_path).st_mode & 0o777 == os.stat(json_path).st_mode & 0o777

@pytest.mark.parametrize('spelling', [['--force-fp16=true'], ['--force-fp16'], ['--force-fp16', 'True']])
def test_cli_force_fp16_takes_upstreams_bool(tmp_path, spelling):
    from click.testing import CliRunner
    pkl = _write(tmp_path, _snapshot())
    result = CliRunner().invoke(legacy.convert_network, ['--source', pkl, '--dest', str(tmp_path / 'fp16.pkl'), *spelling])
    assert result.exit_code == 0, result.output
    assert legacy.load_network(str(tmp_path / 'fp16.pkl'), verbose=False)['G_ema'].init_kwargs.synthesis_kwargs['num_fp16_res'] == 4
    result = CliRunner().invoke(legacy.convert_network, ['--source', pkl, '--dest', str(tmp_path / 'fp32.pkl'), '--force-fp16=false'])
    assert result.exit_code == 0, result.output
    assert legacy.load_network(str(tmp_path / 'fp32.pkl'), verbose=False)['G_ema'].init_kwargs.synthesis_kwargs.get('num_fp16_res', 0) == 0

def test_cli_refuses_a_tensorflow_pickle_in_one_line(tmp_path):
    from click.testing import CliRunner
    tf_pkl = tmp_path / 'stylegan2-cat-config-f.pkl'
    tf_pkl.write_bytes(b'\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.')  # what a TF pickle refers to
    result = CliRunner().invoke(legacy.convert_network, ['--source', str(tf_pkl), '--dest', str(tmp_path / 'x.pkl')])
    assert result.exit_code == 1 and 'TensorFlow network pickle' in result.output and 'Traceback' not in result.output
    assert result.output.count('Error:') == 1 and not (tmp_path / 'x.pkl').exists()

#----------------------------------------------------------------------------
# A snapshot written before the provenance rewrite (issue 15).

PRE_REWRITE = os.path.join(os.path.dirname(__file__), 'data', 'pre_rewrite_snapshot.pkl.gz')
PRE_REWRITE_OUTPUTS = os.path.join(os.path.dirname(__file__), 'data', 'pre_rewrite_outputs.npz')

def _pre_rewrite_pickle(tmp_path):
    path = tmp_path / 'pre_rewrite.pkl'
    with gzip.open(PRE_REWRITE, 'rb') as f:
        path.write_bytes(f.read())
    return str(path)

def _check_pre_rewrite_outputs(data):
    ref = np.load(PRE_REWRITE_OUTPUTS)
    z, c = torch.from_numpy(ref['z']), torch.from_numpy(ref['c'])
    with torch.no_grad():
        img = data['G_ema'](z, c, noise_mode='const')
        logits = data['D'](img, c)
    assert float((img - torch.from_numpy(ref['img'])).abs().max()) <= 1e-6
    assert float((logits - torch.from_numpy(ref['logits'])).abs().max()) <= 1e-6
    torch.manual_seed(7)    # the augment pipe draws from the global generator
    with torch.no_grad():
        augmented = data['augment_pipe'](torch.from_numpy(ref['img']))
    assert float((augmented - torch.from_numpy(ref['aug'])).abs().max()) <= 1e-6

def test_pre_rewrite_snapshot_runs_its_own_code(tmp_path):
    """Unpickled as is, the snapshot runs the network source embedded in it (the code of 20e1b98)
    against today's torch_utils and gives the numbers that code wrote down."""
    with open(_pre_rewrite_pickle(tmp_path), 'rb') as f:
        data = pickle.load(f)
    assert 'def modulated_conv2d' in type(data['G_ema'])._orig_module_src
    _check_pre_rewrite_outputs(data)

def test_pre_rewrite_snapshot_loads_into_todays_classes(tmp_path, capsys):
    """load_network rebuilds the old snapshot as today's classes (names and shapes unchanged, so
    every tensor maps), and today's code computes the same images and D logits."""
    with open(_pre_rewrite_pickle(tmp_path), 'rb') as f:
        old = pickle.load(f)
    data = legacy.load_network(_pre_rewrite_pickle(tmp_path), verbose=False)
    ours = {'G': networks.Generator, 'D': networks.Discriminator, 'G_ema': networks.Generator}
    for key, cls in ours.items():
        assert type(data[key]) is cls
        new_state = {k: tuple(v.shape) for k, v in data[key].state_dict().items()}
        assert new_state == {k: tuple(v.shape) for k, v in old[key].state_dict().items()}
        for name, tensor in old[key].state_dict().items():
            assert torch.equal(data[key].state_dict()[name], tensor), (key, name)
    from training import augment
    assert type(data['augment_pipe']) is augment.AugmentPipe
    assert ({k: tuple(v.shape) for k, v in data['augment_pipe'].state_dict().items()} ==
            {k: tuple(v.shape) for k, v in old['augment_pipe'].state_dict().items()})
    _check_pre_rewrite_outputs(data)
