"""conv2d_resample against a direct step-by-step computation; conv2d_gradfix first/second
derivatives and no_weight_gradients; grid_sample_gradfix against torch and finite differences
(incl. the double backward torch lacks); fma with broadcasting."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix
from torch_utils.ops import upfirdn2d as U


@contextlib.contextmanager
def gradfix_enabled(value=True):
    old = conv2d_gradfix.enabled, conv2d_gradfix.cpu_enabled
    conv2d_gradfix.enabled = conv2d_gradfix.cpu_enabled = value
    try:
        yield
    finally:
        conv2d_gradfix.enabled, conv2d_gradfix.cpu_enabled = old


def _rand(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

#----------------------------------------------------------------------------
# conv2d_resample.

def _direct(x, w, f, up, down, pad, groups, flip_weight):
    """Upsample (zero insertion + f * up^2), conv, downsample (f), with the padding widened by
    the filter's support: half of it (rounded up) before, the rest after."""
    fw = f.shape[-1] if f is not None else 1
    p0 = p1 = pad
    if up > 1:
        p0 += (fw + up - 1) // 2
        p1 += (fw - up) // 2
    if down > 1:
        p0 += (fw - down + 1) // 2
        p1 += (fw - down) // 2
    x = U._upfirdn2d_ref(x, f if up > 1 else None, up=(up, up), padding=(p0, p1, p0, p1), gain=up * up)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = U._upfirdn2d_ref(x, f, down=(down, down))
    return x


RESAMPLE_CASES = [  # (up, down, kernel, groups)
    (2, 1, 3, 1),   # synthesis conv0
    (1, 2, 3, 1),   # discriminator conv1
    (1, 2, 1, 1),   # discriminator skip
    (2, 1, 1, 1),
    (1, 1, 3, 1),   # plain conv
    (2, 1, 3, 3),   # fused modulated conv: one group per sample
    (1, 2, 3, 3),
    (2, 2, 3, 1),
]


@pytest.mark.parametrize('flip_weight', [True, False])
@pytest.mark.parametrize('up,down,k,groups', RESAMPLE_CASES)
def test_conv2d_resample_matches_direct(up, down, k, groups, flip_weight):
    f = U.setup_filter([1, 3, 3, 1]).double()
    x = _rand(2, 6, 8, 8)
    w = _rand(9, 6 // groups, k, k, seed=1)
    y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, groups=groups,
                                        flip_weight=flip_weight)
    assert y.shape == (2, 9, 8 * up // down, 8 * up // down)
    want = _direct(x, w, f, up, down, k // 2, groups, flip_weight)
    assert (y - want).abs().max() < 1e-12


def test_conv2d_resample_plain_is_conv2d_and_validates():
    x = _rand(1, 2, 5, 5)
    w = _rand(3, 2, 3, 3, seed=1)
    assert torch.allclose(conv2d_resample.conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1), atol=1e-12)
    with pytest.raises(ValueError, match='filter'):
        conv2d_resample.conv2d_resample(x, w, up=2)


def test_conv2d_resample_gradgradcheck_through_gradfix():
    f = U.setup_filter([1, 3, 3, 1]).double()
    x = _rand(1, 1, 4, 4).requires_grad_(True)
    w = _rand(2, 1, 3, 3, seed=1).requires_grad_(True)
    with gradfix_enabled():
        for up, down in ((2, 1), (1, 2)):
            fn = lambda x, w: conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=1)
            assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-7)
            assert torch.autograd.gradgradcheck(fn, (x, w), eps=1e-6, atol=1e-7, fast_mode=True)

#----------------------------------------------------------------------------
# conv2d_gradfix.

CONV_CASES = [  # (transpose, in_ch, out_ch, k, stride, padding, output_padding, groups)
    (False, 2, 3, 3, 1, 1, 0, 1),
    (False, 2, 4, 3, 2, 1, 0, 2),
    (False, 2, 2, 1, 1, 0, 0, 2),
    (True, 2, 3, 3, 2, 0, 1, 1),
    (True, 2, 4, 3, 2, 1, 0, 2),
]


def _conv_inputs(case):
    transpose, cin, cout, k, stride, padding, out_pad, groups = case
    x = _rand(1, cin, 4, 3).requires_grad_(True)
    wshape = (cin, cout // groups, k, k) if transpose else (cout, cin // groups, k, k)
    w = _rand(*wshape, seed=1).requires_grad_(True)
    b = _rand(cout, seed=2).requires_grad_(True)
    if transpose:
        fn = lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                                                             output_padding=out_pad, groups=groups)
        native = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                                                    output_padding=out_pad, groups=groups)
    else:
        fn = lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
        native = lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
    return (x, w, b), fn, native


@pytest.mark.parametrize('case', CONV_CASES)
def test_gradfix_conv_forward_and_derivatives(case):
    args, fn, native = _conv_inputs(case)
    with gradfix_enabled():
        y = fn(*args)
        assert y.grad_fn is not None and 'Conv2dOp' in type(y.grad_fn).__name__
        assert torch.allclose(y, native(*args), atol=1e-12)
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)
        assert torch.autograd.gradgradcheck(fn, args, eps=1e-6, atol=1e-7, fast_mode=True)


