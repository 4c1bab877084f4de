"""upfirdn2d: reference against a naive numpy definition, closed forms and float64 finite
differences (first and second order) for the combinations the networks use; the CUDA kernel's
pixel math run on the CPU through nvcc, the CUDA autograd wiring (separable passes, adjoint
padding) driven by that host build; CUDA vs reference on a GPU (skipped without one)."""

import os
import subprocess

import numpy as np
import pytest
import torch

from helpers import compile_host_harness
from torch_utils.ops import upfirdn2d as U

OPS_DIR = os.path.dirname(os.path.abspath(U.__file__))


def _naive(x, f, up, down, pad, flip, gain):
    """The definition with numpy loops: zero-insert, pad/crop, convolve, subsample."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f) * gain        # separable = the outer product, gain sqrt(g) per axis
    else:
        f = f * gain
    upx, upy = up
    downx, downy = down
    x0, x1, y0, y1 = pad
    n, c, h, w = x.shape
    u = np.zeros([n, c, h * upy, w * upx])
    u[:, :, ::upy, ::upx] = x
    big = np.zeros([n, c, h * upy + abs(y0) + abs(y1) + 2, w * upx + abs(x0) + abs(x1) + 2])
    oy, ox = abs(y0) + 1, abs(x0) + 1
    big[:, :, oy:oy + h * upy, ox:ox + w * upx] = u
    v = big[:, :, oy - y0: oy + h * upy + y1, ox - x0: ox + w * upx + x1]
    k = f if flip else f[::-1, ::-1]        # correlation kernel
    fh, fw = k.shape
    out = np.zeros([n, c, v.shape[2] - fh + 1, v.shape[3] - fw + 1])
    for i in range(fh):
        for j in range(fw):
            out += k[i, j] * v[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, ::downy, ::downx]


CASES = [   # (f, up, down, padding, flip, gain)
    ([1, 3, 3, 1], 2, 1, [2, 1, 2, 1], False, 4),           # upsample2d of the synthesis
    ([1, 3, 3, 1], 1, 2, [1, 1, 1, 1], False, 1),           # downsample2d of the discriminator
    ([1, 3, 3, 1], 1, 1, [2, 1, 2, 1], True, 1),            # filter2d, flipped
    ([1, 3, 3, 1], 2, 1, [1, 1, 1, 1], False, 4),           # after a transposed conv
    ([[1, 2, 0], [0, -1, 3]], [2, 1], [1, 3], [3, -1, 0, 2], False, 2.5),   # asymmetric, crops
    ([1, 2, 3, 4, 5, 6, 7, 8], 2, 2, [4, 3, 4, 3], True, 2),  # 8 taps -> separable
    (None, 3, 2, [0, 1, -1, 2], False, 1),                   # identity filter
]


def _make(case, seed=0, shape=(2, 3, 5, 6)):
    ftaps, up, down, pad, flip, gain = case
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    f = None if ftaps is None else U.setup_filter(ftaps, normalize=False).double()
    return x, f, U._pair(up, 'up'), U._pair(down, 'down'), U._parse_padding(pad), flip, gain

#----------------------------------------------------------------------------

def test_setup_filter():
    f = U.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert U.setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4)
    sep = U.setup_filter(list(range(1, 9)))
    assert sep.shape == (8,) and sep.sum().item() == pytest.approx(1)
    assert U.setup_filter(list(range(1, 9)), gain=4).sum().item() == pytest.approx(2)   # sqrt(4) per pass
    assert torch.equal(U.setup_filter([1, 2], flip_filter=True, normalize=False), torch.tensor([[4., 2], [2, 1]]))
    assert U.setup_filter(None).shape == (1, 1)
    with pytest.raises(ValueError):
        U.setup_filter(np.zeros([2, 2, 2]))


@pytest.mark.parametrize('case', CASES)
def test_reference_matches_naive_definition(case):
    x, f, up, down, pad, flip, gain = _make(case)
    y = U.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl='ref')
    want = _naive(x.numpy(), np.ones([1, 1]) if f is None else f.numpy(), up, down, pad, flip, gain)
    assert y.shape == want.shape
    assert np.abs(y.numpy() - want).max() < 1e-12


def test_output_shape_formula():
    x = torch.zeros(1, 1, 7, 5)
    f = U.setup_filter([1, 3, 3, 1])
    y = U.upfirdn2d(x, f, up=[3, 2], down=[2, 1], padding=[1, 2, 0, 3])
    assert y.shape == (1, 1, (7 * 2 + 0 + 3 - 4) // 1 + 1, (5 * 3 + 1 + 2 - 4) // 2 + 1)
    with pytest.raises(ValueError, match='empty'):
        U.upfirdn2d(torch.zeros(1, 1, 2, 2), f, padding=-1)


def test_impulse_response_and_flip():
    """Convolution places f at the impulse; flip_filter (correlation) places it reversed."""
    f = torch.tensor([[1., 2, 3], [4, 5, 6], [7, 8, 9]])
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    assert torch.equal(U.filter2d(x, f, impl='ref')[0, 0, 1:4, 1:4], f)
    assert torch.equal(U.filter2d(x, f, flip_filter=True, impl='ref')[0, 0, 1:4, 1:4], f.flip([0, 1]))
    assert torch.equal(U.filter2d(x, f, gain=2, impl='ref')[0, 0, 1:4, 1:4], 2 * f)


def test_resampling_wrappers_preserve_constants():
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.full([1, 2, 8, 8], 3.0, dtype=torch.float64)
    up = U.upsample2d(x, f)
    down = U.downsample2d(x, f)
    flt = U.filter2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4) and flt.shape == x.shape
    for y in (up[..., 2:-2, 2:-2], down[..., 1:-1, 1:-1], flt[..., 2:-2, 2:-2]):
        assert torch.allclose(y, torch.full_like(y, 3.0), atol=1e-12)
    # Asymmetric factors.
    assert U.upsample2d(x, f, up=[2, 1]).shape == (1, 2, 8, 16)
    assert U.downsample2d(x, f, down=[1, 2]).shape == (1, 2, 4, 8)


@pytest.mark.parametrize('case', CASES)
def test_reference_gradcheck_and_gradgradcheck(case):
    x, f, up, down, pad, flip, gain = _make(case, shape=(1, 1, 3, 4))
    x.requires_grad_(True)
    fn = lambda x: U.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl='ref')
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('case', CASES)
def test_adjoint_padding_formula(case):
    """The CUDA backward's upfirdn2d (swapped up/down, flipped filter, _grad_padding) equals
    autograd's gradient of the reference."""
    x, f, up, down, pad, flip, gain = _make(case)
    x.requires_grad_(True)
    y = U._upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    dy = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, dy)
    fw, fh = U._filter_size(f)
    gx = U._grad_padding(x.shape[3], y.shape[3], up[0], down[0], pad[0], fw)
    gy = U._grad_padding(x.shape[2], y.shape[2], up[1], down[1], pad[2], fh)
    got = U._upfirdn2d_ref(dy, f, up=down, down=up, padding=(*gx, *gy), flip_filter=not flip, gain=gain)
    assert got.shape == x.shape
    assert (got - want).abs().max() < 1e-12

