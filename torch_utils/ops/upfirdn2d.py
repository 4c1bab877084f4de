"""2-D FIR resampling: upsample by zero insertion, pad, filter, downsample (one op: upfirdn2d).

Used for the anti-aliased up/downsampling of StyleGAN2 (filter [1,3,3,1]). `impl='cuda'` runs
a CUDA kernel for CUDA tensors when the extension builds; CPU tensors, and everything else,
use `_upfirdn2d_ref`, written in plain PyTorch ops.
"""

import os

import numpy as np
import torch

from torch_utils import custom_ops

#----------------------------------------------------------------------------
# Extension loading.

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
_load_plugin = custom_ops.plugin_loader('toolkit_upfirdn2d_plugin', sources=['upfirdn2d.cpp', 'upfirdn2d.cu'],
                                         headers=['upfirdn2d.h'], source_dir=_SOURCE_DIR)

#----------------------------------------------------------------------------
# Argument parsing.

def _pair(value, name):
    """int or [x, y] -> (x, y) of ints >= 1."""
    if isinstance(value, (int, np.integer)):
        value = [value, value]
    value = [int(v) for v in value]
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f'upfirdn2d: {name} must be an int >= 1 or a pair [x, y] of them, got {value}')
    return value


def _parse_padding(padding):
    """int, [x, y] or [x0, x1, y0, y1] -> [x0, x1, y0, y1] (negative values crop)."""
    values = [int(padding)] * 4 if isinstance(padding, (int, np.integer)) else [int(p) for p in padding]
    if len(values) == 2:    # [x, y]: the same on both sides of each axis
        values = [values[0], values[0], values[1], values[1]]
    if len(values) != 4:
        raise ValueError(f'upfirdn2d: padding must be an int, [x, y] or [x0, x1, y0, y1], got {values}')
    return values


def _filter_size(f):
    """(width, height) of a filter tensor (None = the 1x1 identity)."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError('upfirdn2d: f must be a 1-D (separable) or 2-D filter tensor, e.g. from setup_filter()')
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)

#----------------------------------------------------------------------------

def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Make a float32 filter tensor for upfirdn2d from a list / array / tensor.

    Args:
        f:           taps: None (= [1]), 1-D (applied along both axes, i.e. the outer product)
                     or 2-D [height, width].
        device:      device of the result.
        normalize:   scale so the taps sum to 1 (a DC-preserving low-pass).
        flip_filter: flip the taps (convolution vs correlation).
        gain:        overall gain: a 2-D filter is scaled by gain, each 1-D pass by sqrt(gain).
        separable:   keep a 1-D filter 1-D (two 1-D passes); None = 1-D if it is 1-D and has
                     at least 8 taps, else expand it to 2-D (one 2-D pass is faster then).

    Returns a float32 tensor of shape [taps] or [height, width].
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[np.newaxis]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f'setup_filter: f must be a non-empty 1-D or 2-D list of taps, got shape {list(f.shape)}')
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.ger(f)
    if normalize:
        f = f / f.sum()
    all_axes = list(range(f.ndim))
    flipped = f.flip(all_axes) if flip_filter else f
    # The gain spreads over the passes: all of it on one 2-D pass, its root on each 1-D pass.
    return (flipped * gain ** (len(all_axes) / 2)).to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample, pad, FIR-filter and downsample a batch of images.

    Steps, per channel:
      1. upsample by inserting up-1 zeros after every pixel (output size W*upx, H*upy);
      2. pad with zeros by [x0, x1, y0, y1] (negative values crop);
      3. convolve with f (true convolution; flip_filter=True makes it correlation), scaled so
         the 2-D filter's gain is `gain`;
      4. keep every down-th pixel, starting with the first.

    Args:
        x:       [N, C, H, W] tensor.
        f:       float32 filter from setup_filter(): [fh, fw], or [taps] (separable); None = identity.
        up:      int or [x, y] upsampling factors.
        down:    int or [x, y] downsampling factors.
        padding: int, [x, y] or [x0, x1, y0, y1].
        flip_filter, gain: see above.
        impl:    'cuda' (kernel for CUDA tensors when available, else reference) or 'ref'.

    Returns [N, C, (H*upy + y0 + y1 - fh) // downy + 1, (W*upx + x0 + x1 - fw) // downx + 1].
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('upfirdn2d: x must be a 4-D [N, C, H, W] tensor')
    if impl not in ('cuda', 'ref'):
        raise ValueError(f"upfirdn2d: impl must be 'cuda' or 'ref', got {impl!r}")
    upx, upy = _pair(up, 'up')
    downx, downy = _pair(down, 'down')
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    out_w = (x.shape[3] * upx + padx0 + padx1 - fw) // downx + 1
    out_h = (x.shape[2] * upy + pady0 + pady1 - fh) // downy + 1
    if out_w < 1 or out_h < 1:
        raise ValueError(f'upfirdn2d: output would be empty ({out_h}x{out_w}); the filter is larger '
                         f'than the padded {x.shape[2] * upy}x{x.shape[3] * upx} input')
    if impl == 'cuda' and x.is_cuda and _load_plugin() is not None:
        return _upfirdn2d_cuda(up=(upx, upy), down=(downx, downy), padding=(padx0, padx1, pady0, pady1),
                               flip_filter=bool(flip_filter), gain=float(gain)).apply(x, f)
    return _upfirdn2d_ref(x, f, up=(upx, upy), down=(downx, downy), padding=(padx0, padx1, pady0, pady1),
                          flip_filter=flip_filter, gain=gain)


def _upfirdn2d_ref(x, f, up=(1, 1), down=(1, 1), padding=(0, 0, 0, 0), flip_filter=False, gain=1):
    """Plain-PyTorch upfirdn2d (arguments already parsed); any order of derivative."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = up
    downx, downy = down
    padx0, padx1, pady0, pady1 = padding

    # 1. Zero insertion: each pixel becomes the top-left of an up x up cell.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = torch.nn.functional.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # 2. Pad (positive part) then crop (negative part).
    x = torch.nn.functional.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # 3. Filter. conv2d correlates, so flip the taps to convolve (unless flip_filter).
    f = f * (gain ** (f.ndim / 2))
    f = f.to(device=x.device, dtype=x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)
        x = torch.nn.functional.conv2d(x, weight, groups=c)
    else:
        x = torch.nn.functional.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.numel()), groups=c)
        x = torch.nn.functional.conv2d(x, f[None, None, :, None].expand(c, 1, f.numel(), 1), groups=c)

    # 4. Subsample.
    return x[:, :, ::downy, ::downx]

