"""Lottery tickets + AdvAug plugin: methods.md section 9 tests on tiny StyleGAN2 networks."""

import copy

import pytest
import torch
import torch.nn.functional as F

import dnnlib
import plugins
from plugins import lottery
from training import networks
from plugin_train_util import run_loss_phase
from training.loss import Phase

def _nets(seed=0, c_dim=0):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=32))
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=256, channel_max=32,
                               epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D

def _opts(**kwargs):
    opts = plugins.default_opts()
    opts.update(aug='noaug', methods=['lottery'], batch_size=4, batch_gpu=4, total_kimg=1)
    opts.update(kwargs)
    return opts

def _setup(run_dir=None, seed=0, **kwargs):
    G, D = _nets(seed)
    G_ema = copy.deepcopy(G).eval()
    plugin = lottery.LotteryPlugin(_opts(**kwargs), 'cpu')
    plugin.setup(G, D, G_ema, dnnlib.EasyDict(run_dir=run_dir, full_resume=False))
    plugin.on_iteration_start(dnnlib.EasyDict(batch_idx=0, cur_nimg=0))     # theta_0 is taken here
    return plugin, G, D, G_ema

def _phases(G, D):
    G_opt = torch.optim.Adam(G.parameters(), lr=0.01, betas=(0.0, 0.99))
    D_opt = torch.optim.Adam(D.parameters(), lr=0.01, betas=(0.0, 0.99))
    return [dnnlib.EasyDict(name=Phase('Gmain'), module=G, opt=G_opt, interval=1, lr=0.01),
            dnnlib.EasyDict(name=Phase('Dmain'), module=D, opt=D_opt, interval=1, lr=0.01)]

def _nonzero_fraction(G, names):
    params = dict(G.named_parameters())
    return sum(int((params[n] != 0).sum()) for n in names) / sum(params[n].numel() for n in names)

def _perturb_all(module, seed=9):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))

def test_prunable_set_is_the_conv_kernels():
    plugin, G, _, _ = _setup()
    names = set(plugin.masks)
    assert 'synthesis.b4.conv1.weight' in names and 'synthesis.b16.torgb.weight' in names
    assert not any('mapping' in n or 'affine' in n or n.endswith('bias') for n in names)
    assert all(dict(G.named_parameters())[n].ndim == 4 for n in names)

def test_one_round_leaves_80_percent_and_two_rounds_64():
    plugin, G, D, G_ema = _setup(imp_rounds=2, imp_kimg=0.004, imp_percent=0.2)
    names = list(plugin.masks)
    other = {n: p.detach().clone() for n, p in G.named_parameters() if n not in plugin.masks}
    phases = _phases(G, D)
    state = dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=phases)
    plugin.end_of_iteration(state, None)
    assert plugin.round == 1
    assert _nonzero_fraction(G, names) == pytest.approx(0.8, abs=0.01)
    assert plugin.masks.density()[0] == pytest.approx(0.8, abs=0.001)
    # Linear layers and biases are untouched (rewound to theta_0, which they never left).
    assert all(torch.equal(p, other[n]) for n, p in G.named_parameters() if n not in plugin.masks)
    _perturb_all(G)     # train a bit so the next ranking differs
    state.update(cur_nimg=8, batch_idx=2)
    plugin.end_of_iteration(state, None)
    assert plugin.round == 2 and not plugin.searching()
    assert plugin.masks.density()[0] == pytest.approx(0.64, abs=0.001)
    assert _nonzero_fraction(G, names) == pytest.approx(0.64, abs=0.01)

def test_rewind_is_exact_and_resets_D_and_optimizers():
    plugin, G, D, G_ema = _setup(imp_rounds=1, imp_kimg=0.004)
    theta0_G = {k: v.clone() for k, v in G.state_dict().items()}
    theta0_D = {k: v.clone() for k, v in D.state_dict().items()}
    phases = _phases(G, D)
    G(torch.randn(2, 16), None).square().mean().backward()
    phases[0].opt.step()
    _perturb_all(G), _perturb_all(D)
    assert len(phases[0].opt.state) > 0
    plugin.end_of_iteration(dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=phases), None)
    for name, value in G.state_dict().items():
        mask = plugin.masks.get(name)
        if mask is None:
            assert torch.equal(value, theta0_G[name])
        else:
            assert torch.equal(value[mask], theta0_G[name][mask]) and bool((value[~mask] == 0).all())
    assert all(torch.equal(v, theta0_D[k]) for k, v in D.state_dict().items())
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in G_ema.state_dict().items())
    assert len(phases[0].opt.state) == 0 and len(phases[1].opt.state) == 0

