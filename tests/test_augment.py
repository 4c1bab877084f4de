"""Tests for training/augment.py (methods.md section 1, "Tests"): every operation against a direct
computation or a closed form, the presets, p = 0, determinism, gradients and double backward."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import augment
from training.augment import AugmentPipe, augpipe_specs

ALL_OPS = ['xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac', 'brightness', 'contrast',
           'lumaflip', 'hue', 'saturation', 'imgfilter', 'noise', 'cutout']

def pipe_with(p=1.0, **ops):
    pipe = AugmentPipe(**ops)
    pipe.p.fill_(p)
    return pipe

def smooth_images(n, c, size, seed=0):
    """Band-limited images (bicubic upsampling of 6x6 noise), so sub-pixel resampling is well defined."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, c, 6, 6, generator=g), size=(size, size), mode='bicubic', align_corners=False)

def luma(x):
    return x.mean(dim=1, keepdim=True)

#----------------------------------------------------------------------------

def test_p_buffer_and_presets():
    pipe = AugmentPipe()
    assert 'p' in dict(pipe.named_buffers()) and pipe.p.ndim == 0 and pipe.p.dtype == torch.float32
    expected = {
        'blit': {'xflip', 'rotate90', 'xint'}, 'geom': {'scale', 'rotate', 'aniso', 'xfrac'},
        'color': {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}, 'filter': {'imgfilter'},
        'noise': {'noise'}, 'cutout': {'cutout'}}
    expected['bg'] = expected['blit'] | expected['geom']
    expected['bgc'] = expected['bg'] | expected['color']
    expected['bgcf'] = expected['bgc'] | {'imgfilter'}
    expected['bgcfn'] = expected['bgcf'] | {'noise'}
    expected['bgcfnc'] = expected['bgcfn'] | {'cutout'}
    expected['mnist'] = expected['geom'] | expected['color']
    assert set(augpipe_specs) == set(expected)
    for name, ops in expected.items():
        pipe = AugmentPipe(**augpipe_specs[name])
        assert {op for op in ALL_OPS if getattr(pipe, op) == 1} == ops, name
        assert all(getattr(pipe, op) == 0 for op in ALL_OPS if op not in ops), name

