"""bias_act: reference against closed forms and float64 finite differences (first and second
order, every activation), the CUDA kernel's element math run on the CPU through nvcc, and the
CUDA op against the reference on a GPU (skipped without one)."""

import math
import os
import subprocess

import pytest
import torch

from helpers import compile_host_harness
from torch_utils.ops import bias_act as ba

ACTS = list(ba.activation_funcs)
OPS_DIR = os.path.dirname(os.path.abspath(ba.__file__))


def _inputs(shape=(2, 3, 4), dim=1, seed=0, dtype=torch.float64, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    b = torch.randn([shape[dim]], generator=g, dtype=torch.float64) * 0.5
    # Keep away from the kinks of relu/lrelu/elu/selu where finite differences are meaningless.
    s = x + b.reshape([-1 if i == dim else 1 for i in range(len(shape))])
    x = torch.where(s.abs() < 0.05, x + 0.2, x)
    return x.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)

#----------------------------------------------------------------------------
# Table and closed forms.

def test_activation_table_fields_and_defaults():
    for name, spec in ba.activation_funcs.items():
        for field in ('func', 'def_alpha', 'def_gain', 'cuda_idx', 'ref', 'has_2nd_grad'):
            assert field in spec, (name, field)
        assert spec.def_gain == getattr(spec, 'def_gain')     # attribute access, as pickles use it
    assert ba.activation_funcs['lrelu'].def_alpha == 0.2
    for name in ('relu', 'lrelu', 'swish'):
        assert ba.activation_funcs[name].def_gain == pytest.approx(math.sqrt(2))
    for name in ('linear', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus'):
        assert ba.activation_funcs[name].def_gain == 1
    assert sorted(s.cuda_idx for s in ba.activation_funcs.values()) == list(range(1, 10))


def test_closed_form_values():
    x = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)      # dim=1 has length 2
    b = torch.tensor([0.5, -0.5], dtype=torch.float64)
    s = (x + b)[0]                                            # [-0.5, 1.5]
    r2 = math.sqrt(2)
    expect = {
        'linear':   [-0.5, 1.5],
        'relu':     [0.0, 1.5 * r2],
        'lrelu':    [-0.5 * 0.2 * r2, 1.5 * r2],
        'tanh':     [math.tanh(-0.5), math.tanh(1.5)],
        'sigmoid':  [1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-1.5))],
        'elu':      [math.exp(-0.5) - 1, 1.5],
        'selu':     [1.0507009873554805 * 1.6732632423543772 * (math.exp(-0.5) - 1), 1.0507009873554805 * 1.5],
        'softplus': [math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.5))],
        'swish':    [r2 * -0.5 / (1 + math.exp(0.5)), r2 * 1.5 / (1 + math.exp(-1.5))],
    }
    for act, values in expect.items():
        y = ba.bias_act(x, b, act=act)
        assert torch.allclose(y[0], torch.tensor(values, dtype=torch.float64), rtol=1e-12, atol=1e-12), act
    assert s.tolist() == [-0.5, 1.5]
    # Explicit alpha / gain / clamp.
    y = ba.bias_act(x, b, act='lrelu', alpha=0.1, gain=3.0, clamp=4.0)
    assert torch.allclose(y[0], torch.tensor([-0.15, 4.0], dtype=torch.float64))


def test_dim_and_no_bias():
    x, _ = _inputs((2, 3, 5), dim=2)
    b = torch.arange(5, dtype=torch.float64)
    y = ba.bias_act(x, b, dim=2, act='relu', gain=1.0)
    assert torch.equal(y, torch.relu(x + b))
    assert torch.equal(ba.bias_act(x, act='tanh'), torch.tanh(x))
    with pytest.raises(ValueError, match='unknown activation'):
        ba.bias_act(x, act='gelu2')
    with pytest.raises(ValueError, match='shape'):
        ba.bias_act(x, torch.zeros(4, dtype=torch.float64), dim=1)


def test_cuda_impl_on_cpu_tensor_is_reference():
    x, b = _inputs()
    assert torch.equal(ba.bias_act(x, b, act='lrelu', impl='cuda'), ba.bias_act(x, b, act='lrelu', impl='ref'))

#----------------------------------------------------------------------------
# Derivatives against float64 finite differences.

@pytest.mark.parametrize('act', ACTS)
def test_ref_gradcheck_and_gradgradcheck(act):
    x, b = _inputs()
    x.requires_grad_(True)
    b.requires_grad_(True)
    fn = lambda x, b: ba.bias_act(x, b, dim=1, act=act, impl='ref')
    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('act', ['lrelu', 'tanh', 'swish', 'linear'])