#----------------------------------------------------------------------------
# The CUDA kernel's per-pixel math (upfirdn2d_element in upfirdn2d.cu), compiled for the host.

HARNESS = r'''
#include "upfirdn2d.cu"
#include <cstdio>
#include <cstdlib>
#include <vector>
int main(int argc, char** argv) {
    if (argc != 21) return 2;
    UpfirdnArgs p;
    int a = 1;
    p.n = atoll(argv[a++]); p.c = atoll(argv[a++]); p.h = atoll(argv[a++]); p.w = atoll(argv[a++]);
    for (int d = 0; d < 4; ++d) p.sx[d] = atoll(argv[a++]);
    p.fh = atoi(argv[a++]); p.fw = atoi(argv[a++]);
    p.upx = atoi(argv[a++]); p.upy = atoi(argv[a++]); p.downx = atoi(argv[a++]); p.downy = atoi(argv[a++]);
    int padx0 = atoi(argv[a++]), padx1 = atoi(argv[a++]), pady0 = atoi(argv[a++]), pady1 = atoi(argv[a++]);
    p.flip = atoi(argv[a++]) != 0; p.gain = atof(argv[a++]);
    p.padx0 = padx0; p.pady0 = pady0;
    p.oh = (p.h * p.upy + pady0 + pady1 - p.fh) / p.downy + 1;
    p.ow = (p.w * p.upx + padx0 + padx1 - p.fw) / p.downx + 1;
    p.sy[3] = 1; p.sy[2] = p.ow; p.sy[1] = p.ow * p.oh; p.sy[0] = p.ow * p.oh * p.c;
    int64_t span = 1 + (p.n - 1) * p.sx[0] + (p.c - 1) * p.sx[1] + (p.h - 1) * p.sx[2] + (p.w - 1) * p.sx[3];
    std::vector<double> x(span), f(p.fh * p.fw);
    for (auto& v : x) if (scanf("%lf", &v) != 1) return 3;
    for (auto& v : f) if (scanf("%lf", &v) != 1) return 3;
    p.x = x.data(); p.f = f.data();
    std::vector<double> y(p.n * p.c * p.oh * p.ow);
    for (int64_t i = 0; i < int64_t(y.size()); ++i) {
        int64_t off, off32;
        double v = upfirdn2d_element<double>(p, i, &off);
        if (v != upfirdn2d_element<double, int32_t>(p, int32_t(i), &off32) || off != off32) return 4;   // int32 path
        double w = v;   // the specialised kernel the launcher would pick, if any
        switch (select_variant(p)) {
            case kUp2Fs4:    w = upfirdn2d_element<double, int32_t, 2, 1, 4>(p, int32_t(i), &off32); break;
            case kDown2Fs4:  w = upfirdn2d_element<double, int32_t, 1, 2, 4>(p, int32_t(i), &off32); break;
            case kFilterFs4: w = upfirdn2d_element<double, int32_t, 1, 1, 4>(p, int32_t(i), &off32); break;
            default: break;
        }
        if (w != v || off != off32) return 5;
        y[off] = v;
    }
    printf("%lld %lld %d\n", (long long)p.oh, (long long)p.ow, int(select_variant(p)));
    for (double v : y) printf("%.17g\n", v);
    return 0;
}
'''


