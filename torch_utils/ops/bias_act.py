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

def _activation(cuda_idx, func, def_gain=1.0, def_alpha=0.0, ref='y', has_2nd_grad=True):
    return dnnlib.EasyDict(func=func, def_alpha=def_alpha, def_gain=def_gain, cuda_idx=cuda_idx, ref=ref,
                           has_2nd_grad=has_2nd_grad)

def _alpha_free(fn):
    """f(x, alpha) for an activation without a parameter."""
    return lambda x, alpha=None: fn(x)

_SQRT2 = math.sqrt(2)   # relu-like activations halve the variance; this gain restores it
_nn = torch.nn.functional

activation_funcs = {
    # Piecewise linear: f'' = 0, the backward only needs the sign pattern, read off y.
    'linear':   _activation(1, _alpha_free(lambda x: x), ref='', has_2nd_grad=False),
    'relu':     _activation(2, _alpha_free(_nn.relu), def_gain=_SQRT2, has_2nd_grad=False),
    'lrelu':    _activation(3, lambda x, alpha: _nn.leaky_relu(x, alpha), def_gain=_SQRT2, def_alpha=0.2, has_2nd_grad=False),
    # Smooth, with f' expressible in y ...
    'tanh':     _activation(4, _alpha_free(torch.tanh)),
    'sigmoid':  _activation(5, _alpha_free(torch.sigmoid)),
    'elu':      _activation(6, _alpha_free(_nn.elu)),
    'selu':     _activation(7, _alpha_free(_nn.selu)),
    'softplus': _activation(8, _alpha_free(_nn.softplus)),
    # ... except swish, whose derivative needs x.
    'swish':    _activation(9, _alpha_free(lambda x: x * torch.sigmoid(x)), def_gain=_SQRT2, ref='x'),
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
    chosen = [spec.def_alpha if alpha is None else alpha, spec.def_gain if gain is None else gain,
              -1 if clamp is None else clamp]   # clamp < 0: no clamping
    return (spec, *map(float, chosen))


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
    y = spec.func(x, alpha=alpha)
    y = y if gain == 1 else y * gain
    return y if clamp < 0 else y.clamp(-clamp, clamp)

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

    def kernel_grad(order, g, x, b, y):
        """g * gain * f'(x + b) (order 1) or f'' (order 2), zero outside the clamp, by the kernel."""
        # The kernel walks g, x and y with one set of strides: lay them out like y (or x, or g).
        layout = y if y.numel() else _make_dense(x if x.numel() else g)
        g, x, y = _dense_like(layout, g, x, y)
        unused = g.new_empty([0])
        return _load_plugin().grad(g, x if use_x else unused, b.contiguous() if use_x else unused,
                                   y if use_y else unused, dim, spec.cuda_idx, alpha, gain, clamp, order)

    class BiasActCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b, y):
            ctx.save_for_backward(dy if spec.has_2nd_grad else dy.new_empty([0]), x, b, y)
            return kernel_grad(1, dy, x, b, y)

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, b, y = ctx.saved_tensors
            wants_dy, wants_x, wants_b = ctx.needs_input_grad[:3]
            # Linear in dy: its derivative is this same Function applied to d_dx.
            d_dy = BiasActCudaGrad.apply(d_dx, x, b, y) if wants_dy else None
            d_x = d_b = None
            if spec.has_2nd_grad and (wants_x or wants_b):
                d_x = kernel_grad(2, d_dx * dy, x, b, y)
                d_b = reduce_bias(d_x) if wants_b and b.numel() else None
            return d_dy, d_x, d_b, None

    _cuda_cache[key] = BiasActCuda
    return BiasActCuda
