"""Fused multiply-add a * b + c whose gradients are reduced back to each operand's shape.

Used by the networks' modulated convolutions where the operands broadcast against each other.
"""

import torch


def fma(a, b, c):
    """a * b + c with broadcasting; differentiable (any order) in all three arguments."""
    return _FusedMultiplyAdd.apply(a, b, c)


def _sum_to_shape(t, shape):
    """Sum t over the axes along which an operand of `shape` was broadcast to t's shape."""
    if t.shape == shape:
        return t
    extra = t.ndim - len(shape)
    if extra > 0:
        t = t.sum(dim=list(range(extra)))
    axes = [i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1]
    if axes:
        t = t.sum(dim=axes, keepdim=True)
    return t.reshape(shape)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _sum_to_shape(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _sum_to_shape(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _sum_to_shape(dout, ctx.c_shape)
        return da, db, dc