@pytest.fixture(scope='module')
def host_kernel(tmp_path_factory):
    return compile_host_harness(tmp_path_factory, 'upfirdn2d_host', HARNESS, OPS_DIR)


def _host_upfirdn2d(exe, x, f2d, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
    """Run the host build on x (any dense layout; its storage is passed with its strides)."""
    x = x.detach().double()
    order = sorted(range(4), key=lambda d: -x.stride(d))
    storage = x.permute(order).flatten()
    args = [exe, *map(str, x.shape), *map(str, x.stride()), str(f2d.shape[0]), str(f2d.shape[1]),
            str(upx), str(upy), str(downx), str(downy), str(padx0), str(padx1), str(pady0), str(pady1),
            str(int(flip)), repr(float(gain))]
    text = '\n'.join(repr(v) for v in torch.cat([storage, f2d.double().flatten()]).tolist())
    res = subprocess.run(args, input=text, capture_output=True, text=True, check=True)
    vals = res.stdout.split()
    oh, ow = int(vals[0]), int(vals[1])
    _host_upfirdn2d.variants_seen.add(int(vals[2]))
    return torch.tensor([float(v) for v in vals[3:]], dtype=torch.float64).reshape(x.shape[0], x.shape[1], oh, ow)


_host_upfirdn2d.variants_seen = set()


class _HostPlugin:
    """Stands in for the compiled extension: same call signature, runs the host build."""

    def __init__(self, exe):
        self.exe = exe
        self.calls = 0

    def upfirdn2d(self, x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
        self.calls += 1
        return _host_upfirdn2d(self.exe, x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain).to(x.dtype)


@pytest.mark.parametrize('case', CASES)
def test_kernel_pixel_math_on_host(host_kernel, case):
    x, f, up, down, pad, flip, gain = _make(case)
    f2d = torch.ones(1, 1, dtype=torch.float64) if f is None else (f if f.ndim == 2 else torch.outer(f, f))
    want = U._upfirdn2d_ref(x, f2d, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
        got = _host_upfirdn2d(host_kernel, xin, f2d, *up, *down, *pad, flip, gain)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-12


def test_kernel_specialisations_exercised(host_kernel):
    """The 4x4-filter fast paths (up 2, down 2, plain filter) agree with the generic kernel
    (the harness exits non-zero otherwise) and each is reached by some case."""
    _host_upfirdn2d.variants_seen.clear()
    for case in CASES:
        x, f, up, down, pad, flip, gain = _make(case)
        f2d = torch.ones(1, 1, dtype=torch.float64) if f is None else (f if f.ndim == 2 else torch.outer(f, f))
        _host_upfirdn2d(host_kernel, x, f2d, *up, *down, *pad, flip, gain)
    assert _host_upfirdn2d.variants_seen >= {0, 1, 2, 3}


def test_cuda_autograd_wiring_with_host_kernel(host_kernel, monkeypatch):
    """The CUDA path's Function (separable passes, backward via the adjoint upfirdn2d, double
    backward) with the host build standing in for the GPU kernel, against the reference."""
    plugin = _HostPlugin(host_kernel)
    monkeypatch.setattr(U, '_load_plugin', lambda: plugin)
    for case in (CASES[0], CASES[1], CASES[4], CASES[5], CASES[6]):
        x, f, up, down, pad, flip, gain = _make(case, shape=(1, 2, 4, 5))
        x.requires_grad_(True)
        fn = U._upfirdn2d_cuda(up=tuple(up), down=tuple(down), padding=tuple(pad), flip_filter=flip, gain=float(gain))
        y = fn.apply(x, f)
        ref = U._upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        assert (y - ref).abs().max() < 1e-12
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        (dx_ref,) = torch.autograd.grad(ref, x, dy, create_graph=True)
        assert (dx - dx_ref).abs().max() < 1e-12
        assert torch.autograd.gradcheck(lambda t: fn.apply(t, f), (x,), eps=1e-6, atol=1e-7)
    assert plugin.calls > 0

#----------------------------------------------------------------------------
# CUDA op vs reference (needs a GPU). Tolerances relative to the output's max magnitude:
# fp32 1e-5, fp16 5e-3 (four fp16 roundings on the way to the second derivative).

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float16, 5e-3)])
@pytest.mark.parametrize('case', CASES)
def test_cuda_matches_reference(case, dtype, tol):
    assert U._load_plugin() is not None, 'upfirdn2d CUDA extension failed to build'
    x, f, up, down, pad, flip, gain = _make(case, shape=(4, 8, 16, 16))
    x = x.to('cuda', dtype)
    f = None if f is None else (f / f.sum()).float().cuda()     # normalised: no fp16 overflow
    def run(impl):
        xx = x.clone().requires_grad_(True)
        y = U.upfirdn2d(xx, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl)
        # The op is linear: make the first gradient depend on x so a second order exists.
        (dx,) = torch.autograd.grad((y.float() ** 2).sum() / 2, xx, create_graph=True)
        (d2,) = torch.autograd.grad((dx.float() ** 2).sum(), xx)
        return [t.float() for t in (y, dx, d2)]
    for name, g, w in zip(('y', 'dx', 'd2'), run('cuda'), run('ref')):
        err = (g - w).abs().max().item() / (w.abs().max().item() + 1e-6)
        assert err < tol, (case, dtype, name, err)


@cuda
@pytest.mark.gpu
def test_cuda_channels_last_and_gradcheck():
    assert U._load_plugin() is not None
    f = U.setup_filter([1, 3, 3, 1], device='cuda')
    x = torch.randn(2, 3, 8, 8, device='cuda', dtype=torch.float64)
    y = U.upsample2d(x.to(memory_format=torch.channels_last), f)
    assert torch.allclose(y, U.upsample2d(x, f, impl='ref'), rtol=1e-12, atol=1e-12)
    xs = torch.randn(1, 2, 5, 4, device='cuda', dtype=torch.float64, requires_grad=True)
    fn = lambda t: U.downsample2d(t, f.double(), impl='cuda')
    assert torch.autograd.gradcheck(fn, (xs,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (xs,), eps=1e-6, atol=1e-7)
