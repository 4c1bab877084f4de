"""DiffAugment plugin: methods.md section 5 tests, plus R1 (double backward) through the ops."""

import pytest
import torch

import plugins
from plugins import diffaug
from plugins.diffaug import (diff_augment, rand_brightness, rand_contrast, rand_cutout,
                             rand_saturation, rand_translation)

def _images(n=8, c=3, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, c, s, s], generator=g) * 1.8 - 0.9 + 0.05   # no exact zeros

def _shift(x, dy, dx):
    """x [C,H,W] shifted so that out[i, j] = x[i + dy, j + dx], zero outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[1:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    ys_src, xs_src = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    out[:, ys, xs] = x[:, ys_src, xs_src]
    return out

def test_empty_policy_is_identity():
    x = _images()
    assert torch.equal(diff_augment(x, ''), x)
    assert torch.equal(diff_augment(x, []), x)

@pytest.mark.parametrize('c,s', [(1, 8), (3, 16), (3, 32)])
def test_shapes_preserved(c, s):
    x = _images(4, c, s)
    assert diff_augment(x, 'color,translation,cutout').shape == x.shape

def test_brightness_adds_a_constant_per_image():
    torch.manual_seed(1)
    x = _images()
    d = rand_brightness(x) - x
    per_image = d.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image[:, 0].abs().max() <= 0.5
    assert per_image[:, 0].std() > 0     # different images, different offsets

def test_saturation_and_contrast_ranges():
    torch.manual_seed(2)
    x = _images(64)
    # Saturation scales the deviation from the channel mean by a factor in [0, 2).
    mean_c = x.mean(1, keepdim=True)
    k = ((rand_saturation(x) - mean_c) / (x - mean_c)).flatten(1)
    ok = (x - mean_c).abs().flatten(1) > 1e-3
    ks = torch.stack([k[i][ok[i]].median() for i in range(len(x))])
    assert ks.min() >= 0 and ks.max() < 2
    # Contrast: deviation from the image mean scaled by a factor in [0.5, 1.5).
    mean_i = x.mean([1, 2, 3], keepdim=True)
    k = ((rand_contrast(x) - mean_i) / (x - mean_i)).flatten(1)
    ok = (x - mean_i).abs().flatten(1) > 1e-3
    ks = torch.stack([k[i][ok[i]].median() for i in range(len(x))])
    assert ks.min() >= 0.5 - 1e-5 and ks.max() < 1.5 + 1e-5

def test_translation_is_a_zero_filled_integer_shift():
    torch.manual_seed(3)
    x = _images(16, 3, 16)
    y = rand_translation(x)
    max_shift = int(16 * 0.125 + 0.5)
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
                   if torch.equal(y[i], _shift(x[i], dy, dx))]
        assert len(matches) == 1, f'sample {i} is not a pure shift'
        seen.add(matches[0])
    assert len(seen) > 1

def test_cutout_zeroes_at_most_side_squared_per_channel():
    torch.manual_seed(4)
    for s in [8, 15, 16]:
        x = _images(32, 3, s)
        y = rand_cutout(x)
        side = int(s * 0.5 + 0.5)
        zeros = (y == 0).sum(dim=[2, 3])            # [N, C]
        assert zeros.max() <= side * side
        assert (zeros[:, 0:1] == zeros).all()       # same square in every channel
        assert zeros.float().mean() > 0.25 * side * side
        kept = y != 0
        assert torch.equal(y[kept], x[kept])

@pytest.mark.parametrize('op', [rand_brightness, rand_saturation, rand_contrast, rand_translation, rand_cutout])
def test_every_op_is_differentiable(op):
    torch.manual_seed(5)
    x = _images(4).requires_grad_(True)
    w = torch.randn_like(x)
    (op(x) * w).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

def test_r1_double_backward_through_policy():
    torch.manual_seed(6)
    D = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 16 * 16, 1))
    x = _images(4).requires_grad_(True)
    logits = D(diff_augment(x, 'color,translation,cutout'))
    grad, = torch.autograd.grad(logits.sum(), x, create_graph=True)
    r1 = grad.square().sum()
    r1.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters() if p.dim() > 1)

def test_plugin_activation_and_policy():
    opts = plugins.default_opts()
    assert diffaug.DiffAugPlugin.is_active('diffaug', [], opts)
    assert not diffaug.DiffAugPlugin.is_active('ada', [], opts)
    assert diffaug.DiffAugPlugin.is_active('ada', [], dict(opts, diffaug_policy='color'))
    assert diffaug.DiffAugPlugin.describe(dict(opts, aug='diffaug')) == 'diffaug-color-translation-cutout'
    with pytest.raises(ValueError, match='unknown DiffAugment op'):
        diffaug.DiffAugPlugin.validate('diffaug', [], dict(opts, diffaug_policy='color,zoom'))
    # ADA then DiffAugment: resolve() orders ADA (20) before DiffAugment (30).
    active = plugins.resolve('diffaug', [], dict(opts, aug='diffaug'))
    assert [c.name for c in active] == ['diffaug']
    p = diffaug.DiffAugPlugin(dict(opts, aug='diffaug', diffaug_policy=''), 'cpu')
    x = _images()
    assert torch.equal(p.augment_D_input(x, True, 'Dmain'), x)

@pytest.mark.slow
def test_training_loop_ada_plus_diffaugment(tmp_path, monkeypatch):
    from plugin_train_util import make_dataset, tiny_config, train
    calls = []
    original = diffaug.diff_augment
    monkeypatch.setattr(diffaug, 'diff_augment', lambda x, policy: calls.append(x.shape) or original(x, policy))
    c = tiny_config(make_dataset(tmp_path / 'data'), tmp_path / 'run', aug='ada', diffaug_policy='color,translation,cutout')
    assert c.plugin_names == ['ada', 'diffaug']
    result, snapshot = train(c)
    assert result.batch_idx == 3
    # Every D input went through DiffAugment: Gmain fakes, Dmain fakes + reals, Dreg reals (first iteration).
    assert len(calls) == 3 * (1 + 2) + 1
    assert torch.isfinite(result.loss.pl_mean)
