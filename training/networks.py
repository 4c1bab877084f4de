"""StyleGAN2 generator and discriminator, with the hooks the method plugins rely on.

Class names, constructor keywords, sub-module and parameter names match
stylegan2-ada-pytorch so that state dicts from its pickles copy over by name. On top of the
base: UTLO (`res_uc`: unconditional low-resolution ws, `img_uc`, an unconditional D head),
AdvAug's network splits (`Discriminator.features` / `head`, the synthesis `b4_hook`), and a
mapping network whose class embedding is only ever computed as `self.embed(c)`.
"""

import math

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import bias_act
from torch_utils.ops import conv2d_resample
from torch_utils.ops import fma
from torch_utils.ops import upfirdn2d

#----------------------------------------------------------------------------
# Helpers.

def _act_gain(activation):
    """Gain that keeps the activation's output at unit variance for unit-variance input
    (bias_act applies the same number when gain=None)."""
    if activation not in bias_act.activation_funcs:
        raise ValueError(f'unknown activation "{activation}"; use one of {sorted(bias_act.activation_funcs)}')
    return float(bias_act.activation_funcs[activation].def_gain)

def _compute_dtype(use_fp16, force_fp32, device):
    """fp16 only where the block asks for it, the caller allows it, and the tensor lives on a GPU."""
    if use_fp16 and not force_fp32 and device.type == 'cuda':
        return torch.float16
    return torch.float32

def _memory_format(channels_last, force_fp32):
    if channels_last and not force_fp32:
        return torch.channels_last
    return torch.contiguous_format

def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale x so that its mean square along `dim` is 1: x * rsqrt(mean(x^2) + eps)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()

#----------------------------------------------------------------------------