def test_ref_gradcheck_with_clamp(act):
    x, b = _inputs()
    y = ba.bias_act(x, b, act=act, clamp=None).abs().flatten().sort().values
    i = len(y) // 2
    clamp = float(y[i - 1] + y[i]) / 2       # half the outputs saturate, none sits on the edge
    assert y[i] - y[i - 1] > 1e-4
    x.requires_grad_(True)
    b.requires_grad_(True)
    fn = lambda x, b: ba.bias_act(x, b, act=act, clamp=clamp, impl='ref')
    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-6, rtol=1e-5)

#----------------------------------------------------------------------------
# The CUDA kernel's per-element math (bias_act_element in bias_act.cu), compiled for the host
# with nvcc and run on the CPU: checks the derivative formulas of the kernel without a GPU.

HARNESS = r'''
#include "bias_act.cu"
#include <cstdio>
#include <cstdlib>
#include <vector>
template <typename T> T from_double(double v);
template <> float from_double<float>(double v) { return float(v); }
template <> double from_double<double>(double v) { return v; }
template <> __half from_double<__half>(double v) { return __float2half_rn(float(v)); }
template <typename T> int run(char** argv) {
    BiasActArgs p;
    p.act = atoi(argv[2]); p.order = atoi(argv[3]);
    p.alpha = atof(argv[4]); p.gain = atof(argv[5]); p.clamp = atof(argv[6]);
    p.numel = atoll(argv[7]); p.bias_len = atoll(argv[8]); p.bias_stride = atoll(argv[9]);
    int has_x = atoi(argv[10]), has_y = atoi(argv[11]);
    auto read = [](int64_t n) { std::vector<T> v(n); for (auto& e : v) { double d; if (scanf("%lf", &d) != 1) exit(3); e = from_double<T>(d); } return v; };
    std::vector<T> in = read(p.numel), bias = read(p.bias_len);
    std::vector<T> xr = read(has_x ? p.numel : 0), yr = read(has_y ? p.numel : 0);
    p.in = in.data(); p.bias = p.bias_len ? bias.data() : nullptr;
    p.xref = has_x ? xr.data() : nullptr; p.yref = has_y ? yr.data() : nullptr;
    for (int64_t i = 0; i < p.numel; ++i) {
        double v = double(bias_act_element<T>(p, i));
        if (v != double(bias_act_element<T, uint32_t>(p, uint32_t(i)))) return 4;   // 32-bit index path
        printf("%.17g\n", v);
    }
    return 0;
}
int main(int argc, char** argv) {
    if (argc != 12) return 2;
    int dtype = atoi(argv[1]);
    return dtype == 3 ? run<double>(argv) : dtype == 1 ? run<__half>(argv) : run<float>(argv);
}
'''


@pytest.fixture(scope='module')
def host_kernel(tmp_path_factory):
    return compile_host_harness(tmp_path_factory, 'bias_act_host', HARNESS, OPS_DIR)


def _run_host(exe, dtype_id, act, order, alpha, gain, clamp, g, bias, xref, yref, dim_stride):
    act_idx = ba.activation_funcs[act].cuda_idx if isinstance(act, str) else int(act)
    args = [exe, str(dtype_id), str(act_idx), str(order), repr(alpha), repr(gain),
            repr(clamp), str(g.numel()), str(bias.numel() if bias is not None else 0), str(dim_stride),
            str(int(xref is not None)), str(int(yref is not None))]
    data = [g.flatten()] + [t.flatten() for t in (bias, xref, yref) if t is not None]
    text = '\n'.join(repr(v) for v in torch.cat(data).tolist())
    res = subprocess.run(args, input=text, capture_output=True, text=True, check=True)
    return torch.tensor([float(v) for v in res.stdout.split()], dtype=torch.float64).reshape(g.shape)


