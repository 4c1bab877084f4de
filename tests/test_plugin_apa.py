"""APA plugin: methods.md section 4 tests (mixing, controller, pseudo capture, shared ADA p)."""

import sys
import types

import pytest
import torch

import plugins
from plugins import apa
from torch_utils import training_stats
import dnnlib
from training.loss import Phase

def _opts(**kwargs):
    opts = plugins.default_opts()
    opts.update(aug='apa', methods=[], typed=[], ada_kimg=500,
                batch_size=64, batch_gpu=64, total_kimg=1)
    opts.update(kwargs)
    return opts

def _plugin(p=None, **kwargs):
    plugin = apa.APAPlugin(_opts(**kwargs), torch.device('cpu'))
    if p is not None:
        plugin.load_state(dict(p=p))
    return plugin

def _capture(plugin, gen_img):
    plugin.after_phase(Phase('Gmain'), dnnlib.EasyDict(gen_img=gen_img))

def test_p0_returns_real_batch_unchanged():
    plugin = _plugin(0.0)
    real = torch.randn(16, 3, 8, 8)
    _capture(plugin, torch.randn(16, 3, 8, 8))
    for phase in map(Phase, ['Dmain', 'Dreg', 'Dboth']):
        assert plugin.replace_real_batch(real, phase) is real

def test_p1_returns_exactly_the_pseudo_batch():
    plugin = _plugin(1.0)
    real, fake = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)
    _capture(plugin, fake)
    assert torch.equal(plugin.replace_real_batch(real, Phase('Dmain')), fake)
    # Not in G phases: the G loss never sees the real batch anyway.
    assert plugin.replace_real_batch(real, Phase('Gmain')) is real

def test_replaced_fraction_and_per_sample_rows():
    torch.manual_seed(0)
    plugin = _plugin(0.3)
    n = 1000
    real = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    fake = -1 - real
    _capture(plugin, fake)
    replaced = 0
    for _ in range(100):    # 1e5 samples
        out = plugin.replace_real_batch(real, Phase('Dmain'))
        is_real = (out == real).flatten(1).all(1)
        is_fake = (out == fake).flatten(1).all(1)
        assert bool((is_real ^ is_fake).all())      # each row is wholly real or wholly pseudo
        replaced += int(is_fake.sum())
    assert abs(replaced / 1e5 - 0.3) < 0.01

def test_pseudo_batch_is_matched_to_the_real_batch_size():
    plugin = _plugin(1.0)
    fake = torch.randn(4, 3, 8, 8)
    _capture(plugin, fake)
    out = plugin.replace_real_batch(torch.randn(6, 3, 8, 8), Phase('Dreg'))
    assert torch.equal(out, fake[[0, 1, 2, 3, 0, 1]])
    out = plugin.replace_real_batch(torch.randn(2, 3, 8, 8), Phase('Dreg'))
    assert torch.equal(out, fake[:2])

def test_d_real_loss_gives_no_gradient_to_G():
    torch.manual_seed(1)
    G = torch.nn.Linear(8, 3 * 4 * 4)
    D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1))
    plugin = _plugin(1.0)
    gen_img = G(torch.randn(8, 8)).view(8, 3, 4, 4)
    _capture(plugin, gen_img)
    real = plugin.replace_real_batch(torch.randn(8, 3, 4, 4), Phase('Dmain'))
    assert not real.requires_grad
    torch.nn.functional.softplus(-D(real)).mean().backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None for p in D.parameters())

def test_error_if_flags_fire_before_any_pseudo_batch():
    plugin = _plugin(1.0)
    with pytest.raises(RuntimeError, match='no Gmain fakes'):
        plugin.replace_real_batch(torch.randn(4, 3, 8, 8), Phase('Dmain'))