@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('size', [8, 16, 64])
def test_shape_and_dtype(channels, size):
    torch.manual_seed(0)
    x = torch.randn(3, channels, size, size)
    y = pipe_with(0.8, **augpipe_specs['bgcfnc'])(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not torch.equal(x, y)

def test_p_zero_is_identity():
    x = torch.randn(4, 3, 16, 16)
    pipe = pipe_with(0.0, **augpipe_specs['bgcfnc'])
    assert pipe(x) is x

def test_deterministic_under_seed():
    pipe = pipe_with(0.7, **augpipe_specs['bgcfnc'])
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(123); a = pipe(x)
    torch.manual_seed(123); b = pipe(x)
    torch.manual_seed(124); c = pipe(x)
    assert torch.equal(a, b) and not torch.equal(a, c)

def test_debug_percentile_is_deterministic():
    pipe = pipe_with(1.0, **augpipe_specs['bgcf'])
    x = smooth_images(2, 3, 16)
    assert torch.equal(pipe(x, debug_percentile=0.3), pipe(x, debug_percentile=0.3))
    # The scale step at percentile q uses s = 2^(0.2 * Phi^-1(q)).
    pipe = pipe_with(1.0, scale=1)
    pipe._debug = 0.8
    G = pipe._geometric_matrix(1, 16, 16, 'cpu')
    s = 2 ** (0.2 * math.sqrt(2) * torch.erfinv(torch.tensor(0.6)).item())
    assert torch.allclose(G[0], torch.diag(torch.tensor([1 / s, 1 / s, 1])), atol=1e-6)

#----------------------------------------------------------------------------
# Blit: exact.

def test_xflip_is_exact_mirror_about_half_the_time():
    torch.manual_seed(1)
    x = torch.randn(400, 1, 8, 8)
    y = pipe_with(1.0, xflip=1)(x)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    assert 0.4 < mirrored.float().mean().item() < 0.6

def test_rotate90_equals_torch_rot90():
    torch.manual_seed(2)
    x = torch.randn(64, 3, 12, 12)
    y = pipe_with(1.0, rotate90=1)(x)
    ks = []
    for i in range(64):
        matches = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(matches) == 1
        ks.append(matches[0])
    assert set(ks) == {0, 1, 2, 3}

def test_integer_translation_is_a_reflected_shift():
    torch.manual_seed(3)
    size, n = 16, 32
    x = torch.randn(n, 3, size, size)
    y = pipe_with(1.0, xint=1)(x)
    idx = torch.arange(size)
    def reflect(i):
        i = i.remainder(2 * (size - 1))
        return torch.where(i >= size, 2 * (size - 1) - i, i)
    shifts = []
    for i in range(n):
        found = [(tx, ty) for tx in range(-2, 3) for ty in range(-2, 3)     # |t| <= 0.125 * 16
                 if torch.equal(y[i, :, 4:-4, 4:-4], x[i, :, 4 - ty:size - 4 - ty, 4 - tx:size - 4 - tx])]
        assert len(found) == 1
        tx, ty = found[0]
        assert torch.equal(y[i], x[i][:, reflect(idx - ty)][:, :, reflect(idx - tx)])   # borders mirror
        shifts.append(found[0])
    assert len(set(shifts)) > 5

#----------------------------------------------------------------------------
# Geometric resampling.

@pytest.mark.parametrize('fit_margin', [True, False])   # padding fitted to the batch / the fixed cap
def test_resample_identity_and_integer_shift_are_exact(fit_margin):
    pipe = AugmentPipe(scale=1)
    x = torch.randn(2, 3, 16, 12)
    eye = torch.eye(3).repeat(2, 1, 1)
    assert (pipe._resample(x, eye, fit_margin) - x).abs().max() < 2e-5
    shift = eye.clone()
    shift[:, 0, 2], shift[:, 1, 2] = 2, -1                # output(v) = input(v + (2, -1))
    y = pipe._resample(x, shift, fit_margin)
    assert (y[:, :, 3:-3, 3:-3] - x[:, :, 2:-4, 5:-1]).abs().max() < 2e-5

@pytest.mark.parametrize('fit_margin', [True, False])   # padding fitted to the batch / the fixed cap
def test_resample_matches_analytic_warp(fit_margin):
    """A smooth analytic image warped by rotation + scale + sub-pixel shift against the formula."""
    pipe = AugmentPipe(rotate=1)
    size = 32
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing='ij')
    def image(u, v):
        return torch.cos(0.35 * u + 0.2 * v) + 0.5 * torch.sin(0.15 * u - 0.3 * v)
    x = image(xx, yy).reshape(1, 1, size, size)
    th, s, t = 0.5, 1.2, (0.3, -0.7)
    G = torch.tensor([[s * math.cos(th), -s * math.sin(th), t[0]], [s * math.sin(th), s * math.cos(th), t[1]], [0, 0, 1]])
    y = pipe._resample(x, G.unsqueeze(0), fit_margin)[0, 0]
    u = G[0, 0] * xx + G[0, 1] * yy + G[0, 2]
    v = G[1, 0] * xx + G[1, 1] * yy + G[1, 2]
    inside = (u.abs() < c - 2) & (v.abs() < c - 2)
    assert inside.sum() > 300
    assert (y - image(u, v))[inside].abs().max() < 0.02

@pytest.mark.parametrize('fit_margin', [True, False])   # padding fitted to the batch / the fixed cap
def test_resampled_rot90_close_to_exact(fit_margin):
    # The resampler (not the blit path) gets rotations right up to the filter's asymmetry.
    pipe = AugmentPipe(rotate=1)
    x = smooth_images(2, 3, 32)
    R = torch.tensor([[0., -1, 0], [1, 0, 0], [0, 0, 1]]).repeat(2, 1, 1)
    y = pipe._resample(x, R, fit_margin)
    err = min((y - torch.rot90(x, k, dims=(2, 3)))[:, :, 4:-4, 4:-4].abs().max().item() for k in range(4))
    assert err < 0.03 * x.abs().max().item()

def test_geometric_steps_compose_in_order():
    # p = 1, xflip and scale at fixed percentile: G_inv = flip^-1 @ scale^-1.
    pipe = pipe_with(1.0, xflip=1, scale=1)
    pipe._debug = 0.9
    G = pipe._geometric_matrix(1, 8, 8, 'cpu')[0]
    s = 2 ** (0.2 * math.sqrt(2) * torch.erfinv(torch.tensor(0.8)).item())
    assert torch.allclose(G, torch.tensor([[-1 / s, 0, 0], [0, 1 / s, 0], [0, 0, 1]]), atol=1e-6)

def test_rotation_probability():
    # P(at least one of the two rotations) = p.
    torch.manual_seed(4)
    pipe = pipe_with(0.5, rotate=1)
    G = pipe._geometric_matrix(4000, 8, 8, 'cpu')
    rotated = (G[:, 0, 1].abs() > 1e-6).float().mean().item()
    assert abs(rotated - 0.5) < 0.03