@pytest.mark.parametrize('clamp', [None, 1.3])
def test_kernel_element_math_on_host(host_kernel, clamp):
    """Orders 0/1/2 of the kernel vs autograd on the reference, in float64 and float32."""
    for act in ACTS:
        spec = ba.activation_funcs[act]
        x, b = _inputs((2, 3, 4), seed=1)
        if clamp is not None:   # keep values off the clamp boundary
            y0 = ba.bias_act(x, b, act=act)
            x = torch.where((y0.abs() - clamp).abs() < 0.05, x * 0.8, x)
        alpha, gain = float(spec.def_alpha), float(spec.def_gain)
        x.requires_grad_(True)
        y = ba.bias_act(x, b, act=act, clamp=clamp, impl='ref')
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        ddx = torch.randn_like(dx)
        if spec.has_2nd_grad:
            (d2,) = torch.autograd.grad(dx, x, ddx)
        else:
            d2 = torch.zeros_like(x)
        use_y = spec.ref == 'y' or (spec.ref == '' and clamp is not None)
        use_x = spec.ref == 'x'
        xd, yd = x.detach(), y.detach()
        stride = 4     # x is [2, 3, 4] contiguous: dim 1 has stride 4
        cl = -1.0 if clamp is None else clamp
        for dtype_id, tol in ((3, 1e-12), (0, 2e-6)):
            out0 = _run_host(host_kernel, dtype_id, act, 0, alpha, gain, cl, xd, b, None, None, stride)
            out1 = _run_host(host_kernel, dtype_id, act, 1, alpha, gain, cl, dy, b if use_x else None,
                             xd if use_x else None, yd if use_y else None, stride)
            out2 = _run_host(host_kernel, dtype_id, act, 2, alpha, gain, cl, ddx * dy, b if use_x else None,
                             xd if use_x else None, yd if use_y else None, stride)
            for name, got, want in (('forward', out0, yd), ('grad', out1, dx.detach()), ('grad2', out2, d2)):
                err = (got - want).abs().max().item() / (want.abs().max().item() + 1e-12)
                assert err < tol, (act, clamp, dtype_id, name, err)


def test_kernel_element_math_fp16_storage(host_kernel):
    """fp16 storage with float math: forward within fp16 rounding (rel. 1e-3) of the reference."""
    x, b = _inputs((2, 3, 4), seed=2)
    xh, bh = x.half().double(), b.half().double()      # the values the kernel actually sees
    for act in ('lrelu', 'tanh', 'swish'):
        got = _run_host(host_kernel, 1, act, 0, float(ba.activation_funcs[act].def_alpha),
                        float(ba.activation_funcs[act].def_gain), -1.0, xh, bh, None, None, 4)
        want = ba.bias_act(xh, bh, act=act)
        assert ((got - want).abs() / (want.abs() + 1e-3)).max() < 1e-3, act
    # Clamp not representable in fp16 (1.3 is stored as 1.2998): saturated outputs still get
    # zero gradient, the others the full one.
    clamp = 1.3
    y16 = ba.bias_act(xh, bh, act='lrelu', clamp=clamp).half().double()
    pre = ba.bias_act(xh, bh, act='lrelu')
    keep = (pre.abs() - clamp).abs() > 0.01
    dy = torch.ones_like(xh)
    got = _run_host(host_kernel, 1, 'lrelu', 1, 0.2, math.sqrt(2), clamp, dy, None, None, y16, 4)
    r2 = torch.tensor(math.sqrt(2), dtype=torch.float64)
    want = torch.where(pre.abs() < clamp, torch.where(pre > 0, r2, 0.2 * r2), 0 * r2)
    assert (pre.abs() > clamp).any() and (pre.abs() < clamp).any()
    assert torch.allclose(got[keep], want[keep], rtol=1e-3)

class _HostPlugin:
    """Stands in for the compiled extension (same calls), running the host build in float64."""

    def __init__(self, exe):
        self.exe = exe
        self.calls = 0

    @staticmethod
    def _opt(t):
        return t if t is not None and t.numel() else None

    def forward(self, x, b, dim, act, alpha, gain, clamp):
        return self.grad(x, None, b, None, dim, act, alpha, gain, clamp, 0)

    def grad(self, g, xref, b, yref, dim, act, alpha, gain, clamp, order):
        self.calls += 1
        assert g.is_contiguous()
        out = _run_host(self.exe, 3, act, order, alpha, gain, clamp, g.detach(), self._opt(b),
                        self._opt(xref), self._opt(yref), g.stride(dim))
        return out.to(g.dtype)


