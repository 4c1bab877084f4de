"""StyleGAN2Loss against closed forms on tiny hand-made G / D (no training/networks.py needed):
softplus terms, R1 vs finite differences, path length, gains, style mixing, plugin hooks,
and the loop's gradient sanitising."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins import Plugin, PluginSet
from torch_utils import training_stats
from training.loss import StyleGAN2Loss
from training.training_loop import sanitize_and_reduce_grads

#----------------------------------------------------------------------------
# Tiny networks with the interface the loss uses.

class ToyMapping(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_ws):
        super().__init__()
        self.fc = torch.nn.Linear(z_dim, w_dim)
        self.num_ws = num_ws
        self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, skip_w_avg_update=False):
        w = torch.tanh(self.fc(z))
        return w.unsqueeze(1).repeat([1, self.num_ws, 1])

class ToySynthesis(torch.nn.Module):
    def __init__(self, w_dim, num_ws, res):
        super().__init__()
        self.res = res
        self.weight = torch.nn.Parameter(torch.randn([num_ws, w_dim, 3 * res * res]) * 0.1)

    def forward(self, ws, add_uc=False):
        img = torch.einsum('nkw,kwp->np', ws, self.weight).reshape(-1, 3, self.res, self.res)
        if add_uc:
            return img, img[:, :, ::2, ::2]
        return img

class ToyG(torch.nn.Module):
    def __init__(self, z_dim=6, w_dim=5, num_ws=4, res=4):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, 0, w_dim, num_ws
        self.mapping = ToyMapping(z_dim, w_dim, num_ws)
        self.synthesis = ToySynthesis(w_dim, num_ws, res)

class ToyD(torch.nn.Module):
    def __init__(self, res=4):
        super().__init__()
        self.fc1 = torch.nn.Linear(3 * res * res, 8)
        self.fc2 = torch.nn.Linear(8, 1)

    def features(self, img, c):
        return torch.tanh(self.fc1(img.flatten(1))), None

    def head(self, x, cmap):
        return self.fc2(x)

    def forward(self, img, c):
        return self.head(*self.features(img, c))

def make_nets(seed=0):
    torch.manual_seed(seed)
    return ToyG(), ToyD()

def grads_of(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]

def collect(fn):
    """Run fn() and return a Collector holding what it reported."""
    collector = training_stats.Collector(regex='Loss/.*', keep_previous=False)
    fn()
    collector.update()
    return collector

N = 6
@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(123)
    return dict(real_img=torch.randn([N, 3, 4, 4], generator=g), real_c=torch.zeros([N, 0]),
                gen_z=torch.randn([N, 6], generator=g), gen_c=torch.zeros([N, 0]))

#----------------------------------------------------------------------------

def test_Gmain_is_softplus_of_minus_fake_logits(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0)
    G.requires_grad_(True); D.requires_grad_(False)
    stats = collect(lambda: loss.accumulate_gradients('Gmain', gain=1, cur_nimg=0, **batch))
    got = grads_of(G)

    G.zero_grad(set_to_none=True)
    logits = D(G.synthesis(G.mapping(batch['gen_z'], None)), None)
    expected = F.softplus(-logits)
    expected.mean().backward()
    assert stats.mean('Loss/G/loss') == pytest.approx(float(expected.detach().mean()), rel=1e-6)
    assert stats.mean('Loss/scores/fake') == pytest.approx(float(logits.mean()), rel=1e-6)
    assert stats.mean('Loss/signs/fake') == pytest.approx(float(logits.sign().mean()), abs=1e-12)
    assert stats.num('Loss/G/loss') == N
    for a, b in zip(got, grads_of(G)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in D.parameters())

def test_Dmain_is_softplus_fake_plus_softplus_minus_real(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0, r1_gamma=10)
    D.requires_grad_(True)
    stats = collect(lambda: loss.accumulate_gradients('Dmain', gain=1, cur_nimg=0, **batch))
    got = grads_of(D)

    D.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = G.synthesis(G.mapping(batch['gen_z'], None))
    fake_logits, real_logits = D(fake, None), D(batch['real_img'], None)
    per_sample = F.softplus(fake_logits) + F.softplus(-real_logits)
    (F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()).backward()
    assert stats.mean('Loss/D/loss') == pytest.approx(float(per_sample.mean()), rel=1e-6)
    assert stats.mean('Loss/scores/real') == pytest.approx(float(real_logits.mean()), rel=1e-6)
    assert stats.mean('Loss/signs/real') == pytest.approx(float(real_logits.sign().mean()), abs=1e-12)
    assert stats.num('Loss/r1_penalty') == 0     # Dmain has no R1
    for a, b in zip(got, grads_of(D)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

def test_R1_matches_finite_differences_and_scales_with_gain(batch):
    G, D = make_nets()
    gamma = 0.7
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=gamma)
    D.requires_grad_(True)
    stats = collect(lambda: loss.accumulate_gradients('Dreg', gain=1, cur_nimg=0, **batch))
    grads_gain1 = grads_of(D)

    # |dD/dx|^2 per sample by central differences (float64 copy of D).
    D64 = ToyD().double()
    D64.load_state_dict(D.state_dict())
    x = batch['real_img'].double()
    eps = 1e-5
    fd = torch.zeros_like(x)
    flat = fd.view(N, -1)
    for k in range(flat.shape[1]):
        dx = torch.zeros_like(x).view(N, -1)
        dx[:, k] = eps
        dx = dx.view_as(x)
        with torch.no_grad():
            flat[:, k] = ((D64(x + dx, None) - D64(x - dx, None)) / (2 * eps))[:, 0]
    penalty_fd = fd.square().sum([1, 2, 3])
    assert stats.mean('Loss/r1_penalty') == pytest.approx(float(penalty_fd.mean()), rel=1e-5)
    assert stats.mean('Loss/D/reg') == pytest.approx(float(penalty_fd.mean()) * gamma / 2, rel=1e-5)
    assert stats.num('Loss/D/loss') == 0          # no adversarial term in Dreg
    assert stats.num('Loss/signs/real') == N      # the ADA signal is reported in Dreg too

    # Parameter gradients: gamma/2 * mean |grad|^2, times the lazy-regularisation gain.
    D.zero_grad(set_to_none=True)
    loss.accumulate_gradients('Dreg', gain=16, cur_nimg=0, **batch)
    for a, b in zip(grads_gain1, grads_of(D)):
        torch.testing.assert_close(b, 16 * a, rtol=1e-5, atol=1e-7)
    D.zero_grad(set_to_none=True)
    xr = batch['real_img'].clone().requires_grad_(True)
    g = torch.autograd.grad(D(xr, None).sum(), xr, create_graph=True)[0]
    (g.square().sum([1, 2, 3]).mean() * gamma / 2).backward()
    for a, b in zip(grads_gain1, grads_of(D)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

def test_R1_is_taken_through_the_augmentation_wrt_unaugmented_reals(batch):
    class Double(Plugin):
        name = 'double'
        def augment_D_input(self, img, is_real, phase):
            return img * 2
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, plugins=PluginSet([Double], {}, 'cpu'), r1_gamma=1)
    D.requires_grad_(True)
    stats = collect(lambda: loss.accumulate_gradients('Dreg', gain=1, cur_nimg=0, **batch))
    xr = batch['real_img'].clone().requires_grad_(True)
    g = torch.autograd.grad(D(2 * xr, None).sum(), xr)[0]   # chain rule: 2 * D'(2x)
    assert stats.mean('Loss/r1_penalty') == pytest.approx(float(g.square().sum([1, 2, 3]).mean()), rel=1e-5)

def test_path_length_penalty_and_running_mean(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0, pl_weight=2, pl_batch_shrink=2, pl_decay=0.01)
    G.requires_grad_(True)
    torch.manual_seed(7)
    stats = collect(lambda: loss.accumulate_gradients('Greg', gain=4, cur_nimg=0, **batch))

    half = N // 2
    ws = G.mapping(batch['gen_z'][:half], None).detach().requires_grad_(True)
    img = G.synthesis(ws)
    torch.manual_seed(7)
    noise = torch.randn_like(img) / np.sqrt(16)
    J = torch.autograd.grad((img * noise).sum(), ws)[0]
    lengths = J.square().sum(2).mean(1).sqrt()
    pl_mean = 0.01 * lengths.mean()              # lerp from 0
    assert float(loss.pl_mean) == pytest.approx(float(pl_mean), rel=1e-5)
    penalty = (lengths - pl_mean).square()
    assert stats.num('Loss/pl_penalty') == half
    assert stats.mean('Loss/pl_penalty') == pytest.approx(float(penalty.mean()), rel=1e-5)
    assert stats.mean('Loss/G/reg') == pytest.approx(2 * float(penalty.mean()), rel=1e-5)
    assert all(p.grad is None for p in D.parameters())
    assert loss.state_dict()['pl_mean'] == pytest.approx(float(pl_mean), rel=1e-6)

@pytest.mark.parametrize('phase, interval', [('Dreg', 16), ('Greg', 4)])
def test_reg_gain_none_drops_the_interval_of_lazy_phases(batch, phase, interval):
    """--reg-gain=none (the UTLO code): Greg / Dreg gradients are those of gain 1, not of the interval."""
    def grads(reg_gain, gain):
        G, D = make_nets()
        loss = StyleGAN2Loss('cpu', G, D, r1_gamma=0.7, pl_weight=2, style_mixing_prob=0, reg_gain=reg_gain)
        module = D if phase == 'Dreg' else G
        module.requires_grad_(True)
        torch.manual_seed(7)
        loss.accumulate_gradients(phase, gain=gain, cur_nimg=0, **batch)
        return grads_of(module)
    unit, lazy, none = grads('interval', 1), grads('interval', interval), grads('none', interval)
    for a, b, c in zip(unit, lazy, none):
        assert torch.equal(c, a)                          # gain ignored
        assert torch.equal(b, a * interval)               # the default multiplies (power of two: exact)
    with pytest.raises(ValueError, match='reg_gain'):
        StyleGAN2Loss('cpu', *make_nets(), reg_gain='half')

def test_pl_weight_scales_the_path_length_gradient(batch):
    def grads(pl_weight):
        G, D = make_nets()
        loss = StyleGAN2Loss('cpu', G, D, pl_weight=pl_weight, style_mixing_prob=0)
        G.requires_grad_(True)
        torch.manual_seed(7)
        loss.accumulate_gradients('Greg', gain=4, cur_nimg=0, **batch)
        return grads_of(G)
    g2, g8 = grads(2), grads(8)
    assert all(torch.equal(b, 4 * a) for a, b in zip(g2, g8))
    assert sum(float(a.abs().sum()) for a in g2) > 0

def test_reg_phases_are_noops_when_weights_are_zero(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=0, pl_weight=0)
    G.requires_grad_(True); D.requires_grad_(True)
    loss.accumulate_gradients('Greg', gain=4, cur_nimg=0, **batch)
    loss.accumulate_gradients('Dreg', gain=16, cur_nimg=0, **batch)
    assert all(p.grad is None for p in list(G.parameters()) + list(D.parameters()))

def test_Dboth_equals_Dmain_plus_Dreg(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=3, style_mixing_prob=0)
    D.requires_grad_(True)
    loss.accumulate_gradients('Dboth', gain=1, cur_nimg=0, **batch)
    both = grads_of(D)
    D.zero_grad(set_to_none=True)
    loss.accumulate_gradients('Dmain', gain=1, cur_nimg=0, **batch)
    loss.accumulate_gradients('Dreg', gain=1, cur_nimg=0, **batch)
    for a, b in zip(both, grads_of(D)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

def test_style_mixing_takes_tail_ws_from_a_second_latent(batch):
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=1.0)
    z = batch['gen_z']
    ws_own = G.mapping(z, None)
    cutoffs = set()
    for seed in range(40):
        torch.manual_seed(seed)
        _img, ws, _extra = loss.run_G(z, batch['gen_c'])
        same = [(ws[:, k] == ws_own[:, k]).all().item() for k in range(G.num_ws)]
        cutoff = same.index(False)
        assert cutoff >= 1 and all(same[:cutoff]) and not any(same[cutoff:])
        cutoffs.add(cutoff)
    assert cutoffs == {1, 2, 3}                  # uniform over [1, num_ws)
    torch.manual_seed(0)
    ws_a = loss.run_G(z, batch['gen_c'])[1]
    torch.manual_seed(0)
    ws_b = loss.run_G(z, batch['gen_c'])[1]
    assert torch.equal(ws_a, ws_b)               # deterministic for a seed

def test_plugin_hooks_weight_extra_loss_ctx_and_replacement(batch):
    seen = {}
    class Hooked(Plugin):
        name = 'hooked'
        def replace_real_batch(self, real_img, phase):
            return real_img * 0 + 0.5
        def synthesis_kwargs(self, phase):
            return dict(add_uc=True)
        def main_loss_weight(self, phase):
            return 0.25
        def extra_loss(self, phase, ctx):
            seen[phase] = dict(ctx)
            return ctx.gen_extra[0].square().mean() if phase == 'Gmain' else None
    G, D = make_nets()
    loss = StyleGAN2Loss('cpu', G, D, plugins=PluginSet([Hooked], {}, 'cpu'), style_mixing_prob=0)
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', gain=1, cur_nimg=0, **batch)
    got = grads_of(G)
    G.zero_grad(set_to_none=True)
    img, img_uc = G.synthesis(G.mapping(batch['gen_z'], None), add_uc=True)
    (0.25 * F.softplus(-D(img, None)).mean() + img_uc.square().mean()).backward()
    for a, b in zip(got, grads_of(G)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    ctx = seen['Gmain']
    for key in ['phase', 'G', 'D', 'loss', 'gain', 'gen_z', 'gen_c', 'gen_ws', 'gen_img', 'gen_extra', 'gen_img_aug',
                'gen_features', 'gen_logits', 'real_img', 'real_img_aug', 'real_c', 'real_features', 'real_logits',
                'run_G', 'run_D', 'augment']:
        assert key in ctx
    assert ctx['real_logits'] is None and ctx['gen_ws'].shape == (N, 4, 5)
    assert torch.equal(ctx['gen_logits'], D.head(*ctx['gen_features']))

    G.requires_grad_(False); D.requires_grad_(True)
    loss.accumulate_gradients('Dmain', gain=1, cur_nimg=0, **batch)
    ctx = seen['Dmain']
    assert torch.equal(ctx['real_img'], torch.full_like(batch['real_img'], 0.5))
    assert ctx['gen_logits'] is not None and ctx['real_logits'] is not None

def test_grad_sanitising_replaces_nan_and_inf():
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.tensor([float('nan'), float('inf'), -float('inf'), 3.0, -2.0])
    q = torch.nn.Parameter(torch.zeros(2))       # no gradient: left alone
    sanitize_and_reduce_grads([p, q], num_gpus=1)
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 3.0, -2.0]
    assert q.grad is None

def test_phase_names_carry_network_and_kind():
    from training.loss import PHASES, Phase
    table = {name: (Phase(name).net, Phase(name).kind, Phase(name).main, Phase(name).reg, Phase(name).lazy) for name in PHASES}
    assert table == {'Gmain': ('G', 'main', True, False, False), 'Greg': ('G', 'reg', False, True, True),
                     'Gboth': ('G', 'both', True, True, False), 'Dmain': ('D', 'main', True, False, False),
                     'Dreg': ('D', 'reg', False, True, True), 'Dboth': ('D', 'both', True, True, False)}
    assert Phase('Dreg') == 'Dreg' and {'Dreg': 1}[Phase('Dreg')] == 1 and 'Timing/' + Phase('Gmain') == 'Timing/Gmain'
    with pytest.raises(ValueError, match='unknown phase'):
        Phase('Dfoo')
