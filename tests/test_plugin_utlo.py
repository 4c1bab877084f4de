"""UTLO plugin: loss weighting and the unconditional low-resolution terms (methods.md section 6)."""

import copy

import numpy as np

import pytest
import torch
import torch.nn.functional as F

import dnnlib
import plugins
from plugins import utlo
from training import networks
from plugin_train_util import run_loss_phase
from training.loss import Phase

C_DIM = 3

def _nets(seed=0, res_uc=8):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=16, c_dim=C_DIM, w_dim=16, img_resolution=16, img_channels=3, res_uc=res_uc,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    D = networks.Discriminator(c_dim=C_DIM, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                               res_uc=res_uc, mapping_kwargs=dict(num_layers=1), epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D

def _opts(**kwargs):
    opts = plugins.default_opts()
    opts.update(aug='noaug', methods=['utlo'], batch_size=4, batch_gpu=4)
    opts.update(kwargs)
    return opts

def _plugin_set(**kwargs):
    return plugins.PluginSet([utlo.UTLOPlugin], _opts(**kwargs), 'cpu')

def _run_phase(G, D, pset, phase, seed=1):
    return run_loss_phase(G, D, pset, phase, torch.eye(C_DIM)[[0, 1, 2, 0]], seed=seed)

@pytest.mark.parametrize('phase', ['Gmain', 'Dmain', 'Dreg'])
def test_alpha0_without_uc_equals_base_conditional_loss(phase):
    G, D = _nets()
    ctx_base, grads_base = _run_phase(G, D, plugins.PluginSet([], {}, 'cpu'), phase)
    ctx_utlo, grads_utlo = _run_phase(G, D, _plugin_set(alpha=0.0, add_uc=False), phase)
    assert torch.equal(ctx_base.phase_loss, ctx_utlo.phase_loss)
    assert grads_base.keys() == grads_utlo.keys()
    assert all(torch.equal(grads_base[n], grads_utlo[n]) for n in grads_base)

def test_alpha1_weights_G_terms_half_half():
    G, D = _nets()
    ctx, _ = _run_phase(G, D, _plugin_set(alpha=1.0), 'Gmain')
    img_uc = ctx.gen_extra[0]
    assert img_uc.shape == (4, 3, 8, 8)
    with torch.no_grad():
        main = F.softplus(-ctx.gen_logits).mean()
        uc = F.softplus(-D(img_uc, None, uc=True)).mean()
    assert float(ctx.phase_loss) == pytest.approx(float(0.5 * main + 0.5 * uc), rel=1e-6)

def test_alpha1_weights_D_terms_half_half_and_uses_downsampled_reals():
    G, D = _nets()
    ctx, grads = _run_phase(G, D, _plugin_set(alpha=1.0), 'Dmain')
    with torch.no_grad():
        main = F.softplus(ctx.gen_logits).mean() + F.softplus(-ctx.real_logits).mean()
        uc = (F.softplus(D(ctx.gen_extra[0], None, uc=True)).mean()
              + F.softplus(-D(D.downsample_uc(ctx.real_img), None, uc=True)).mean())
    assert float(ctx.phase_loss) == pytest.approx(float(0.5 * main + 0.5 * uc), rel=1e-6)
    assert grads['out_uc.weight'].abs().sum() > 0 and grads['fromrgb_uc.weight'].abs().sum() > 0

def test_alpha3_weights():
    assert utlo.uc_weights(3.0) == (0.25, 0.75)
    G, D = _nets()
    ctx, _ = _run_phase(G, D, _plugin_set(alpha=3.0), 'Gmain')
    with torch.no_grad():
        main = F.softplus(-ctx.gen_logits).mean()
        uc = F.softplus(-D(ctx.gen_extra[0], None, uc=True)).mean()
    assert float(ctx.phase_loss) == pytest.approx(float(0.25 * main + 0.75 * uc), rel=1e-6)

def test_r1_and_path_length_only_on_the_main_branch():
    pset = _plugin_set(alpha=1.0)
    assert pset.synthesis_kwargs(Phase('Greg')) == {} and pset.synthesis_kwargs(Phase('Dreg')) == {}
    assert pset.synthesis_kwargs(Phase('Gmain')) == {'add_uc': True}
    assert pset.main_loss_weight(Phase('Dreg')) == 1.0 and pset.main_loss_weight(Phase('Greg')) == 1.0
    G, D = _nets()
    ctx_base, grads_base = _run_phase(G, D, plugins.PluginSet([], {}, 'cpu'), 'Dreg')
    ctx_utlo, grads_utlo = _run_phase(G, D, pset, 'Dreg')
    assert torch.equal(ctx_base.phase_loss, ctx_utlo.phase_loss)
    assert 'out_uc.weight' not in grads_utlo or grads_utlo['out_uc.weight'].abs().sum() == 0

def test_uc_logits_are_reported_and_leave_the_ada_signal_alone():
    from torch_utils import training_stats
    collector = training_stats.Collector(regex='Loss/(signs|scores)/.*')
    G, D = _nets()
    _run_phase(G, D, _plugin_set(alpha=1.0), 'Dmain')
    collector.update()
    names = set(collector.names())
    assert {'Loss/scores/real_uc', 'Loss/signs/real_uc', 'Loss/scores/fake_uc', 'Loss/signs/fake_uc'} <= names
    assert collector.num('Loss/signs/real') == 4        # the conditional logits only

def test_configure_and_validate():
    c = dnnlib.EasyDict(training_set_kwargs=dict(use_labels=True, resolution=16), image_snapshot_ticks=10,
                        G_kwargs=dnnlib.EasyDict(synthesis_kwargs={}), D_kwargs=dnnlib.EasyDict(architecture='resnet'))
    opts = _opts(res_uc=8)
    utlo.UTLOPlugin.configure(c, opts)
    assert c.G_kwargs.res_uc == 8 and c.D_kwargs.res_uc == 8 and opts['utlo_grid_ticks'] == 10
    with pytest.raises(ValueError, match='--cond'):
        utlo.UTLOPlugin.configure(dnnlib.EasyDict(c, training_set_kwargs=dict(use_labels=False)), _opts())
    with pytest.raises(ValueError, match='skip'):
        utlo.UTLOPlugin.configure(dnnlib.EasyDict(c, G_kwargs=dnnlib.EasyDict(synthesis_kwargs=dict(architecture='resnet'))), _opts())
    with pytest.raises(ValueError, match='resnet'):
        utlo.UTLOPlugin.configure(dnnlib.EasyDict(c, D_kwargs=dnnlib.EasyDict(architecture='skip')), _opts())
    with pytest.raises(ValueError, match='below the image resolution'):
        utlo.UTLOPlugin.configure(copy.deepcopy(c), _opts(res_uc=16))
    with pytest.raises(ValueError, match='--alpha=0'):
        utlo.UTLOPlugin.validate('noaug', ['utlo'], _opts(add_uc=False, alpha=1.0))
    with pytest.raises(ValueError, match='power of two'):
        utlo.UTLOPlugin.validate('noaug', ['utlo'], _opts(res_uc=6))
    assert utlo.UTLOPlugin.describe(_opts(res_uc=8, alpha=1.0)) == 'res-uc8-add-uc-alpha-1.0'

def test_fakes_uc_grid(tmp_path):
    G, D = _nets()
    plugin = utlo.UTLOPlugin(_opts(utlo_grid_ticks=2), 'cpu')
    ts = dnnlib.EasyDict(label_dim=C_DIM)
    plugin.setup(G, D, copy.deepcopy(G).eval(), dnnlib.EasyDict(run_dir=str(tmp_path), training_set=ts))
    tick = dnnlib.EasyDict(done=False, save_images=False, run_dir=str(tmp_path))
    plugin.on_tick(dnnlib.EasyDict(cur_nimg=2000, cur_tick=2), tick)
    plugin.on_tick(dnnlib.EasyDict(cur_nimg=3000, cur_tick=3), tick)      # tick 3: not a grid tick
    import PIL.Image
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ['fakes_uc000002.png']
    plugin.on_tick(dnnlib.EasyDict(cur_nimg=5000, cur_tick=5), dnnlib.EasyDict(tick, done=True))   # the last tick
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fakes_uc000002.png', 'fakes_uc000005.png']
    img = PIL.Image.open(tmp_path / files[0])
    assert img.size == (8 * 8, C_DIM * 8)     # 8 columns, one row per class, res_uc = 8

@pytest.mark.slow
def test_training_loop_utlo(tmp_path):
    from plugin_train_util import make_dataset, read_stats, tiny_config, train
    c = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'run', methods=['utlo'], cond=True, utlo_grid_ticks=1)
    assert c.G_kwargs.res_uc == 8 and c.D_kwargs.res_uc == 8
    result, snapshot = train(c)
    assert result.batch_idx == 3
    stats = read_stats(c.run_dir)
    for name in ['Loss/G/loss_uc', 'Loss/scores/real_uc', 'Loss/signs/fake_uc']:
        assert name in stats and all(np.isfinite(stats[name]))
    # Named by kimg like fakesNNNNNN.png (all three ticks fall in kimg 0 here).
    assert [p.name for p in tmp_path.joinpath('run').glob('fakes_uc*.png')] == ['fakes_uc000000.png']
    G = snapshot['G_ema']
    z, c1, c2 = torch.randn(2, 32), torch.eye(3)[[0, 0]], torch.eye(3)[[2, 2]]
    img1, uc1 = G(z, c1, noise_mode='const', add_uc=True)
    img2, uc2 = G(z, c2, noise_mode='const', add_uc=True)
    assert torch.equal(uc1, uc2) and not torch.equal(img1, img2)
