"""Benchmark the custom CUDA ops against their plain-PyTorch references on StyleGAN2 shapes.

    python bench/ops.py [--batch 32] [--reps 20]

Prints one row per op and layer shape: median time of the CUDA kernel and of the reference
(forward, and forward+backward), measured with CUDA events after warm-up. Without a GPU it says
so and times the reference alone on small shapes.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_utils.ops import bias_act, upfirdn2d  # noqa: E402


def _median_ms(fn, reps, cuda):
    """Median wall time of fn() in milliseconds (CUDA events on a GPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cases(batch, cuda):
    """(name, input shape, dtype, op(x, impl)) for the layers StyleGAN2 runs most."""
    if cuda:
        layers = [(32, 512, torch.float32), (64, 512, torch.float32), (256, 128, torch.float16)]
    else:
        layers = [(32, 32, torch.float32), (64, 16, torch.float32)]
    dev = 'cuda' if cuda else 'cpu'
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=dev)
    cases = []
    for res, ch, dtype in layers:
        b = torch.randn(ch, device=dev, dtype=dtype)
        cases.append((f'bias_act lrelu clamp256 @{res}', [batch, ch, res, res], dtype,
                      lambda x, impl, b=b: bias_act.bias_act(x, b, act='lrelu', clamp=256, impl=impl)))
        cases.append((f'upsample2d [1,3,3,1] ->{res}', [batch, ch, res // 2, res // 2], dtype,
                      lambda x, impl: upfirdn2d.upsample2d(x, f, impl=impl)))
        cases.append((f'downsample2d [1,3,3,1] {res}->', [batch, ch, res, res], dtype,
                      lambda x, impl: upfirdn2d.downsample2d(x, f, impl=impl)))
        cases.append((f'filter2d pad (conv_transpose tail) @{res}', [batch, ch, res + 1, res + 1], dtype,
                      lambda x, impl: upfirdn2d.upfirdn2d(x, f, padding=1, gain=4, impl=impl)))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=None, help='batch size (32 on GPU, 2 on CPU)')
    parser.add_argument('--reps', type=int, default=20, help='timed repetitions per measurement')
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    batch = args.batch or (32 if cuda else 2)
    if cuda:
        print(f'GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')
        built = {'bias_act': bias_act._load_plugin() is not None, 'upfirdn2d': upfirdn2d._load_plugin() is not None}
        print('kernels built: ' + ', '.join(f'{k}={v}' for k, v in built.items()))
    else:
        print('No CUDA device: timing only the plain-PyTorch reference, on small shapes (CPU).')
    impls = ['cuda', 'ref'] if cuda else ['ref']

    header = f'{"op":42s} {"input shape":20s} {"dtype":8s}'
    for impl in impls:
        header += f' {impl + " fwd ms":>12s} {impl + " f+b ms":>12s}'
    if cuda:
        header += f' {"speedup fwd":>11s} {"speedup f+b":>11s}'
    print(header)
    print('-' * len(header))
    for name, shape, dtype, op in _cases(batch, cuda):
        x = torch.randn(shape, device='cuda' if cuda else 'cpu', dtype=dtype)
        xg = x.clone().requires_grad_(True)
        row = f'{name:42s} {"x".join(map(str, shape)):20s} {str(dtype).replace("torch.", ""):8s}'
        results = {}
        for impl in impls:
            fwd = _median_ms(lambda: op(x, impl), args.reps, cuda)
            def fwd_bwd():
                y = op(xg, impl)
                y.backward(torch.ones_like(y))
            fb = _median_ms(fwd_bwd, args.reps, cuda)
            results[impl] = (fwd, fb)
            row += f' {fwd:12.3f} {fb:12.3f}'
        if cuda:
            row += f' {results["ref"][0] / results["cuda"][0]:10.2f}x {results["ref"][1] / results["cuda"][1]:10.2f}x'
        print(row, flush=True)
        if cuda:
            torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