def test_gradfix_disabled_is_native():
    args, fn, native = _conv_inputs(CONV_CASES[0])
    with gradfix_enabled(False):
        y = fn(*args)
    assert 'Conv2dOp' not in type(y.grad_fn).__name__
    assert torch.equal(y, native(*args))


@pytest.mark.parametrize('case', [CONV_CASES[1], CONV_CASES[3]])
def test_no_weight_gradients_r1_pattern(case):
    """R1 pattern: grad wrt the input inside no_weight_gradients(), penalty backward outside.
    The weight receives no first-order gradient inside the block, and the penalty's weight
    gradient equals the one torch's native double backward gives."""
    (x, w, b), fn, native = _conv_inputs(case)

    def penalty(conv, use_block):
        x.grad = w.grad = b.grad = None
        y = torch.tanh(conv(x, w, b))          # nonlinear so the penalty depends on w
        block = conv2d_gradfix.no_weight_gradients() if use_block else contextlib.nullcontext()
        with block:
            (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (gx.square().sum()).backward()
        return w.grad.clone(), x.grad.clone()

    want_w, want_x = penalty(native, False)
    with gradfix_enabled():
        got_w, got_x = penalty(fn, True)
        assert torch.allclose(got_w, want_w, rtol=1e-10, atol=1e-12)
        assert torch.allclose(got_x, want_x, rtol=1e-10, atol=1e-12)
        # Inside the block a plain backward leaves the weight without gradient.
        x.grad = w.grad = None
        with conv2d_gradfix.no_weight_gradients():
            fn(x, w, b).sum().backward()
        assert w.grad is None and x.grad is not None
        assert not conv2d_gradfix.weight_gradients_disabled    # restored on exit

#----------------------------------------------------------------------------
# grid_sample_gradfix.

def _grid_inputs(seed=0):
    x = _rand(2, 3, 5, 6, seed=seed).requires_grad_(True)
    g = torch.Generator().manual_seed(seed + 1)
    grid = (torch.rand(2, 4, 3, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    return x, grid


def test_grid_sample_forward_matches_torch():
    x, grid = _grid_inputs()
    want = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    assert torch.allclose(grid_sample_gradfix.grid_sample(x, grid), want, atol=1e-14)
    assert torch.allclose(grid_sample_gradfix._grid_sample_ref(x, grid), want, atol=1e-12)
    with pytest.raises(ValueError, match='grid'):
        grid_sample_gradfix.grid_sample(x, grid[..., :1])


def test_grid_sample_gradcheck_and_gradgradcheck():
    x, grid = _grid_inputs()
    assert torch.autograd.gradcheck(grid_sample_gradfix.grid_sample, (x, grid), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(grid_sample_gradfix.grid_sample, (x, grid), eps=1e-6, atol=1e-7)


def test_grid_sample_r1_pattern_vs_differentiable_reference():
    """Gradient wrt the image only (as R1 takes it), then its penalty's backward."""
    x, grid = _grid_inputs(seed=3)
    grid = grid.detach()
    w = _rand(2, 3, 4, 3, seed=5)

    def penalty(sample):
        x.grad = None
        y = sample(x, grid)
        (gx,) = torch.autograd.grad((torch.sin(y) * w).sum(), x, create_graph=True)
        gx.square().sum().backward()
        return x.grad.clone()

    assert torch.allclose(penalty(grid_sample_gradfix.grid_sample), penalty(grid_sample_gradfix._grid_sample_ref),
                          atol=1e-12)


def test_grid_sample_native_lacks_double_backward():
    """Documents why the gradfix exists (skips if a future torch adds the derivative)."""
    x, grid = _grid_inputs()
    y = F.grid_sample(x, grid, align_corners=False)
    (gg,) = torch.autograd.grad(y.square().sum(), grid, create_graph=True)
    try:
        gg.sum().backward()
    except RuntimeError as exc:
        assert 'not implemented' in str(exc)
    else:
        pytest.skip('this torch version differentiates grid_sample twice natively')

#----------------------------------------------------------------------------
# fma.

def test_fma_values_and_broadcast_gradients():
    a = _rand(2, 1, 3).requires_grad_(True)
    b = _rand(4, 1, seed=1).requires_grad_(True)
    c = _rand(3, seed=2).requires_grad_(True)
    y = fma.fma(a, b, c)
    assert y.shape == (2, 4, 3)
    assert torch.allclose(y, a * b + c, atol=1e-15)
    assert torch.autograd.gradcheck(fma.fma, (a, b, c), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fma.fma, (a, b, c), eps=1e-6, atol=1e-7)
    y.sum().backward()
    assert torch.allclose(c.grad, torch.full([3], 8.0, dtype=torch.float64))     # 2 * 4 broadcast copies
    assert torch.allclose(b.grad, torch.full([4, 1], a.detach().sum().item(), dtype=torch.float64))
    assert torch.allclose(a.grad, torch.full([2, 1, 3], b.detach().sum().item(), dtype=torch.float64))
