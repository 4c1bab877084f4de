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
    # addcmul computes c + a * b in one pass; its autograd would not reduce broadcast operands.

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b)
        ctx.addend_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        wants = ctx.needs_input_grad
        # d/da = grad * b, d/db = grad * a, d/dc = grad; each summed back to its operand's shape.
        return (_sum_to_shape(grad * b, a.shape) if wants[0] else None,
                _sum_to_shape(grad * a, b.shape) if wants[1] else None,
                _sum_to_shape(grad, ctx.addend_shape) if wants[2] else None)