#----------------------------------------------------------------------------
# CUDA path. The backward of upfirdn2d is another upfirdn2d: swap up and down, flip the filter,
# and pad so that every input pixel sees the taps that touched it (derivation in the docs of
# `_grad_padding`). It is itself an upfirdn2d Function, so derivatives of any order work.

_cuda_cache = {}


def _grad_padding(in_size, out_size, up, down, pad0, filter_size):
    """Padding (p0', p1') along one axis for the adjoint upfirdn2d.

    Forward: y[o] = sum_k g[k] u[o*down + k - pad0], u = x upsampled by `up`.
    Its adjoint at x[i] = u[i*up] is sum_m U[m] g[i*up + pad0 - m] with U = dy upsampled by
    `down`: an upfirdn2d with the reversed filter and p0' = L - 1 - pad0. p1' makes the padded
    length (in_size - 1) * up + L, so exactly in_size outputs come out.
    """
    p0 = filter_size - pad0 - 1
    p1 = in_size * up - out_size * down + pad0 - up + 1
    return p0, p1


def _upfirdn2d_cuda(up, down, padding, flip_filter, gain):
    key = (up, down, padding, flip_filter, gain)
    if key in _cuda_cache:
        return _cuda_cache[key]
    (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1) = up, down, padding

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            plugin = _load_plugin()
            if f is None:
                f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
            kf = f.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
            y = x
            if f.ndim == 2:
                y = plugin.upfirdn2d(y, kf, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain)
            else:   # separable: a horizontal then a vertical pass, each with sqrt(gain)
                g = gain ** 0.5
                y = plugin.upfirdn2d(y, kf[None, :], upx, 1, downx, 1, padx0, padx1, 0, 0, flip_filter, g)
                y = plugin.upfirdn2d(y, kf[:, None], 1, upy, 1, downy, 0, 0, pady0, pady1, flip_filter, g)
            ctx.save_for_backward(f)
            ctx.input_size = x.shape
            return y

        @staticmethod
        def backward(ctx, dy):
            if not ctx.needs_input_grad[0]:
                return None, None
            (f,) = ctx.saved_tensors
            fw, fh = _filter_size(f)
            adjoint_padding = (*_grad_padding(ctx.input_size[3], dy.shape[3], upx, downx, padx0, fw),
                               *_grad_padding(ctx.input_size[2], dy.shape[2], upy, downy, pady0, fh))
            adjoint = _upfirdn2d_cuda(up=(downx, downy), down=(upx, upy), padding=adjoint_padding,
                                      flip_filter=not flip_filter, gain=gain)
            dx = adjoint.apply(dy, f)
            assert dx.shape == ctx.input_size, (dx.shape, ctx.input_size)
            return dx, None

    _cuda_cache[key] = Upfirdn2dCuda
    return Upfirdn2dCuda

#----------------------------------------------------------------------------
# Convenience wrappers used by the networks.

def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter x with f, padded so the output has x's size (plus `padding`, int / [x,y] / [x0,x1,y0,y1])."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample x by `up` (int or [x, y]) with anti-imaging filter f; output [N, C, H*upy, W*upx].

    The filter is scaled by upx*upy so that a constant image stays constant (times `gain`).
    """
    upx, upy = _pair(up, 'up')
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Downsample x by `down` (int or [x, y]) with anti-aliasing filter f; output [N, C, H/downy, W/downx]."""
    downx, downy = _pair(down, 'down')
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