def modulated_conv2d(
    x,                      # Input activations [N, I, H, W].
    weight,                 # Raw convolution kernel [O, I, kh, kw].
    styles,                 # Per-sample input-channel scales [N, I].
    noise=None,             # Optional noise added to the output, broadcastable to [N, O, H', W'].
    up=1,                   # Integer upsampling factor.
    down=1,                 # Integer downsampling factor.
    padding=0,              # Padding of the convolution.
    resample_filter=None,   # FIR filter for up/downsampling (from upfirdn2d.setup_filter).
    demodulate=True,        # Normalise every output channel to unit expected variance?
    flip_weight=True,       # False = true convolution (cheaper together with up > 1).
    fused_modconv=True,     # One grouped convolution for the whole batch instead of scaling activations?
):
    """StyleGAN2 weight (de)modulation: conv(x, w * s) / sqrt(sum((w * s)^2) + 1e-8). Returns [N, O, H', W']."""
    batch_size, in_channels = x.shape[0], x.shape[1]
    out_channels, _, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    if x.dtype == torch.float16 and demodulate:
        # Bring weight and styles to a max-abs of ~1 before multiplying in fp16; demodulation
        # divides any global scale back out, so the result is unchanged up to rounding.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # sum_{i,k} (w[o,i,k] s[n,i])^2 = sum_i s[n,i]^2 * sum_k w[o,i,k]^2: no [N,O,I,k,k] tensor needed.
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    def conv(inp, w, groups=1):
        return conv2d_resample.conv2d_resample(x=inp, w=w, f=resample_filter, up=up, down=down,
            padding=padding, groups=groups, flip_weight=flip_weight)

    if not fused_modconv:
        # Modulate the activations instead of the kernel: one shared kernel for the batch.
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv(x, weight.to(x.dtype))
        if dcoefs is not None and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        if dcoefs is not None:
            return x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    # Fold the batch into the channel axis and give every sample its own kernel group.
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)  # [N, O, I, kh, kw]
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)
    x = x.reshape(1, batch_size * in_channels, *x.shape[2:])
    x = conv(x, w.reshape(batch_size * out_channels, in_channels, kh, kw).to(x.dtype), groups=batch_size)
    x = x.reshape(batch_size, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x

#----------------------------------------------------------------------------
# Construction helpers shared by the layers below.

def _store(module, **settings):
    """Keep constructor settings as plain attributes (forward, extra_repr and plugins read them)."""
    for name, value in settings.items():
        setattr(module, name, value)

def _kernel(out_channels, in_channels, kernel_size, channels_last):
    """An N(0, 1) convolution kernel [O, I, k, k]; draws from the global RNG."""
    kernel = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
    return kernel.to(memory_format=torch.channels_last) if channels_last else kernel

def _attach(module, name, tensor, trainable):
    """Register `tensor` as a parameter, or as a buffer when frozen (optimisers never see buffers)."""
    if tensor is not None and not trainable:
        module.register_buffer(name, tensor)
    else:
        setattr(module, name, None if tensor is None else torch.nn.Parameter(tensor))

def _scaled_clamp(conv_clamp, gain):
    return None if conv_clamp is None else conv_clamp * gain

def _finish(x, bias, act='linear', gain=None, clamp=None):
    """Bias (cast to x's dtype), activation, gain and clamp in one bias_act call."""
    return bias_act.bias_act(x, None if bias is None else bias.to(x.dtype), act=act, gain=gain, clamp=clamp)

def _describe(module, *names):
    """extra_repr text: `name=value` for each listed attribute."""
    return ', '.join(f'{name}={getattr(module, name)}' for name in names)

def _check_architecture(architecture, which):
    if architecture not in ('orig', 'skip', 'resnet'):
        raise ValueError(f'{which} architecture must be "orig", "skip" or "resnet", not "{architecture}"')

def _check_resolution(img_resolution):
    if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
        raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')

def _channels_per_resolution(resolutions, channel_base, channel_max):
    return {res: min(channel_base // res, channel_max) for res in resolutions}

def _first_fp16_resolution(img_resolution, num_fp16_res):
    """Blocks at this resolution and above run in fp16 (the top `num_fp16_res` ones, never 4x4)."""
    return max(2 * img_resolution >> num_fp16_res, 8)

_RESNET_GAIN = math.sqrt(0.5)   # residual sums of two unit-variance branches stay unit variance

#----------------------------------------------------------------------------
# Basic layers. Equalised learning rate: a weight is stored as N(0, 1) / lr_multiplier and
# multiplied at run time by lr_multiplier / sqrt(fan_in), so Adam's step size is the same for
# every layer whatever its fan-in.

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer [N, in_features] -> [N, out_features] with equalised LR and fused activation."""
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()
        _store(self, in_features=in_features, out_features=out_features, activation=activation,
               weight_gain=lr_multiplier / math.sqrt(in_features), bias_gain=lr_multiplier)
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None

    def _runtime_bias(self, dtype):
        if self.bias is None:
            return None
        b = self.bias.to(dtype)
        return b if self.bias_gain == 1 else b * self.bias_gain

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self._runtime_bias(x.dtype)
        if b is None or self.activation != 'linear':
            return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)
        return torch.addmm(b.unsqueeze(0), x, w.t())   # bias folded into the GEMM

    def extra_repr(self):
        return _describe(self, 'in_features', 'out_features', 'activation')

@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised LR, optional FIR up/downsampling, bias, activation and clamp.

    trainable=False (Freeze-D) keeps weight and bias as buffers instead of parameters.
    """
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        _store(self, in_channels=in_channels, out_channels=out_channels, activation=activation, up=up, down=down,
               conv_clamp=conv_clamp, padding=kernel_size // 2, act_gain=_act_gain(activation),
               weight_gain=1 / math.sqrt(in_channels * kernel_size ** 2))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        _attach(self, 'weight', _kernel(out_channels, in_channels, kernel_size, channels_last), trainable)
        _attach(self, 'bias', torch.zeros([out_channels]) if bias else None, trainable)

    def forward(self, x, gain=1):
        kernel = (self.weight * self.weight_gain).to(x.dtype)
        # flip_weight=False with up > 1 lets conv2d_resample use a transposed convolution.
        x = conv2d_resample.conv2d_resample(x=x, w=kernel, f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=(self.up == 1))
        return _finish(x, self.bias, self.activation, self.act_gain * gain, _scaled_clamp(self.conv_clamp, gain))

    def extra_repr(self):
        return _describe(self, 'in_channels', 'out_channels', 'activation', 'up', 'down')

#----------------------------------------------------------------------------

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (or w [N, w_dim] when num_ws is None).

    With num_ws_uc > 0 (UTLO) the first num_ws_uc ws come from the same MLP fed with a zero
    class embedding, so they do not depend on c.
    """
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.995, num_ws_uc=0):
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError('MappingNetwork needs z_dim > 0 or c_dim > 0')
        if num_ws_uc and (num_ws is None or not 0 < num_ws_uc <= num_ws):
            raise ValueError(f'num_ws_uc={num_ws_uc} must lie in [1, num_ws={num_ws}]')
        if c_dim == 0:
            embed_features = 0
        elif embed_features is None:
            embed_features = w_dim
        hidden = w_dim if layer_features is None else layer_features
        _store(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_ws_uc=num_ws_uc,
               num_layers=num_layers, w_avg_beta=w_avg_beta, embed_features=embed_features)

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        widths = [z_dim + embed_features] + [hidden] * (num_layers - 1) + [w_dim]
        for idx, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            self.add_module(f'fc{idx}', FullyConnectedLayer(fan_in, fan_out, activation=activation,
                                                            lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def _mlp(self, x):
        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)
        return x

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        parts = []
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        split_uc = self.num_ws_uc > 0 and self.c_dim > 0
        if split_uc:
            # Same weights, class half zeroed; both paths in one batch.
            x_noc = x.clone()
            x_noc[:, self.z_dim:] = 0
            out = self._mlp(torch.cat([x, x_noc]))
            x, x_noc = out.chunk(2)
        else:
            x = self._mlp(x)
            x_noc = x

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            # w_avg follows the conditional path only.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            if self.num_ws_uc > 0:
                x = torch.cat([x_noc.unsqueeze(1).expand(-1, self.num_ws_uc, -1),
                               x.unsqueeze(1).expand(-1, self.num_ws - self.num_ws_uc, -1)], dim=1)
            else:
                x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError('truncation needs w_avg, but this mapping network was built with w_avg_beta=None')
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self):
        return _describe(self, 'z_dim', 'c_dim', 'w_dim', 'num_ws', 'num_ws_uc')

#----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + per-pixel noise + bias + activation."""
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False):
        super().__init__()
        _store(self, in_channels=in_channels, out_channels=out_channels, w_dim=w_dim, resolution=resolution,
               up=up, use_noise=use_noise, activation=activation, conv_clamp=conv_clamp,
               padding=kernel_size // 2, act_gain=_act_gain(activation))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        # Creation order decides which random numbers each tensor draws: styles, kernel, noise map.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(_kernel(out_channels, in_channels, kernel_size, channels_last))
        if use_noise:
            # noise_mode='const' replays this map; the learned strength starts at zero.
            self.register_buffer('noise_const', torch.randn([resolution] * 2))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def _noise(self, batch_size, device, noise_mode):
        """Noise to add after the convolution, [N, 1, R, R] or [R, R], or None."""
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f'noise_mode must be "random", "const" or "none", not "{noise_mode}"')
        if not self.use_noise or noise_mode == 'none':
            return None
        if noise_mode == 'const':
            return self.noise_const * self.noise_strength
        fresh = torch.randn([batch_size, 1, self.resolution, self.resolution], device=device)
        return fresh * self.noise_strength

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        side = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, side, side])
        noise = self._noise(x.shape[0], x.device, noise_mode)
        x = modulated_conv2d(x=x, weight=self.weight, styles=self.affine(w), noise=noise, up=self.up,
                             padding=self.padding, resample_filter=self.resample_filter,
                             flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        return _finish(x, self.bias, self.activation, self.act_gain * gain, _scaled_clamp(self.conv_clamp, gain))

    def extra_repr(self):
        return _describe(self, 'in_channels', 'out_channels', 'w_dim', 'resolution', 'up', 'activation')

@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 conv from features to image channels."""
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        _store(self, in_channels=in_channels, out_channels=out_channels, conv_clamp=conv_clamp,
               weight_gain=1 / math.sqrt(in_channels * kernel_size ** 2))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(_kernel(out_channels, in_channels, kernel_size, channels_last))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, fused_modconv=True):
        # Without demodulation the equalised-LR gain has to be applied; it rides on the styles.
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return _finish(x, self.bias, clamp=self.conv_clamp)

    def extra_repr(self):
        return _describe(self, 'in_channels', 'out_channels')

#----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (x [N, I, r/2, r/2], img) -> (x [N, O, r, r], img [N, C, r, r]).

    The 4x4 block (in_channels == 0) starts from the learned `const`. Reads num_conv + num_torgb
    ws: one per conv layer, then one for ToRGB.
    """
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 channels_last=False, **layer_kwargs):
        _check_architecture(architecture, 'G')
        super().__init__()
        first = in_channels == 0
        makes_rgb = is_last or architecture == 'skip'
        # channels_last: always NHWC; fp16_channels_last: NHWC only in fp16 blocks (upstream's --nhwc).
        nhwc = bool(channels_last or (use_fp16 and fp16_channels_last))
        _store(self, in_channels=in_channels, out_channels=out_channels, w_dim=w_dim, resolution=resolution,
               img_channels=img_channels, is_last=is_last, architecture=architecture, use_fp16=use_fp16,
               channels_last=nhwc, num_conv=1 if first else 2, num_torgb=int(makes_rgb))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))

        def conv(cin, **kwargs):
            return SynthesisLayer(cin, out_channels, w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp,
                                  channels_last=nhwc, **kwargs, **layer_kwargs)
        # Attribute order is creation order, and creation order is RNG order: keep it.
        if first:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = conv(in_channels, up=2, resample_filter=resample_filter)
        self.conv1 = conv(out_channels)
        if makes_rgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, channels_last=nhwc)
        if not first and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=nhwc)

    def _entry(self, x, batch_size, dtype, memory_format):
        """The block's input features in the block's dtype and layout."""
        if self.in_channels == 0:
            # const is 3-D: a memory format only applies once the batch axis exists.
            start = self.const.to(dtype=dtype).unsqueeze(0).repeat([batch_size, 1, 1, 1])
            return start.to(memory_format=memory_format)
        half = self.resolution // 2
        misc.assert_shape(x, [None, self.in_channels, half, half])
        return x.to(dtype=dtype, memory_format=memory_format)

    def _convs(self, x, ws, **kwargs):
        """conv0 (upsampling) and conv1; in the resnet layout averaged with the upsampled input."""
        if self.in_channels == 0:
            return self.conv1(x, ws[0], **kwargs)
        shortcut = self.skip(x, gain=_RESNET_GAIN) if self.architecture == 'resnet' else None
        x = self.conv0(x, ws[0], **kwargs)
        if shortcut is None:
            return self.conv1(x, ws[1], **kwargs)
        return shortcut + self.conv1(x, ws[1], gain=_RESNET_GAIN, **kwargs)

    def _image(self, x, img, w, fused_modconv):
        """The running RGB image: the previous one upsampled, plus this block's ToRGB if it has one."""
        if img is not None:
            half = self.resolution // 2
            misc.assert_shape(img, [None, self.img_channels, half, half])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if not self.num_torgb:
            return img
        rgb = self.torgb(x, w, fused_modconv=fused_modconv).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        return rgb if img is None else img + rgb

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        dtype = _compute_dtype(self.use_fp16, force_fp32, ws.device)
        if fused_modconv is None:
            # The grouped conv is the faster choice in inference; the fp16 path prefers
            # activation scaling unless there is a single sample.
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)
        per_layer = ws.unbind(dim=1)
        x = self._entry(x, ws.shape[0], dtype, _memory_format(self.channels_last, force_fp32))
        x = self._convs(x, per_layer[:self.num_conv], fused_modconv=fused_modconv, **layer_kwargs)
        img = self._image(x, img, per_layer[-1] if self.num_torgb else None, fused_modconv)
        if x.dtype != dtype or (img is not None and img.dtype != torch.float32):
            raise RuntimeError(f'SynthesisBlock b{self.resolution} returned {x.dtype} features / '
                               f'{None if img is None else img.dtype} image')
        return x, img

    def extra_repr(self):
        return _describe(self, 'resolution', 'architecture', 'use_fp16')

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R] (float32, roughly [-1, 1]).

    Base layout: a block's ToRGB shares its w with the next block's conv0, so
    num_ws = sum(num_conv) + 1. UTLO layout (res_uc > 0): every block reads its own
    num_conv + num_torgb ws, num_ws = 2 + 3 * (log2(R) - 2), and the first num_ws_uc ws
    (those of blocks 4..res_uc) are the unconditional ones.
    """
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=0, res_uc=0, **block_kwargs):
        _check_resolution(img_resolution)
        super().__init__()
        log2 = img_resolution.bit_length() - 1
        resolutions = [1 << i for i in range(2, log2 + 1)]
        if res_uc:
            if res_uc not in resolutions[:-1]:
                raise ValueError(f'res_uc={res_uc} must be a power of two >= 4 and below img_resolution={img_resolution}')
            if block_kwargs.get('architecture', 'skip') != 'skip':
                raise ValueError('UTLO (res_uc > 0) needs the "skip" G architecture: img_uc is the skip '
                                 'RGB image after the res_uc block')
        _store(self, w_dim=w_dim, img_resolution=img_resolution, img_resolution_log2=log2,
               img_channels=img_channels, num_fp16_res=num_fp16_res, res_uc=res_uc, block_resolutions=resolutions)

        channels = _channels_per_resolution(resolutions, channel_base, channel_max)
        fp16_from = _first_fp16_resolution(img_resolution, num_fp16_res)
        self.num_ws_list = []   # cumulative ws consumed up to and including each block
        consumed = 0
        for res in resolutions:
            block = SynthesisBlock(channels.get(res // 2, 0), channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=(res == img_resolution),
                                   use_fp16=(res >= fp16_from), **block_kwargs)
            self.add_module(f'b{res}', block)
            # In the base layout only the last ToRGB w is a w of its own (see the class docstring).
            own_rgb_w = res_uc or res == img_resolution
            consumed += block.num_conv + (block.num_torgb if own_rgb_w else 0)
            self.num_ws_list.append(consumed)
        self.num_ws = consumed
        self.num_ws_uc = self.num_ws_list[resolutions.index(res_uc)] if res_uc else 0

    def _block_ws(self, ws):
        """Split ws into the (overlapping, in the base layout) windows each block reads."""
        out, w_idx = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            out.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv + (block.num_torgb if self.res_uc else 0)
        return out

    def forward(self, ws, add_uc=False, b4_hook=None, **block_kwargs):
        """Returns img, or (img, img_uc [N, C, res_uc, res_uc]) when add_uc."""
        if add_uc and not self.res_uc:
            raise ValueError('add_uc=True needs a generator built with res_uc > 0')
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        x = img = img_uc = None
        for res, block_ws in zip(self.block_resolutions, self._block_ws(ws)):
            x, img = getattr(self, f'b{res}')(x, img, block_ws, **block_kwargs)
            if res == 4 and b4_hook is not None:
                x = b4_hook(x)
            if res == self.res_uc:
                img_uc = img
        return (img, img_uc) if add_uc else img

    def extra_repr(self):
        return _describe(self, 'w_dim', 'num_ws', 'img_resolution', 'img_channels', 'num_fp16_res', 'res_uc')

@persistence.persistent_class
class Generator(torch.nn.Module):
    """(z [N, z_dim], c [N, c_dim]) -> img [N, img_channels, R, R]."""
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={},
                 res_uc=0):
        super().__init__()
        # res_uc may arrive either way (older configs put it in synthesis_kwargs); it is set once here.
        synthesis_kwargs = dict(synthesis_kwargs)
        res_uc = res_uc or synthesis_kwargs.get('res_uc', 0)
        synthesis_kwargs['res_uc'] = res_uc
        mapping_kwargs = {k: v for k, v in mapping_kwargs.items() if k != 'num_ws_uc'}
        _store(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
               img_channels=img_channels, res_uc=res_uc)
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.num_ws_uc = self.synthesis.num_ws_uc
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      num_ws_uc=self.num_ws_uc, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

#----------------------------------------------------------------------------

@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: (x [N, tmp, r, r] or None, img [N, C, r, r]) -> (x [N, out, r/2, r/2], img).

    Freeze-D counts conv layers from the input side across all blocks: this block's layers are
    numbered from `first_layer_idx`, and those below `freeze_layers` are built frozen.
    """
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f'in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}')
        _check_architecture(architecture, 'D')
        super().__init__()
        reads_rgb = in_channels == 0 or architecture == 'skip'
        resnet = architecture == 'resnet'
        nhwc = bool(channels_last or (use_fp16 and fp16_channels_last))
        _store(self, in_channels=in_channels, resolution=resolution, img_channels=img_channels,
               first_layer_idx=first_layer_idx, architecture=architecture, use_fp16=use_fp16,
               channels_last=nhwc, num_layers=int(reads_rgb) + 2 + int(resnet))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))

        trainable = iter([first_layer_idx + i >= freeze_layers for i in range(self.num_layers)])
        def conv(cin, cout, kernel_size, **kwargs):
            return Conv2dLayer(cin, cout, kernel_size, trainable=next(trainable), channels_last=nhwc, **kwargs)
        act = dict(activation=activation, conv_clamp=conv_clamp)
        if reads_rgb:
            self.fromrgb = conv(img_channels, tmp_channels, 1, **act)
        self.conv0 = conv(tmp_channels, tmp_channels, 3, **act)
        self.conv1 = conv(tmp_channels, out_channels, 3, down=2, resample_filter=resample_filter, **act)
        if resnet:
            self.skip = conv(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def _enter(self, t, channels, dtype, memory_format):
        """Check an input [N, channels, r, r] and bring it to the block's dtype and layout."""
        if t is None:
            return None
        misc.assert_shape(t, [None, channels, self.resolution, self.resolution])
        return t.to(dtype=dtype, memory_format=memory_format)

    def forward(self, x, img, force_fp32=False):
        dtype = _compute_dtype(self.use_fp16, force_fp32, (img if x is None else x).device)
        layout = _memory_format(self.channels_last, force_fp32)
        x = self._enter(x, self.in_channels, dtype, layout)
        if hasattr(self, 'fromrgb'):
            img = self._enter(img, self.img_channels, dtype, layout)
            from_img = self.fromrgb(img)
            x = from_img if x is None else x + from_img
            # Only the skip layout hands the image on to the next block.
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None
        if self.architecture != 'resnet':
            x = self.conv1(self.conv0(x))
        else:
            shortcut = self.skip(x, gain=_RESNET_GAIN)
            x = shortcut + self.conv1(self.conv0(x), gain=_RESNET_GAIN)
        if x.dtype != dtype:
            raise RuntimeError(f'DiscriminatorBlock b{self.resolution} returned {x.dtype}, expected {dtype}')
        return x, img

    def extra_repr(self):
        return _describe(self, 'resolution', 'architecture', 'use_fp16')

@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Appends num_channels feature maps holding the stddev across a group of samples.

    Sample i belongs to group i mod (N / G), where G = min(group_size, N).
    """
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        _store(self, group_size=group_size, num_channels=num_channels)

    def forward(self, x):
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(int(self.group_size), int(n))
        if n % g:
            raise ValueError(f'minibatch-stddev group size {g} does not divide the batch size {n}: '
                             f'choose a per-GPU batch that is a multiple of mbstd_group_size')
        f = self.num_channels
        # Axis 0 walks through a group; each of the n/g columns is one group, split into f channel sets.
        grouped = x.reshape(g, n // g, f, c // f, h, w).to(torch.float32)
        spread = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[2, 3, 4])    # [n/g, f]
        maps = spread.reshape(-1, f, 1, 1).repeat(g, 1, h, w)                                # [n, f, h, w]
        return torch.cat([x, maps.to(x.dtype)], dim=1)

    def extra_repr(self):
        return _describe(self, 'group_size', 'num_channels')

@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 end of D: mbstd -> conv -> fc (`features`), then out + projection (`head`)."""
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet', mbstd_group_size=4,
                 mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        _check_architecture(architecture, 'D')
        super().__init__()
        _store(self, in_channels=in_channels, cmap_dim=cmap_dim, resolution=resolution,
               img_channels=img_channels, architecture=architecture)
        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = None
        if mbstd_num_channels > 0:
            self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, cmap_dim or 1)

    def features(self, x, img, force_fp32=False):
        """x [N, in_channels, r, r] -> [N, in_channels] (output of fc, float32)."""
        r = self.resolution
        misc.assert_shape(x, [None, self.in_channels, r, r])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, r, r])
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.fc(self.conv(x).flatten(1))

    def head(self, x, cmap):
        """x [N, in_channels], cmap [N, cmap_dim] or None -> logits [N, 1]."""
        logits = self.out(x)
        if not self.cmap_dim:
            return logits
        # Projection conditioning: inner product with the class embedding, scaled to unit variance.
        misc.assert_shape(cmap, [None, self.cmap_dim])
        return (logits * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))

    def forward(self, x, img, cmap, force_fp32=False):
        return self.head(self.features(x, img, force_fp32=force_fp32), cmap)

    def extra_repr(self):
        return _describe(self, 'resolution', 'architecture')

