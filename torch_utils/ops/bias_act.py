"""Fused bias + activation + gain + clamp: y = clamp(act(x + b) * gain, -clamp, clamp).

`impl='cuda'` runs one elementwise CUDA kernel (with its own first- and second-order backward
kernels) for CUDA tensors when the extension builds; everything else, and CPU tensors always,
goes through `_bias_act_ref`, written in plain PyTorch ops.
"""

import math
import os

import torch

import dnnlib
from torch_utils import custom_ops

#----------------------------------------------------------------------------
# Activations. Old network pickles read `activation_funcs[name].def_gain`, so the table keeps
# that name and these fields:
#   func          reference implementation f(x, alpha)
#   def_alpha     default alpha (only lrelu uses it)
#   def_gain      default output gain (sqrt(2) keeps relu-like layers variance preserving)
#   cuda_idx      activation id understood by the CUDA kernel
#   ref           which tensor the CUDA backward reads: 'y' = the output (so the input can be
#                 freed), 'x' = the input, '' = neither
#   has_2nd_grad  whether f'' is nonzero anywhere (else double backward needs no kernel)

def _swish(x, **_):
    return torch.sigmoid(x) * x


activation_funcs = {
    'linear':   dnnlib.EasyDict(func=lambda x, **_: x,                                   def_alpha=0,   def_gain=1,            cuda_idx=1, ref='',  has_2nd_grad=False),
    'relu':     dnnlib.EasyDict(func=lambda x, **_: torch.nn.functional.relu(x),         def_alpha=0,   def_gain=math.sqrt(2), cuda_idx=2, ref='y', has_2nd_grad=False),
    'lrelu':    dnnlib.EasyDict(func=lambda x, alpha, **_: torch.nn.functional.leaky_relu(x, alpha), def_alpha=0.2, def_gain=math.sqrt(2), cuda_idx=3, ref='y', has_2nd_grad=False),
    'tanh':     dnnlib.EasyDict(func=lambda x, **_: torch.tanh(x),                       def_alpha=0,   def_gain=1,            cuda_idx=4, ref='y', has_2nd_grad=True),
    'sigmoid':  dnnlib.EasyDict(func=lambda x, **_: torch.sigmoid(x),                    def_alpha=0,   def_gain=1,            cuda_idx=5, ref='y', has_2nd_grad=True),
    'elu':      dnnlib.EasyDict(func=lambda x, **_: torch.nn.functional.elu(x),          def_alpha=0,   def_gain=1,            cuda_idx=6, ref='y', has_2nd_grad=True),
    'selu':     dnnlib.EasyDict(func=lambda x, **_: torch.nn.functional.selu(x),         def_alpha=0,   def_gain=1,            cuda_idx=7, ref='y', has_2nd_grad=True),
    'softplus': dnnlib.EasyDict(func=lambda x, **_: torch.nn.functional.softplus(x),     def_alpha=0,   def_gain=1,            cuda_idx=8, ref='y', has_2nd_grad=True),
    'swish':    dnnlib.EasyDict(func=_swish,                                             def_alpha=0,   def_gain=math.sqrt(2), cuda_idx=9, ref='x', has_2nd_grad=True),
}

#----------------------------------------------------------------------------
# Extension loading.

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
_load_plugin = custom_ops.plugin_loader('toolkit_bias_act_plugin', sources=['bias_act.cpp', 'bias_act.cu'],
                                         headers=['bias_act.h'], source_dir=_SOURCE_DIR)

#----------------------------------------------------------------------------

def _resolve(act, alpha, gain, clamp):
    if act not in activation_funcs:
        raise ValueError(f'unknown activation {act!r}; choose one of {sorted(activation_funcs)}')
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return spec, alpha, gain, clamp