def test_masked_weights_stay_zero_after_5_steps():
    plugin, G, D, G_ema = _setup(imp_rounds=1, imp_kimg=0.004)
    phases = _phases(G, D)
    plugin.end_of_iteration(dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=phases), None)
    opt = phases[0].opt
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        G(torch.randn(2, 16), None).square().mean().backward()
        plugin.after_backward(Phase('Gmain'), G)
        params = dict(G.named_parameters())
        assert all(bool((params[n].grad[~m] == 0).all()) for n, m in plugin.masks.items())
        opt.step()
        plugin.after_step(Phase('Gmain'), G)
        plugin.before_ema(G, G_ema)
    params, ema = dict(G.named_parameters()), dict(G_ema.named_parameters())
    for n, m in plugin.masks.items():
        assert bool((params[n][~m] == 0).all()) and bool((ema[n][~m] == 0).all())
        assert bool((params[n][m] != 0).any())

def test_ticket_file_roundtrip_trains_from_the_rewound_weights(tmp_path):
    plugin, G, D, _ = _setup(run_dir=str(tmp_path), imp_rounds=1, imp_kimg=0.004)
    plugin.end_of_iteration(dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=_phases(G, D)), None)
    path = tmp_path / 'ticket-round01.pt'
    assert path.is_file()
    ticket_G = {k: v.clone() for k, v in G.state_dict().items()}
    plugin2, G2, D2, G2_ema = _setup(seed=5, ticket=str(path))      # a different init: the ticket's theta_0 wins
    assert all(torch.equal(plugin2.masks[n], plugin.masks[n]) for n in plugin.masks)
    assert all(torch.equal(v, ticket_G[k]) for k, v in G2.state_dict().items())
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in D2.state_dict().items())
    assert plugin2.advaug_active()

def test_state_roundtrip():
    plugin, G, D, _ = _setup(imp_rounds=2, imp_kimg=0.004)
    plugin.end_of_iteration(dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=_phases(G, D)), None)
    state = copy.deepcopy(plugin.state_for_snapshot())
    assert 'theta0_G' in state      # one more rewind to come
    plugin2, _, _, _ = _setup(seed=3, imp_rounds=2, imp_kimg=0.004)
    plugin2.load_state(state)
    assert plugin2.round == 1 and plugin2.round_start_nimg == 4
    assert all(torch.equal(plugin2.masks[n], plugin.masks[n]) for n in plugin.masks)
    assert all(torch.equal(plugin2.theta0_G[k], plugin.theta0_G[k]) for k in plugin.theta0_G)

# --- AdvAug -----------------------------------------------------------------------------------