@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """(img [N, C, R, R], c [N, c_dim]) -> logits [N, 1]; projection conditioning through `mapping`.

    With res_uc > 0 (UTLO) it also judges low-resolution images without labels:
    D(img_low [N, C, res_uc, res_uc], c, uc=True) = out_uc(epilogue features of the blocks res_uc..8
    applied to fromrgb_uc(img_low)).
    """
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, res_uc=0,
                 block_kwargs={}, mapping_kwargs={}, epilogue_kwargs={}):
        _check_resolution(img_resolution)
        super().__init__()
        log2 = img_resolution.bit_length() - 1
        resolutions = [1 << i for i in range(log2, 2, -1)]    # input side first; 4x4 is the epilogue
        if res_uc:
            if res_uc not in [4] + resolutions[1:]:
                raise ValueError(f'res_uc={res_uc} must be a power of two >= 4 and below img_resolution={img_resolution}')
            if architecture == 'skip':
                raise ValueError('UTLO (res_uc > 0) does not support the "skip" D architecture; use "resnet" or "orig"')
        channels = _channels_per_resolution(resolutions + [4], channel_base, channel_max)
        if c_dim == 0:
            cmap_dim = 0
        elif cmap_dim is None:
            cmap_dim = channels[4]
        _store(self, c_dim=c_dim, img_resolution=img_resolution, img_resolution_log2=log2,
               img_channels=img_channels, res_uc=res_uc, block_resolutions=resolutions, cmap_dim=cmap_dim)

        shared = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        fp16_from = _first_fp16_resolution(img_resolution, num_fp16_res)
        layers_before = 0
        for res in resolutions:
            block = DiscriminatorBlock(0 if res == img_resolution else channels[res], channels[res],
                                       channels[res // 2], resolution=res, first_layer_idx=layers_before,
                                       use_fp16=(res >= fp16_from), **block_kwargs, **shared)
            self.add_module(f'b{res}', block)
            layers_before += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **shared)
        if res_uc:
            self.fromrgb_uc = Conv2dLayer(img_channels, channels[res_uc], kernel_size=1,
                                          activation=block_kwargs.get('activation', 'lrelu'), conv_clamp=conv_clamp)
            self.out_uc = FullyConnectedLayer(channels[4], 1)
            self.register_buffer('resample_filter_uc', upfirdn2d.setup_filter([1, 3, 3, 1]))

    def features(self, img, c, **block_kwargs):
        """Everything up to and including b4.fc: returns (x [N, C4], cmap [N, cmap_dim] or None)."""
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4.features(x, img, **block_kwargs), cmap

    def head(self, x, cmap):
        """(x [N, C4], cmap) -> logits [N, 1]: b4.out plus the class projection."""
        return self.b4.head(x, cmap)

    def features_uc(self, img, **block_kwargs):
        """UTLO: low-resolution image [N, C, res_uc, res_uc] -> epilogue features [N, C4]."""
        if not self.res_uc:
            raise ValueError('uc=True needs a discriminator built with res_uc > 0')
        misc.assert_shape(img, [None, self.img_channels, self.res_uc, self.res_uc])
        x = self.fromrgb_uc(img.to(torch.float32))
        for res in self.block_resolutions:
            if res <= self.res_uc:
                x, _ = getattr(self, f'b{res}')(x, None, **block_kwargs)
        return self.b4.features(x, None, **block_kwargs)

    def downsample_uc(self, x):
        """Repeated 2x FIR [1,3,3,1] downsampling of [N, C, H, W] images down to res_uc."""
        if not self.res_uc:
            raise ValueError('downsample_uc needs a discriminator built with res_uc > 0')
        while x.shape[-1] > self.res_uc:
            x = upfirdn2d.downsample2d(x, self.resample_filter_uc)
        return x

    def forward(self, img, c, uc=False, **block_kwargs):
        if uc:
            return self.out_uc(self.features_uc(img, **block_kwargs))
        return self.head(*self.features(img, c, **block_kwargs))

    def extra_repr(self):
        return _describe(self, 'c_dim', 'img_resolution', 'img_channels', 'res_uc')

#----------------------------------------------------------------------------