@pytest.mark.parametrize('channels', [1, 3])
def test_gradients_and_double_backward(channels):
    """The pipeline is affine in the image for a fixed draw: check grad and grad-of-grad against finite differences."""
    pipe = pipe_with(1.0, **augpipe_specs['bgcfnc'])
    x = smooth_images(2, channels, 16).double().float()
    r = torch.randn_like(x)
    w = torch.randn_like(x)
    def run(inp):
        torch.manual_seed(9)
        return pipe(inp)
    xg = x.clone().requires_grad_(True)
    out = run(xg)
    g, = torch.autograd.grad((out * r).sum(), xg, create_graph=True)
    eps = 1e-2
    fd = ((run(x + eps * w) * r).sum() - (run(x - eps * w) * r).sum()) / (2 * eps)
    assert abs((g * w).sum().item() - fd.item()) < 1e-2 * max(1.0, abs(fd.item()))
    # R1-style: gradient of |d/dx sum(out^2)|... checked through d/dx <d/dx sum(out^2), w> = 2 A^T A w.
    xg = x.clone().requires_grad_(True)
    g2, = torch.autograd.grad(run(xg).square().sum(), xg, create_graph=True)
    hvp, = torch.autograd.grad((g2 * w).sum(), xg)
    def grad_at(inp):
        inp = inp.clone().requires_grad_(True)
        return torch.autograd.grad(run(inp).square().sum(), inp)[0]
    fd2 = (grad_at(x + eps * w) - grad_at(x - eps * w)) / (2 * eps)
    assert torch.allclose(hvp, fd2, atol=2e-2 * fd2.abs().max().item())
    assert hvp.abs().sum() > 0

#----------------------------------------------------------------------------
# Colour.

def test_brightness_adds_a_constant_per_image():
    torch.manual_seed(5)
    x = torch.randn(256, 3, 8, 8)
    d = (pipe_with(1.0, brightness=1)(x) - x).flatten(1)
    assert (d - d[:, :1]).abs().max() < 1e-5
    assert abs(d[:, 0].std().item() - 0.2) < 0.03

def test_contrast_scales_each_image():
    torch.manual_seed(6)
    x = torch.randn(256, 3, 8, 8)
    y = pipe_with(1.0, contrast=1)(x)
    ratio = (y / x).flatten(1)
    assert (ratio - ratio[:, :1]).abs().max() < 1e-4
    assert abs(ratio[:, 0].log2().std().item() - 0.5) < 0.06

def test_lumaflip_is_householder_reflection():
    torch.manual_seed(7)
    x = torch.randn(200, 3, 4, 4)
    y = pipe_with(1.0, lumaflip=1)(x)
    v = torch.ones(3) / math.sqrt(3)
    flipped = x - 2 * v.reshape(1, 3, 1, 1) * (x * v.reshape(1, 3, 1, 1)).sum(1, keepdim=True)
    is_same = ((y - x).abs().flatten(1).amax(1) < 1e-5)
    is_flip = ((y - flipped).abs().flatten(1).amax(1) < 1e-5)
    assert torch.all(is_same ^ is_flip) and 0.35 < is_flip.float().mean().item() < 0.65
    # Grey images: the averaged matrix negates the pixel.
    g = torch.randn(200, 1, 4, 4)
    yg = pipe_with(1.0, lumaflip=1)(g)
    assert torch.all(((yg - g).abs().flatten(1).amax(1) < 1e-5) | ((yg + g).abs().flatten(1).amax(1) < 1e-5))

def test_hue_rotates_chroma_and_keeps_luma():
    torch.manual_seed(8)
    x = torch.randn(64, 3, 4, 4)
    y = pipe_with(1.0, hue=1)(x)
    assert torch.allclose(luma(y), luma(x), atol=1e-5)
    assert torch.allclose((y - luma(y)).norm(dim=1), (x - luma(x)).norm(dim=1), atol=1e-4)
    assert (y - x).abs().max() > 0.1
    g = torch.randn(4, 1, 4, 4)
    assert torch.equal(pipe_with(1.0, hue=1, saturation=1)(g), g)        # skipped for 1 channel

