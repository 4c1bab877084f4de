"""Re-GAN plugin: methods.md section 7 tests (masks, exact counts, schedule, regrowth, D untouched)."""

import copy

import pytest
import torch

import dnnlib
import plugins
from plugins import regan
from training.loss import Phase

def _opts(**kwargs):
    opts = plugins.default_opts()
    opts.update(aug='noaug', methods=['regan'], batch_size=4, batch_gpu=4)
    opts.update(kwargs)
    return opts

class FakeG(torch.nn.Module):
    """Parameter names shaped like the real G: mapping FC, synthesis conv, torgb, noise strength."""
    def __init__(self):
        super().__init__()
        self.mapping = torch.nn.ModuleDict({'fc0': torch.nn.Linear(8, 8)})
        self.synthesis = torch.nn.ModuleDict({'b8': torch.nn.ModuleDict({
            'conv1': torch.nn.Conv2d(4, 4, 3), 'torgb': torch.nn.Conv2d(4, 3, 1)})})
        self.synthesis.b8.conv1.register_parameter('noise_strength', torch.nn.Parameter(torch.zeros([])))
        self.targets = {n: torch.randn_like(p) for n, p in self.named_parameters()}

    def loss(self):
        return sum(((p - self.targets[n]) ** 2).sum() for n, p in self.named_parameters())

def _setup(seed=0, **kwargs):
    torch.manual_seed(seed)
    G = FakeG()
    G_ema = copy.deepcopy(G)
    plugin = regan.ReGANPlugin(_opts(**kwargs), 'cpu')
    plugin.setup(G, None, G_ema, dnnlib.EasyDict())
    return plugin, G, G_ema

def _state(G, batch_idx, lr=1.0, D=None):
    phases = [dnnlib.EasyDict(name=Phase('Gmain'), module=G, opt=torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99)),
                              interval=1, lr=lr)]
    if D is not None:
        phases.append(dnnlib.EasyDict(name=Phase('Dmain'), module=D, opt=torch.optim.Adam(D.parameters(), lr=lr), interval=1, lr=lr))
    return dnnlib.EasyDict(batch_idx=batch_idx, cur_nimg=batch_idx * 4, batch_size=4, phases=phases)

def _g_step(plugin, G, G_ema, opt):
    opt.zero_grad(set_to_none=True)
    G.loss().backward()
    plugin.after_backward(Phase('Gmain'), G)
    grads = {n: p.grad.clone() for n, p in G.named_parameters()}
    opt.step()
    plugin.after_step(Phase('Gmain'), G)
    plugin.before_ema(G, G_ema)
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.copy_(p.lerp(p_ema, 0.5))
    return grads

def test_fresh_masks_keep_everything_and_torgb_is_excluded():
    plugin, G, _ = _setup()
    assert set(plugin.masks) == {'mapping.fc0.weight', 'mapping.fc0.bias', 'synthesis.b8.conv1.weight',
                                 'synthesis.b8.conv1.bias', 'synthesis.b8.conv1.noise_strength'}
    assert all(bool(m.all()) for m in plugin.masks.values()) and not plugin.masks.any_pruned()
    plugin2, _, _ = _setup(regan_skip_bias=True)
    assert set(plugin2.masks) == {'mapping.fc0.weight', 'synthesis.b8.conv1.weight'}

def test_schedule_warmup2_g3():
    got = [regan.schedule(i, 2, 3) for i in range(14)]
    W, S, D = (regan.WARMUP, 1.0), (regan.SPARSE, 1.0), (regan.DENSE, 0.1)
    assert got == [W, W, S, S, S, D, D, D, S, S, S, D, D, D]
    ref = [regan.schedule(i, 2, 3, ref_extra_sparse_iter=True) for i in range(12)]
    assert ref == [W, W, S, S, S, S, D, D, D, S, S, S]

def test_schedule_sets_g_lr_and_leaves_D_alone():
    plugin, G, _ = _setup(regan_warmup=2, regan_g=3)
    D = torch.nn.Linear(2, 2)
    lrs = []
    for it in range(11):
        state = _state(G, it, lr=0.002, D=D)
        plugin.on_iteration_start(state)
        lrs.append(state.phases[0].opt.param_groups[0]['lr'] / 0.002)
        assert state.phases[1].opt.param_groups[0]['lr'] == 0.002
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 1, 1, 1])