def _linear_head(dim=6, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(dim, 1)
    return lin, (lambda f: lin(f))

def test_perturbation_linf_is_gamma_times_steps():
    lin, head = _linear_head()
    with torch.no_grad():
        lin.weight[0, 2] = 0      # a coordinate with zero gradient stays put
    f = torch.randn(5, 6)
    for gamma, steps in [(0.01, 1), (0.05, 3)]:
        delta = lottery.feature_perturbation(head, f, gamma, steps)
        nz = torch.ones(6, dtype=torch.bool); nz[2] = False
        assert torch.allclose(delta[:, nz].abs(), torch.full_like(delta[:, nz], gamma * steps))
        assert bool((delta[:, 2] == 0).all())

def test_ref_sign_raises_the_logit_and_loss_ascent_flips_it():
    lin, head = _linear_head()
    f = torch.randn(16, 6)
    up = lottery.feature_perturbation(head, f, 0.1, 1, direction=1.0)
    down = lottery.feature_perturbation(head, f, 0.1, 1, direction=-1.0)
    with torch.no_grad():
        assert head(f + up).mean() >= head(f).mean() >= head(f + down).mean()
    plugin, *_ = _setup()
    assert plugin._direction(True) == plugin._direction(False) == 1.0
    plugin2, *_ = _setup(advaug_sign='loss_ascent')
    assert plugin2._direction(True) == -1.0 and plugin2._direction(False) == 1.0

def test_pgd_step_creates_no_parameter_gradients():
    lin, head = _linear_head()
    f = torch.randn(4, 6, requires_grad=True)
    lottery.feature_perturbation(head, f, 0.1, 2)
    assert lin.weight.grad is None and lin.bias.grad is None and f.grad is None
    # Clean-loss gradients are identical with or without computing the perturbation.
    lin.zero_grad(); head(f).sum().backward(); g1 = lin.weight.grad.clone()
    lin.zero_grad(); lottery.feature_perturbation(head, f, 0.1, 2); head(f).sum().backward()
    assert torch.equal(g1, lin.weight.grad)

def _loss_phase(G, D, pset, phase, seed=1):
    return run_loss_phase(G, D, pset, phase, torch.zeros([4, 0]), seed=seed)

@pytest.mark.parametrize('phase', ['Gmain', 'Dmain'])
def test_gamma0_equals_the_baseline_loss(phase):
    G, D = _nets()
    ctx0, grads0 = _loss_phase(G, D, plugins.PluginSet([], {}, 'cpu'), phase)
    ctx1, grads1 = _loss_phase(G, D, plugins.PluginSet([lottery.LotteryPlugin], _opts(advaug_gamma=0.0), 'cpu'), phase)
    assert torch.equal(ctx0.phase_loss, ctx1.phase_loss)
    assert all(torch.equal(grads0[n], grads1[n]) for n in grads0)

def test_D_adv_term_with_gamma0_reproduces_the_clean_term():
    G, D = _nets()
    ctx, _ = _loss_phase(G, D, plugins.PluginSet([], {}, 'cpu'), 'Dmain')
    plugin = lottery.LotteryPlugin(_opts(advaug_gamma=0.0), 'cpu')
    clean = F.softplus(ctx.gen_logits).mean() + F.softplus(-ctx.real_logits).mean()
    assert torch.equal(plugin.D_adv_loss(ctx), clean)

def test_advaug_D_loss_is_half_clean_half_adversarial():
    G, D = _nets()
    pset = plugins.PluginSet([lottery.LotteryPlugin], _opts(advaug_gamma=0.05), 'cpu')
    ctx, grads = _loss_phase(G, D, pset, 'Dmain')
    with torch.no_grad():
        def adv(features, sign):
            x, cmap = features
            delta = lottery.feature_perturbation(lambda f: D.head(f, cmap), x, 0.05, 1)
            return F.softplus(sign * D.head(x + delta, cmap)).mean()
        clean = F.softplus(ctx.gen_logits).mean() + F.softplus(-ctx.real_logits).mean()
        expected = 0.5 * clean + 0.5 * (adv(ctx.gen_features, 1) + adv(ctx.real_features, -1))
    assert float(ctx.phase_loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(ctx.phase_loss) != pytest.approx(float(clean), rel=1e-6)
    assert grads['b4.out.weight'].abs().sum() > 0

@pytest.mark.parametrize('target', ['b4', 'ws'])
def test_advaug_G_loss_runs_and_trains_G(target):
    G, D = _nets()
    pset = plugins.PluginSet([lottery.LotteryPlugin], _opts(advaug_gamma=0.05, advaug_G_target=target), 'cpu')
    ctx, grads = _loss_phase(G, D, pset, 'Gmain')
    assert torch.isfinite(ctx.phase_loss)
    assert grads['synthesis.b4.conv1.weight'].abs().sum() > 0 and grads['mapping.fc0.weight'].abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())

def test_b4_perturbation_has_gamma_linf_and_raises_D():
    G, D = _nets()
    G.eval()
    plugin = lottery.LotteryPlugin(_opts(advaug_gamma=0.2), 'cpu')
    ws = G.mapping(torch.randn(4, 16), None)
    synth = lambda w, hook=None: G.synthesis(w, b4_hook=hook, noise_mode='const')
    run_D = lambda img: D(img, None)
    delta = plugin._b4_perturbation(synth, ws.detach(), run_D, 1.0)
    assert delta.shape == (4, 32, 4, 4)
    assert float(delta.abs().max()) == pytest.approx(0.2)
    with torch.no_grad():
        clean = run_D(synth(ws)).mean()
        adv = run_D(synth(ws, lambda x: x + delta)).mean()
    assert adv > clean

def test_validation_and_describe():
    with pytest.raises(ValueError, match='--imp-kimg'):
        lottery.LotteryPlugin.validate('noaug', ['lottery'], _opts(imp_rounds=2))
    with pytest.raises(ValueError, match='shorter than the search'):
        lottery.LotteryPlugin.validate('noaug', ['lottery'], _opts(imp_rounds=2, imp_kimg=1, total_kimg=1))
    with pytest.raises(ValueError, match='--advaug-sign'):
        lottery.LotteryPlugin.validate('noaug', ['lottery'], _opts(advaug_sign='down'))
    assert lottery.LotteryPlugin.describe(_opts(imp_rounds=2, imp_kimg=1)) == 'lottery-imp2x1k-p0.2-advaug0.01'

@pytest.mark.slow
def test_training_loop_ticket_search_then_advaug(tmp_path):
    from plugin_train_util import make_dataset, read_stats, tiny_config, train
    data = make_dataset(tmp_path / 'data')
    c = tiny_config(data, tmp_path / 'run', methods=['lottery'], kimg=0.016, imp_rounds=1, imp_kimg=0.008)
    result, snapshot = train(c)
    plugin = result.plugins['lottery']
    assert plugin.round == 1 and plugin.advaug_active()
    assert (tmp_path / 'run' / 'ticket-round01.pt').is_file()
    names = list(plugin.masks)
    for G in (snapshot['G'], snapshot['G_ema']):
        assert _nonzero_fraction(G, names) == pytest.approx(0.8, abs=0.01)
    stats = read_stats(c.run_dir)
    assert stats['Lottery/density'][-1] == pytest.approx(0.8, abs=0.001)
    assert 'Lottery/advaug/scores_real' in stats and 'Lottery/advaug/scores_G' in stats
    # Train the saved ticket in a new run: same masks, AdvAug on from the first iteration.
    c2 = tiny_config(data, tmp_path / 'run2', methods=['lottery'], kimg=0.008, ticket=str(tmp_path / 'run' / 'ticket-round01.pt'))
    result2, snapshot2 = train(c2)
    assert all(torch.equal(result2.plugins['lottery'].masks[n], plugin.masks[n]) for n in names)
    assert _nonzero_fraction(snapshot2['G_ema'], names) == pytest.approx(0.8, abs=0.01)

def test_theta0_is_taken_after_the_loops_broadcast():
    # With several processes the loop overwrites every rank's weights with rank 0's after
    # setup(); theta_0 must be those broadcast weights, or ranks would rewind differently.
    G, D = _nets()
    plugin = lottery.LotteryPlugin(_opts(imp_rounds=1, imp_kimg=0.004), 'cpu')
    plugin.setup(G, D, copy.deepcopy(G), dnnlib.EasyDict(full_resume=False))
    _perturb_all(G, seed=1), _perturb_all(D, seed=2)          # the "broadcast"
    broadcast_G = {k: v.clone() for k, v in G.state_dict().items()}
    broadcast_D = {k: v.clone() for k, v in D.state_dict().items()}
    plugin.on_iteration_start(dnnlib.EasyDict(batch_idx=0, cur_nimg=0))
    _perturb_all(G, seed=3), _perturb_all(D, seed=4)          # training
    plugin.end_of_iteration(dnnlib.EasyDict(cur_nimg=4, batch_idx=1, batch_size=4, phases=_phases(G, D)), None)
    assert all(torch.equal(v, broadcast_D[k]) for k, v in D.state_dict().items())
    assert all(torch.equal(v, broadcast_G[k]) for k, v in G.state_dict().items() if k not in plugin.masks)

@pytest.mark.slow
@pytest.mark.parametrize('aug', ['ada', 'apa'])
def test_rewinding_D_restarts_the_augmentation_p(tmp_path, aug):
    """Issue 14 item 8: the IMP round ends at iteration 6 with p > 0; the rewound D starts again
    from p = 0, as a fresh reference round would."""
    from plugin_train_util import make_dataset, read_stats, tiny_config, train
    c = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'run', aug=aug, methods=['lottery'], kimg=0.036,
                    imp_rounds=1, imp_kimg=0.024, advaug_gamma=0, target=0.0)
    c.plugin_opts['ada_kimg'] = 0.05            # fast controller: p moves by 0.32 per adjustment
    c.kimg_per_tick = 0.004                     # one stats line per iteration
    train(c)
    stats = read_stats(c.run_dir)
    p, rounds = stats['Progress/augment'], stats['Lottery/round']
    end = rounds.index(1)                       # the iteration whose end finished the round
    assert end == 5 and p[end - 1] > 0.3
    assert p[end] == 0 and p[end + 1] == 0      # until the next adjustment (iteration 8), which sees only the new D