@pytest.mark.parametrize('clamp', [None, 0.9])
def test_cuda_autograd_wiring_with_host_kernel(host_kernel, monkeypatch, clamp):
    """The CUDA path's Functions (what they save, y- vs x-referenced derivatives, the second-order
    kernel and its routing to x and b) with the host build standing in for the GPU kernel."""
    plugin = _HostPlugin(host_kernel)
    monkeypatch.setattr(ba, '_load_plugin', lambda: plugin)
    for act in ACTS:
        x, b = _inputs((2, 3, 4), seed=6)
        if clamp is not None:
            y0 = ba.bias_act(x, b, act=act).abs()
            x = torch.where((y0 - clamp).abs() < 0.05, x * 0.8, x)
        fn = ba._bias_act_cuda(dim=1, act=act, clamp=clamp)
        results = []
        for impl in (lambda x, b: fn.apply(x, b), lambda x, b: ba._bias_act_ref(x, b, act=act, clamp=clamp)):
            xx = x.clone().requires_grad_(True)
            bb = b.clone().requires_grad_(True)
            y = impl(xx, bb)
            dy = torch.linspace(-1, 2, y.numel(), dtype=torch.float64).reshape(y.shape)
            dx, db = torch.autograd.grad(y, [xx, bb], dy, create_graph=True)
            if ba.activation_funcs[act].has_2nd_grad:
                d2 = torch.autograd.grad((dx * torch.cos(xx.detach())).sum() + db.square().sum(), [xx, bb])
            else:
                d2 = ()
            results.append([y, dx, db, *d2])
        for name, got, want in zip(('y', 'dx', 'db', 'd2x', 'd2b'), *results):
            assert (got - want).abs().max() < 1e-12, (act, clamp, name)
    x, b = _inputs((2, 3, 4), seed=7)
    fn = ba._bias_act_cuda(dim=1, act='swish', clamp=clamp)
    args = (x.requires_grad_(True), b.requires_grad_(True))
    assert torch.autograd.gradgradcheck(lambda x, b: fn.apply(x, b), args, eps=1e-6, atol=1e-6, fast_mode=True)
    assert plugin.calls > 0


#----------------------------------------------------------------------------
# CUDA op vs reference (needs a GPU). Tolerances: relative to the output's max magnitude,
# fp32 1e-5, fp16 2e-3 (forward), 5e-3 (first and second derivative).

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float16, 5e-3)])
@pytest.mark.parametrize('clamp', [None, 256.0 / 100])
@pytest.mark.parametrize('act', ACTS)
def test_cuda_matches_reference(act, clamp, dtype, tol):
    assert ba._load_plugin() is not None, 'bias_act CUDA extension failed to build'
    x, b = _inputs((4, 16, 8, 8), seed=3)
    if clamp is not None:   # keep outputs 2% away from the clamp, where fp16 rounding decides
        y0 = ba.bias_act(x, b, act=act).abs()
        x = torch.where((y0 - clamp).abs() < 0.02 * clamp, x * 0.9, x)
    x, b = x.to('cuda', dtype), b.to('cuda', dtype)
    def run(impl):
        xx = x.clone().requires_grad_(True)
        bb = b.clone().requires_grad_(True)
        y = ba.bias_act(xx, bb, act=act, clamp=clamp, impl=impl)
        dy = torch.ones_like(y) * 0.5 + torch.linspace(-1, 1, y.numel(), device='cuda', dtype=dtype).reshape(y.shape)
        dx, db = torch.autograd.grad(y, [xx, bb], dy, create_graph=True)
        if ba.activation_funcs[act].has_2nd_grad:
            d2x, d2b = torch.autograd.grad((dx.float() ** 2).sum() + db.float().sum(), [xx, bb])
        else:
            d2x = d2b = torch.zeros(1, device='cuda')
        return [t.float() for t in (y, dx, db, d2x, d2b)]
    got, want = run('cuda'), run('ref')
    for name, g, w in zip(('y', 'dx', 'db', 'd2x', 'd2b'), got, want):
        err = (g - w).abs().max().item() / (w.abs().max().item() + 1e-6)
        assert err < tol, (act, clamp, dtype, name, err)


@cuda
@pytest.mark.gpu
def test_cuda_channels_last_and_gradgradcheck():
    assert ba._load_plugin() is not None
    x, b = _inputs((2, 5, 3, 4), seed=4, device='cuda')
    xc = x.to(memory_format=torch.channels_last)
    y = ba.bias_act(xc, b, act='lrelu', impl='cuda')
    assert torch.allclose(y, ba.bias_act(x, b, act='lrelu', impl='ref'), rtol=1e-12, atol=1e-12)
    xs, bs = _inputs((2, 3, 4), seed=5, device='cuda')
    xs.requires_grad_(True)
    bs.requires_grad_(True)
    for act in ('tanh', 'swish', 'softplus'):
        fn = lambda x, b: ba.bias_act(x, b, act=act, impl='cuda')
        assert torch.autograd.gradcheck(fn, (xs, bs), eps=1e-6, atol=1e-6)
        assert torch.autograd.gradgradcheck(fn, (xs, bs), eps=1e-6, atol=1e-6)