def test_sparse_step_zeroes_pruned_in_G_and_G_ema_and_grads():
    plugin, G, G_ema = _setup(regan_sparsity=0.3, regan_warmup=0, regan_g=3)
    torgb_before = G.synthesis.b8.torgb.weight.detach().clone()
    state = _state(G, 0)
    plugin.on_iteration_start(state)
    assert plugin.mode == regan.SPARSE
    w = dict(G.named_parameters())
    counts = plugin.masks.pruned_counts()
    assert counts['mapping.fc0.weight'] == 19   # floor(0.3 * 63) + 1 of 64
    assert counts['synthesis.b8.conv1.weight'] == 43   # floor(0.3 * 143) + 1 of 144
    grads = _g_step(plugin, G, G_ema, state.phases[0].opt)
    w_ema = dict(G_ema.named_parameters())
    for name, kept in plugin.masks.items():
        assert bool((w[name][~kept] == 0).all()) and bool((w_ema[name][~kept] == 0).all())
        assert bool((grads[name][~kept] == 0).all())
        assert bool((w[name][kept] != 0).all())
    # torgb: updated by the optimizer but never masked.
    assert not torch.equal(G.synthesis.b8.torgb.weight, torgb_before)
    assert bool((G.synthesis.b8.torgb.weight != 0).all())

def test_first_dense_step_regrows():
    plugin, G, G_ema = _setup(regan_sparsity=0.3, regan_warmup=0, regan_g=1)
    state = _state(G, 0)
    plugin.on_iteration_start(state)
    _g_step(plugin, G, G_ema, state.phases[0].opt)
    pruned = {n: ~m for n, m in plugin.masks.items()}
    state.batch_idx = 1
    plugin.on_iteration_start(state)
    assert plugin.mode == regan.DENSE
    grads = _g_step(plugin, G, G_ema, state.phases[0].opt)
    w = dict(G.named_parameters())
    for name, mask in pruned.items():
        if mask.any():
            assert bool((grads[name][mask] != 0).all())
            assert bool((w[name][mask] != 0).all())

def test_phase_start_refresh_keeps_masks_within_a_phase():
    plugin, G, G_ema = _setup(regan_sparsity=0.3, regan_warmup=0, regan_g=3, regan_refresh='phase_start')
    state = _state(G, 0)
    plugin.on_iteration_start(state)
    first = {n: m.clone() for n, m in plugin.masks.items()}
    _g_step(plugin, G, G_ema, state.phases[0].opt)
    with torch.no_grad():      # shrink the kept weights below the threshold
        G.mapping.fc0.weight[first['mapping.fc0.weight']] *= 1e-6
    state.batch_idx = 1
    plugin.on_iteration_start(state)
    assert all(torch.equal(first[n], plugin.masks[n]) for n in first)

def test_any_pruned_follows_mask_changes_without_rereading_masks():
    """any_pruned() is asked every iteration with phase_start; it is cached, and every way the
    masks change (fresh masks, a refresh, a resumed state) invalidates the cache."""
    plugin, G, _ = _setup(regan_sparsity=0.3, regan_warmup=0, regan_g=3, regan_refresh='phase_start')
    assert not plugin.masks.any_pruned()
    plugin.on_iteration_start(_state(G, 0))
    assert plugin.masks.any_pruned()
    for m in plugin.masks.values():    # not a supported way to change masks: shows the value is cached
        m.fill_(True)
    assert plugin.masks.any_pruned()
    fresh, _, _ = _setup(regan_warmup=0)
    plugin.load_state(fresh.state_for_snapshot())
    assert not plugin.masks.any_pruned()

def test_D_is_never_masked():
    plugin, G, _ = _setup(regan_warmup=0)
    plugin.on_iteration_start(_state(G, 0))
    D = torch.nn.Linear(4, 4)
    D(torch.randn(2, 4)).square().sum().backward()
    before = [p.detach().clone() for p in D.parameters()] + [p.grad.clone() for p in D.parameters()]
    for phase in map(Phase, ['Dmain', 'Dreg', 'Dboth']):
        plugin.after_backward(phase, D)
        plugin.after_step(phase, D)
    after = [p.detach() for p in D.parameters()] + [p.grad for p in D.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))

