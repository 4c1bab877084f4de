"""2-D convolution with optional FIR up/downsampling, fused where that is cheaper.

Meaning (the general path below spells it out): upsample x by `up` with filter f (zero
insertion, f scaled by up^2), convolve with w, downsample by `down` with f. Padding is chosen
so that a conv of size k with padding k//2 keeps the image size times up / down. The fused
paths (transposed conv for up=2, strided conv for down=2, filter after/before a 1x1 conv) give
the same result with less work; tests/test_ops_conv.py holds them to the general path.
"""

import torch

from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import upfirdn2d
from torch_utils.ops.upfirdn2d import _filter_size, _parse_padding


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d / conv_transpose2d via conv2d_gradfix; flip_weight=False gives true convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _filter_margins(taps, up, down):
    """(before, after) padding along one axis that keeps a `taps`-long FIR filter centred on
    the resampled grid: taps - 1 pixels in all around upsampling, taps - down around
    downsampling."""
    before = after = 0
    if up > 1:
        lead = (taps + up - 1) // 2
        before, after = lead, taps - 1 - lead
    if down > 1:
        lead = (taps - down + 1) // 2
        before, after = before + lead, after + taps - down - lead
    return before, after


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve x with w, with FIR up/downsampling around the conv.

    Args:
        x:           [N, C_in, H, W] input.
        w:           [C_out, C_in // groups, kh, kw] weight.
        f:           filter from upfirdn2d.setup_filter (None = box of size 1, only with up=down=1).
        up, down:    integer resampling factors (>= 1).
        padding:     conv padding, int / [x, y] / [x0, x1, y0, y1], applied at the input resolution
                     after upsampling (e.g. kernel_size // 2).
        groups:      conv groups (modulated convs use one group per sample).
        flip_weight: True = correlation (torch's conv2d), False = true convolution.
        flip_filter: passed to upfirdn2d.

    Returns [N, C_out, H', W'] with H' = (H * up + y0 + y1 - kh + 1) // down for the usual
    odd kernels and even filters (e.g. H * up / down with padding kh // 2).
    """
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError('conv2d_resample: x must be [N, C, H, W]')
    if not (isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype):
        raise ValueError("conv2d_resample: w must be [C_out, C_in/groups, kh, kw] with x's dtype")
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise ValueError('conv2d_resample: up and down must be ints >= 1')
    if f is None and (up > 1 or down > 1):
        raise ValueError('conv2d_resample: resampling needs a filter f (upfirdn2d.setup_filter([1, 3, 3, 1]))')
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Widen the padding by the filter's support so the output stays aligned and sized.
    (mx0, mx1), (my0, my1) = _filter_margins(fw, up, down), _filter_margins(fh, up, down)
    px0, px1, py0, py1 = px0 + mx0, px1 + mx1, py0 + my0, py1 + my1

    # 1x1 kernel and downsampling: filter+downsample first, then the (cheap) conv.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel and upsampling: conv at low resolution, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided conv skips the outputs that would be dropped.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: a transposed conv with stride `up` does zero insertion and the conv in one go
    # (it convolves, so the weight flip is inverted), then the filter runs on its output.
    if up > 1:
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            wt = wt.transpose(1, 2).reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # The transposed conv's output is the zero-inserted input padded by k-1 on the left and
        # k-up on the right, convolved; move that padding out of the filter's.
        built_in = (kw - 1, kw - up, kh - 1, kh - up)
        px0, px1, py0, py1 = (p - q for p, q in zip((px0, px1, py0, py1), built_in))
        pxt = max(min(-px0, -px1), 0)   # padding the transposed conv can crop itself
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                  flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                                flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: plain conv when the padding is symmetric and non-negative.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    return _conv2d_resample_general(x, w, f, up, down, [px0, px1, py0, py1], groups, flip_weight, flip_filter)


def _conv2d_resample_general(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The definition, step by step (padding already widened by the filter's support)."""
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