def test_saturation_scales_chroma_by_lognormal():
    torch.manual_seed(9)
    x = torch.randn(256, 3, 4, 4)
    y = pipe_with(1.0, saturation=1)(x)
    assert torch.allclose(luma(y), luma(x), atol=1e-5)
    ratio = ((y - luma(y)) / (x - luma(x))).flatten(1)
    assert (ratio - ratio[:, :1]).abs().max() < 1e-2
    assert abs(ratio[:, 0].log2().std().item() - 1.0) < 0.12

def test_color_pipeline_equals_direct_4x4_matrix():
    pipe = pipe_with(1.0, **augpipe_specs['color'])
    x = torch.randn(8, 3, 5, 5)
    torch.manual_seed(10)
    M = pipe._color_matrix(8, 3, 'cpu')
    torch.manual_seed(10)
    y = pipe(x)
    homog = torch.cat([x, torch.ones(8, 1, 5, 5)], dim=1)
    ref = torch.einsum('nij,njhw->nihw', M.double(), homog.double())[:, :3]
    assert torch.allclose(y.double(), ref, atol=1e-5)
    assert torch.allclose(M[:, 3], torch.tensor([0., 0, 0, 1]).expand(8, 4))

#----------------------------------------------------------------------------
# Filter, noise, cutout.

def test_filter_bank_partitions_frequencies():
    bank = AugmentPipe().Hz_fbank.double().numpy()
    assert bank.shape == (4, 43)
    total = bank.sum(0)
    delta = np.zeros(43)
    delta[21] = 1
    assert np.allclose(total, delta, atol=1e-6)                         # unit gains = identity
    assert np.allclose(bank, bank[:, ::-1], atol=1e-7)                  # zero phase
    response = lambda f, w: abs(np.sum(f * np.exp(-1j * w * (np.arange(43) - 21))))
    centres = [0.0, 3 * np.pi / 16, 3 * np.pi / 8, np.pi]               # one frequency inside each band
    for i, w in enumerate(centres):
        gains = [response(bank[j], w) for j in range(4)]
        assert int(np.argmax(gains)) == i and gains[i] > 0.6

def band_gains_for(t):
    """_band_gains with the drawn per-band gains t [N, 4] (every band fires)."""
    pipe = pipe_with(1.0, imgfilter=1)
    columns = iter(torch.log2(torch.as_tensor(t, dtype=torch.float32)).t())
    pipe._normal = lambda shape, device: next(columns)
    pipe._fires = lambda prob, n, device: torch.ones([n], dtype=torch.bool)
    return pipe._band_gains(len(t), 'cpu')

def reference_band_gains(t):
    """float64: each band's vector (t_i at band i, 1 elsewhere) scaled to unit expected power
    under the prior [10, 1, 1, 1] / 13, then the four vectors multiplied."""
    t = np.asarray(t, np.float64)
    prior = np.array([10., 1, 1, 1]) / 13
    norms = np.sqrt(prior * t ** 2 + (1 - prior))          # [N, 4]: band i's vector norm
    return t / norms.prod(axis=1, keepdims=True)

def test_band_gains_normalise_each_band_then_multiply():
    # The issue's example: bands 0 and 1 both double. Normalising the product instead gives 1.063.
    g = band_gains_for([[2., 2, 1, 1]])
    assert g[0, 0].item() == pytest.approx(0.99124, abs=1e-5)
    assert g[0, 0].item() == pytest.approx(26 / math.sqrt(688), rel=1e-6)
    t = torch.exp2(torch.randn(200, 4, generator=torch.Generator().manual_seed(3)))
    np.testing.assert_allclose(band_gains_for(t).double().numpy(), reference_band_gains(t.numpy()), rtol=2e-6)

def test_band_gains_single_band_keeps_expected_power():
    torch.manual_seed(11)
    pipe = pipe_with(0.2, imgfilter=1, imgfilter_bands=[0, 1, 0, 0])      # at most one band fires
    g = pipe._band_gains(500, 'cpu')
    prior = torch.tensor([10., 1, 1, 1]) / 13
    assert torch.allclose((prior * g.square()).sum(1), torch.ones(500), atol=1e-5)
    assert g[:, 1].std() > 0.1

def test_imgfilter_is_per_sample_separable_filter():
    pipe = pipe_with(1.0, imgfilter=1)
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(12)
    g = pipe._band_gains(3, 'cpu')
    torch.manual_seed(12)
    y = pipe(x)
    taps = (g @ pipe.Hz_fbank).double()
    idx = torch.arange(-21, 16 + 21).remainder(30)                    # reflect pad by 21 (> image size)
    idx = torch.where(idx >= 16, 30 - idx, idx)
    for n in range(3):
        xp = x[n].double()[:, idx][:, :, idx]
        ref = F.conv2d(xp.unsqueeze(1), torch.outer(taps[n], taps[n]).reshape(1, 1, 43, 43)).squeeze(1)
        assert torch.allclose(y[n].double(), ref, atol=1e-5)
    # Bands switched off: unit gains, and the bands sum to a delta.
    assert torch.allclose(pipe_with(1.0, imgfilter=1, imgfilter_bands=[0, 0, 0, 0])(x), x, atol=1e-5)