def test_stats_and_macs_estimate():
    plugin, G, _ = _setup(regan_sparsity=0.3, regan_warmup=0, regan_skip_bias=True)
    plugin.on_iteration_start(_state(G, 0))
    per_tensor, overall, macs, frac = plugin.sparsity_stats()
    assert per_tensor['mapping.fc0.weight'] == pytest.approx(19 / 64)
    assert overall == pytest.approx((19 + 43) / (64 + 144))
    assert macs == 19 * 1 + 43 * 64            # conv kernel entries are used 8x8 times per image
    assert frac == pytest.approx(macs / (64 + 144 * 64))
    plugin.report_stats()

def test_state_roundtrip():
    plugin, G, _ = _setup(regan_warmup=0)
    plugin.on_iteration_start(_state(G, 0))
    state = copy.deepcopy(plugin.state_for_snapshot())
    other, _, _ = _setup(seed=1, regan_warmup=0)
    other.load_state(state)
    assert other.mode == regan.SPARSE
    assert all(torch.equal(other.masks[n], plugin.masks[n]) for n in plugin.masks)
    assert describe_ok()

def describe_ok():
    return regan.ReGANPlugin.describe(_opts(regan_sparsity=0.3, regan_g=5000)) == 'regan-s0.3-g5000'

def test_include_regex_and_kimg_aliases():
    plugin, _, _ = _setup(regan_include=r'^mapping\.')
    assert set(plugin.masks) == {'mapping.fc0.weight', 'mapping.fc0.bias'}
    opts = _opts(batch_size=32, regan_g_kimg=160.0, regan_warmup_kimg=320.0)
    assert regan.iterations(opts, 'g') == 5000 and regan.iterations(opts, 'warmup') == 10000
    assert regan.ReGANPlugin.describe(opts) == 'regan-s0.3-g5000'

def test_validation_messages():
    with pytest.raises(ValueError, match='--regan-sparsity'):
        regan.ReGANPlugin.validate('noaug', ['regan'], _opts(regan_sparsity=1.5))
    with pytest.raises(ValueError, match='--regan-refresh'):
        regan.ReGANPlugin.validate('noaug', ['regan'], _opts(regan_refresh='sometimes'))

@pytest.mark.slow
def test_training_loop_regan_and_resume(tmp_path):
    from plugin_train_util import make_dataset, read_stats, tiny_config, train
    data = make_dataset(tmp_path / 'data')
    c = tiny_config(data, tmp_path / 'run1', methods=['regan'], kimg=0.012, regan_warmup=1, regan_g=2)
    result, snapshot = train(c)
    plugin = result.plugins['regan']
    assert plugin.mode == regan.SPARSE          # iterations: warm-up, sparse, sparse
    G_opt = result.phases[0].opt
    assert G_opt.param_groups[0]['lr'] == pytest.approx(result.phases[0].lr)
    state = snapshot['resume_state']['plugins']['regan']
    kept = state['masks']['kept']
    for G in (snapshot['G'], snapshot['G_ema']):
        params = dict(G.named_parameters())
        for name, mask in kept.items():
            assert bool((params[name][~mask] == 0).all())
    assert (~kept['mapping.fc0.weight']).float().mean() == pytest.approx(0.3, abs=0.01)
    assert not any('torgb' in n for n in plugin.masks)
    D0 = dict(snapshot['D'].named_parameters())
    assert all(bool((p != 0).all()) for n, p in D0.items() if p.ndim > 1)
    stats = read_stats(c.run_dir)
    assert stats['ReGAN/phase'][-1] == 1 and stats['ReGAN/sparsity'][-1] > 0.25
    # Resume: the schedule continues at iteration 3 (dense, LR x 0.1) with the saved masks.
    snap = sorted(tmp_path.joinpath('run1').glob('network-snapshot-*.pkl'))[-1]
    c2 = tiny_config(data, tmp_path / 'run2', methods=['regan'], kimg=0.016, resume=snap, regan_warmup=1, regan_g=2)
    result2, _ = train(c2)
    plugin2 = result2.plugins['regan']
    assert result2.batch_idx == 4 and plugin2.mode == regan.DENSE
    assert result2.phases[0].opt.param_groups[0]['lr'] == pytest.approx(0.1 * result2.phases[0].lr)
    assert all(torch.equal(plugin2.masks[n], kept[n]) for n in kept)