def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
    """Add a bias along one axis, apply an activation, scale by `gain`, clamp to [-clamp, clamp].

    Args:
        x:     input tensor of any shape and floating dtype.
        b:     bias, 1-D of length x.shape[dim], same dtype as x; None for no bias.
        dim:   the axis of x that `b` runs along (default 1: the channel axis of NCHW).
        act:   one of `activation_funcs` ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu',
               'selu', 'softplus', 'swish').
        alpha: lrelu's negative slope (default 0.2); ignored by the others.
        gain:  output scale; None = the activation's `def_gain` (sqrt(2) for relu/lrelu/swish).
        clamp: clamp the output to [-clamp, clamp] (after the gain); None = no clamping.
        impl:  'cuda' (kernel for CUDA tensors when available, else reference) or 'ref'.

    Returns a tensor of x's shape, dtype and memory format. Differentiable twice in x and b.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError('bias_act: x must be a tensor')
    if impl not in ('cuda', 'ref'):
        raise ValueError(f"bias_act: impl must be 'cuda' or 'ref', got {impl!r}")
    if clamp is not None and clamp < 0:
        raise ValueError('bias_act: clamp must be None or >= 0')
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias_act: b must have shape [{x.shape[dim]}] (x.shape[{dim}]), got {list(b.shape)}')
    if impl == 'cuda' and x.is_cuda and (b is None or (b.dtype == x.dtype and b.device == x.device)):
        plugin = _load_plugin()
        if plugin is not None:
            return _bias_act_cuda(dim=dim % x.ndim, act=act, alpha=alpha, gain=gain, clamp=clamp).apply(x, b)
    return _bias_act_ref(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def _bias_act_ref(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """Plain-PyTorch bias_act (autograd gives any order of derivative)."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x

#----------------------------------------------------------------------------
# CUDA path: three autograd Functions per (dim, act, alpha, gain, clamp), built once.
#   forward:  y  = kernel_forward(x, b)
#   backward: dx = Grad(dy)      -- kernel order 1: dy * gain * f'(x + b), masked by the clamp
#   Grad's backward: d(dy) = Grad(d_dx) (it is linear in dy) and
#                    d(x)  = kernel order 2: d_dx * dy * gain * f''(x + b).
# Third-order derivatives are not supported (nothing in training needs them).

_cuda_cache = {}


def _dense_like(ref, *tensors):
    """Return `tensors` with the same strides as `ref` (the kernel indexes them in lockstep)."""
    out = []
    for t in tensors:
        if t.numel() == 0 or t.stride() == ref.stride():
            out.append(t)
        else:
            out.append(torch.empty_like(ref).copy_(t))
    return out


def _make_dense(x):
    """x itself if it is non-overlapping and dense (any permutation, e.g. channels_last)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _bias_act_cuda(dim=1, act='linear', alpha=None, gain=None, clamp=None):
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    key = (dim, act, alpha, gain, clamp)
    if key in _cuda_cache:
        return _cuda_cache[key]

    # Which tensors the backward kernels read: y for relu-like activations (and for the clamp
    # mask of 'linear'), x for swish; x is also kept when double backward must route to it.
    use_y = spec.ref == 'y' or (spec.ref == '' and clamp >= 0)
    use_x = spec.ref == 'x'
    keep_x = use_x or spec.has_2nd_grad

    def reduce_bias(t):
        return t.sum([i for i in range(t.ndim) if i != dim])

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            plugin = _load_plugin()
            bb = b.contiguous() if b is not None else x.new_empty([0])
            y = plugin.forward(_make_dense(x), bb, dim, spec.cuda_idx, alpha, gain, clamp)
            # Save the caller's x and b (not copies) so double backward routes to them.
            ctx.save_for_backward(x if keep_x else x.new_empty([0]),
                                  b if (keep_x and b is not None) else x.new_empty([0]),
                                  y if use_y else x.new_empty([0]))
            ctx.has_bias = b is not None
            return y

        @staticmethod
        def backward(ctx, dy):
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1] and ctx.has_bias:
                db = reduce_bias(dx)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b, y):
            plugin = _load_plugin()
            ref = y if y.numel() else (_make_dense(x) if x.numel() else _make_dense(dy))
            kdy, kx, ky = _dense_like(ref, dy, x, y)
            dx = plugin.grad(kdy, kx if use_x else dy.new_empty([0]), b.contiguous() if use_x else dy.new_empty([0]),
                             ky if use_y else dy.new_empty([0]), dim, spec.cuda_idx, alpha, gain, clamp, 1)
            ctx.save_for_backward(dy if spec.has_2nd_grad else dy.new_empty([0]), x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                plugin = _load_plugin()
                ref = y if y.numel() else _make_dense(x)
                g, kx, ky = _dense_like(ref, d_dx * dy, x, y)
                d_x = plugin.grad(g, kx if use_x else g.new_empty([0]), b.contiguous() if use_x else g.new_empty([0]),
                                  ky if use_y else g.new_empty([0]), dim, spec.cuda_idx, alpha, gain, clamp, 2)
                if ctx.needs_input_grad[2] and b.numel():
                    d_b = reduce_bias(d_x)
            return d_dy, d_x, d_b, None

    _cuda_cache[key] = BiasActCuda
    return BiasActCuda