def test_noise_std_is_half_normal():
    torch.manual_seed(13)
    x = torch.zeros(512, 3, 16, 16)
    stds = pipe_with(1.0, noise=1)(x).flatten(1).std(1)
    assert abs(stds.mean().item() - 0.1 * math.sqrt(2 / math.pi)) < 0.008

def test_cutout_area():
    torch.manual_seed(14)
    x = torch.ones(512, 3, 16, 16)
    y = pipe_with(1.0, cutout=1)(x)
    zero_frac = (y == 0).float().flatten(1).mean(1)
    assert zero_frac.max() <= 0.25 and (zero_frac == 0.25).sum() > 50
    assert torch.all((y == 0) | (y == 1))
    # Boxes are clipped at the borders: E[area] = (0.4375)^2 for a centre uniform in [0, 1]^2.
    assert abs(zero_frac.mean().item() - 0.4375 ** 2) < 0.015
    assert torch.equal(y[:, :1].expand_as(y), y)                      # same box in every channel

def test_reflect_pad_any_size():
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(augment._reflect_pad(x, 2, 3, 4, 1), F.pad(x, [2, 3, 4, 1], mode='reflect'))
    big = augment._reflect_pad(x, 13, 0, 0, 9)                         # pads larger than the image
    assert big.shape == (2, 3, 14, 19)
    idx = torch.arange(-13, 6).remainder(10)
    assert torch.equal(big[:, :, :5], x[:, :, :, torch.where(idx >= 6, 10 - idx, idx)])

@pytest.mark.parametrize('op,expected', [
    ('aniso', lambda s: [[1 / s, 0, 0], [0, s, 0], [0, 0, 1]]),
    ('xfrac', lambda s: [[1, 0, -s * 16], [0, 1, -s * 16], [0, 0, 1]]),
    ('rotate', None),
])
def test_geometric_matrix_per_op(op, expected):
    pipe = pipe_with(1.0, **{op: 1})
    pipe._debug = 0.7
    G = pipe._geometric_matrix(1, 16, 16, 'cpu')[0]
    q = math.sqrt(2) * torch.erfinv(torch.tensor(0.4)).item()           # Phi^-1(0.7)
    if op == 'aniso':
        ref = torch.tensor(expected(2 ** (0.2 * q)))
    elif op == 'xfrac':
        ref = torch.tensor(expected(0.125 * q))
    else:                                                              # two rotations by 0.4 pi each
        th = 2 * 0.4 * math.pi
        ref = torch.tensor([[math.cos(th), math.sin(th), 0], [-math.sin(th), math.cos(th), 0], [0, 0, 1]])
    assert torch.allclose(G, ref, atol=1e-5)

def test_forward_scale_matches_analytic_image():
    size = 32
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing='ij')
    image = lambda u, v: torch.cos(0.3 * u - 0.25 * v)
    x = image(xx, yy).reshape(1, 1, size, size).repeat(2, 3, 1, 1)
    y = pipe_with(1.0, scale=1)(x, debug_percentile=0.9)
    s = 2 ** (0.2 * math.sqrt(2) * torch.erfinv(torch.tensor(0.8)).item())   # output(v) = input(v / s)
    ref = image(xx / s, yy / s)
    assert (y[:, :, 3:-3, 3:-3] - ref[3:-3, 3:-3]).abs().max() < 0.02

@pytest.mark.parametrize('sync_free', [False, True])
def test_mixed_batch_blit_and_resampled_samples(sync_free):
    pipe = AugmentPipe(rotate=1)
    pipe.sync_free = sync_free
    x = smooth_images(3, 3, 16)
    th = 0.5
    rot = torch.tensor([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    flip = torch.diag(torch.tensor([-1., 1, 1]))
    G = torch.stack([torch.eye(3), rot, flip])
    y = pipe._warp(x, G)
    assert torch.equal(y[0], x[0]) and torch.equal(y[2], x[2].flip(2))
    assert torch.allclose(y[1:2], pipe._resample(x[1:2], G[1:2], fit_margin=True), atol=1e-5)