def test_controller_raises_p_with_the_ada_step():
    plugin = _plugin(0.0)
    step = 64 * 4 / (500 * 1000)
    state = dnnlib.EasyDict(batch_idx=4, batch_size=64)
    training_stats.report('Loss/signs/real', torch.ones(64))       # mean sign 1.0 > 0.6
    plugin.end_of_iteration(state, None)
    assert float(plugin.p) == pytest.approx(step, rel=1e-6)
    state.batch_idx = 5                                             # not an adjustment iteration
    training_stats.report('Loss/signs/real', torch.ones(64))
    plugin.end_of_iteration(state, None)
    assert float(plugin.p) == pytest.approx(step, rel=1e-6)
    state.batch_idx = 8
    training_stats.report('Loss/signs/real', -torch.ones(64))      # mean below target: back down, clamp 0
    plugin.end_of_iteration(state, None)
    assert float(plugin.p) == pytest.approx(0.0, abs=1e-9)
    state.batch_idx = 12
    training_stats.report('Loss/signs/real', -torch.ones(64))
    plugin.end_of_iteration(state, None)
    assert float(plugin.p) == 0.0

def test_fixed_p_is_not_adapted():
    plugin = _plugin(apa_fixed_p=0.25)
    assert float(plugin.p) == 0.25 and plugin.controller is None
    training_stats.report('Loss/signs/real', torch.ones(8))
    plugin.end_of_iteration(dnnlib.EasyDict(batch_idx=4, batch_size=8), None)
    assert float(plugin.p) == 0.25

class _CountingPipe(torch.nn.Module):
    calls = 0
    def __init__(self, **kwargs):
        super().__init__()
        self.register_buffer('p', torch.ones([]))
    def forward(self, img):
        type(self).calls += 1
        return img + 1

@pytest.fixture
def fake_augment(monkeypatch):
    import training
    fake = types.ModuleType('training.augment')
    fake.AugmentPipe = _CountingPipe
    fake.augpipe_specs = {'bgc': {}}
    monkeypatch.setitem(sys.modules, 'training.augment', fake)
    monkeypatch.setattr(training, 'augment', fake, raising=False)
    _CountingPipe.calls = 0
    return fake

def test_without_dataaug_the_ada_pipeline_is_never_called(fake_augment):
    plugin = _plugin(0.5)
    assert plugin.augment_pipe is None
    img = torch.randn(4, 3, 8, 8)
    for phase in ['Gmain', 'Dmain', 'Dreg']:
        assert plugin.augment_D_input(img, True, phase) is img
    assert _CountingPipe.calls == 0

def test_with_dataaug_shares_p_with_the_ada_pipeline(fake_augment):
    plugin = _plugin(with_dataaug=True)
    assert plugin.augment_pipe is not None and plugin.p is plugin.augment_pipe.p
    assert float(plugin.p) == 0.0          # starts at 0 like ADA
    img = torch.randn(4, 3, 8, 8)
    for phase in ['Gmain', 'Dmain', 'Dreg']:
        assert torch.equal(plugin.augment_D_input(img, False, phase), img + 1)
    assert _CountingPipe.calls == 3
    training_stats.report('Loss/signs/real', torch.ones(8))
    plugin.end_of_iteration(dnnlib.EasyDict(batch_idx=4, batch_size=64), None)
    assert float(plugin.augment_pipe.p) == pytest.approx(64 * 4 / 500e3, rel=1e-6)
    pset = plugins.PluginSet([apa.APAPlugin], _opts(with_dataaug=True), 'cpu')
    assert pset.augment_pipe is pset['apa'].augment_pipe
    assert apa.APAPlugin.describe(_opts(with_dataaug=True)) == 'apa-wdataaug'

def test_state_roundtrip():
    plugin = _plugin(0.37)
    state = plugin.state_for_snapshot()
    other = _plugin(0.0, ada_kimg=100)
    other.load_state(state)
    assert float(other.p) == pytest.approx(0.37)
    assert other.controller.speed_kimg == 100       # resume speed comes from this run's options

