"""conv2d / conv_transpose2d whose backward is itself made of these ops, so that derivatives of
any order are exact (R1 and path-length regularisation differentiate through the gradient),
and whose weight gradient can be skipped with `no_weight_gradients()`.

With `enabled` (default) the custom op runs for CUDA tensors; CPU tensors go straight to
torch.nn.functional (there the op would only add Python overhead) unless `cpu_enabled` is set
(the tests do). Results are identical either way; only the skipped work differs.
"""

import contextlib
import functools

import torch

enabled = True                      # use the custom op for CUDA tensors
cpu_enabled = False                 # ... and for CPU tensors too
weight_gradients_disabled = False   # set by no_weight_gradients()


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Within the block, backward passes through these convs compute no weight gradient.

    For gradients taken only with respect to inputs (R1's dD/dx, path length's dG/dw): the
    weight gradient would be thrown away. Gradients of such a gradient (the penalty's backward,
    taken outside the block) still reach the weights: they flow through the input gradient.
    """
    global weight_gradients_disabled
    outer = weight_gradients_disabled
    weight_gradients_disabled = outer or bool(disable)    # nested blocks never re-enable
    try:
        yield
    finally:
        weight_gradients_disabled = outer


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Same arguments and result as torch.nn.functional.conv2d."""
    if not _use_custom_op(input):
        return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    op = _conv_op(transpose=False, weight_shape=tuple(weight.shape), stride=_pair(stride),
                  padding=_pair(padding), output_padding=(0, 0), dilation=_pair(dilation), groups=groups)
    return op.apply(input, weight, bias)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Same arguments and result as torch.nn.functional.conv_transpose2d."""
    if not _use_custom_op(input):
        return torch.nn.functional.conv_transpose2d(input, weight, bias, stride, padding, output_padding,
                                                    groups, dilation)
    op = _conv_op(transpose=True, weight_shape=tuple(weight.shape), stride=_pair(stride),
                  padding=_pair(padding), output_padding=_pair(output_padding), dilation=_pair(dilation),
                  groups=groups)
    return op.apply(input, weight, bias)


def _use_custom_op(input):
    return enabled and (input.is_cuda or cpu_enabled)


def _pair(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f'conv2d_gradfix: expected an int or a pair, got {v}')
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def _input_grad_output_padding(transpose, input_shape, grad_shape, weight_shape, stride, padding, dilation):
    """output_padding that makes the input gradient (a conv_transpose2d) exactly input-sized.

    Only needed when the forward op is a plain conv: its input gradient is a transposed conv,
    whose output size is ambiguous by up to stride-1 pixels.
    """
    if transpose:
        return (0, 0)
    out = []
    for i in range(2):
        natural = ((grad_shape[i + 2] - 1) * stride[i] - 2 * padding[i]
                   + dilation[i] * (weight_shape[i + 2] - 1) + 1)
        out.append(input_shape[i + 2] - natural)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _conv_op(transpose, weight_shape, stride, padding, output_padding, dilation, groups):
    """The autograd Function for one conv configuration (cached: built once per layer shape)."""
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def input_grad_op(input_shape, grad_shape):
        op_pad = _input_grad_output_padding(transpose, input_shape, grad_shape, weight_shape,
                                            stride, padding, dilation)
        return _conv_op(not transpose, weight_shape, stride, padding, op_pad, dilation, groups)

    class Conv2dOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, weight, bias):
            if transpose:
                out = torch.nn.functional.conv_transpose2d(input, weight, bias, output_padding=output_padding,
                                                           **params)
            else:
                out = torch.nn.functional.conv2d(input, weight, bias, **params)
            ctx.save_for_backward(input if weight.requires_grad else None,
                                  weight if input.requires_grad else None)
            ctx.input_shape = input.shape
            return out

        @staticmethod
        def backward(ctx, grad):
            input, weight = ctx.saved_tensors
            grad_input = grad_weight = grad_bias = None
            if ctx.needs_input_grad[0]:
                # A conv's input gradient is the transposed conv with the same weight (and v.v.).
                grad_input = input_grad_op(ctx.input_shape, grad.shape).apply(grad, weight, None)
                assert grad_input.shape == ctx.input_shape
            if ctx.needs_input_grad[1] and not weight_gradients_disabled:
                grad_weight = WeightGrad.apply(grad, input)
            if ctx.needs_input_grad[2]:
                grad_bias = grad.sum([0, 2, 3])
            return grad_input, grad_weight, grad_bias

    class WeightGrad(torch.autograd.Function):
        """dL/dweight as a function of (grad_output, input): bilinear, so its own backward is
        made of the forward conv (for grad_output) and the input-gradient conv (for input)."""

        @staticmethod
        def forward(ctx, grad, input):
            shaped_like_weight = input.new_empty(weight_shape)      # only its shape is read
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad, input, shaped_like_weight, None, list(stride), list(padding), list(dilation),
                transpose, list(output_padding), groups, [False, True, False])
            ctx.save_for_backward(grad, input)
            return grad_weight

        @staticmethod
        def backward(ctx, dgw):
            grad, input = ctx.saved_tensors
            d_grad = d_input = None
            if ctx.needs_input_grad[0]:
                d_grad = Conv2dOp.apply(input, dgw, None)
            if ctx.needs_input_grad[1]:
                d_input = input_grad_op(input.shape, grad.shape).apply(grad, dgw, None)
            return d_grad, d_input

    return Conv2dOp