#----------------------------------------------------------------------------
# Integration: a few CPU iterations of the training loop.

@pytest.mark.slow
def test_training_loop_apa_with_ada_and_regan(tmp_path):
    from plugin_train_util import make_dataset, read_stats, tiny_config, train
    data = make_dataset(tmp_path / 'data')
    c = tiny_config(data, tmp_path / 'run', aug='apa', methods=['regan'], kimg=0.016, with_dataaug=True,
                    regan_warmup=1, regan_g=2)
    assert c.plugin_names == ['apa', 'regan'] and c.desc == 'apa-wdataaug-regan-s0.3-g2'
    result, snapshot = train(c)
    assert result.batch_idx == 4
    apa_plugin = result.plugins['apa']
    assert snapshot['augment_pipe'] is not None
    assert float(snapshot['augment_pipe'].p) == pytest.approx(snapshot['resume_state']['plugins']['apa']['p'])
    assert float(apa_plugin.p) == float(apa_plugin.augment_pipe.p)
    assert len(apa_plugin.pseudo) == 1 and apa_plugin.pseudo[0].shape == (4, 3, 16, 16)   # one round of 4
    # Re-GAN ran warm-up (it 0) then sparse (it 1, 2) then dense (it 3): masks saved, G regrowing.
    regan_state = snapshot['resume_state']['plugins']['regan']
    assert regan_state['mode'] == 'dense' and len(regan_state['masks']['kept']) > 0
    stats = read_stats(c.run_dir)
    assert 'Progress/augment' in stats and 'ReGAN/sparsity' in stats
    img = snapshot['G_ema'](torch.randn(2, 32), torch.zeros([2, 0]), noise_mode='const')
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()

@pytest.mark.slow
def test_each_D_round_gets_its_own_gmain_round_fakes(tmp_path, monkeypatch):
    """4 rounds of 4 (batch 16, batch_gpu 4), p = 1: every real is replaced. The 16 reals of the
    Dmain phase become 16 distinct fakes, those of Gmain round r in D round r; Dreg reuses them."""
    from plugin_train_util import make_dataset, tiny_config, train
    seen, made = [], []
    replace, capture = apa.APAPlugin.replace_real_batch, apa.APAPlugin.after_phase
    def recording_replace(self, real_img, phase):
        out = replace(self, real_img, phase)
        seen.append((phase, out.detach().clone()))
        return out
    def recording_capture(self, phase, ctx):
        if phase == 'Gmain':
            made.append(ctx.gen_img.detach().clone())
        return capture(self, phase, ctx)
    monkeypatch.setattr(apa.APAPlugin, 'replace_real_batch', recording_replace)
    monkeypatch.setattr(apa.APAPlugin, 'after_phase', recording_capture)
    c = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'run', aug='apa', kimg=0.016, apa_fixed_p=1.0)
    c.batch_size, c.batch_gpu = 16, 4
    train(c)
    dmain = [img for phase, img in seen if phase == 'Dmain']
    dreg = [img for phase, img in seen if phase == 'Dreg']
    assert len(made) == len(dmain) == len(dreg) == 4
    rows = torch.cat(dmain).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == 16          # no fake in two rounds of the D phase
    for r in range(4):
        assert torch.equal(dmain[r], made[r]) and torch.equal(dreg[r], made[r])

def test_validation_messages():
    with pytest.raises(ValueError, match='--apa-fixed-p'):
        apa.APAPlugin.validate('apa', [], _opts(apa_fixed_p=1.5))
    with pytest.raises(ValueError, match='--with-dataaug'):
        apa.APAPlugin.validate('apa', [], _opts(augpipe='bgc', typed=['augpipe']))
    apa.APAPlugin.validate('apa', [], _opts(augpipe='bgc', typed=['augpipe'], with_dataaug=True))
    apa.APAPlugin.validate('apa', [], _opts())       # the default pipeline, not typed: nothing to refuse
