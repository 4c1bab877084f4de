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
# Basic layers (equalised learning rate: weights stored as N(0,1)/lr_multiplier and
# scaled at run time by lr_multiplier/sqrt(fan_in)).

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer [N, in_features] -> [N, out_features] with equalised LR and fused activation."""
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f'in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}'

@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised LR, optional FIR up/downsampling, bias, activation and clamp."""
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = _act_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            # Frozen layers (Freeze-D) keep their tensors as buffers so optimisers never see them.
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up,
            down=self.down, padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self):
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, '
                f'up={self.up}, down={self.down}')

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
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_ws_uc = num_ws_uc
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        self.embed_features = embed_features
        widths = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f'fc{idx}', FullyConnectedLayer(widths[idx], widths[idx + 1],
                activation=activation, lr_multiplier=lr_multiplier))
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
        return f'z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, num_ws_uc={self.num_ws_uc}'

#----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + per-pixel noise + bias + activation."""
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = _act_gain(activation)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f'noise_mode must be "random", "const" or "none", not "{noise_mode}"')
        in_res = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_res, in_res])
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self):
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, '
                f'resolution={self.resolution}, up={self.up}, activation={self.activation}')

@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 conv from features to image channels."""
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self):
        return f'in_channels={self.in_channels}, out_channels={self.out_channels}'

#----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (x [N, I, r/2, r/2], img) -> (x [N, O, r, r], img [N, C, r, r]).

    The 4x4 block (in_channels == 0) starts from the learned `const`. Consumes
    num_conv + num_torgb ws.
    """
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 channels_last=False, **layer_kwargs):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f'G architecture must be "orig", "skip" or "resnet", not "{architecture}"')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        # channels_last: always NHWC; fp16_channels_last: NHWC only in fp16 blocks (upstream's --nhwc).
        self.channels_last = bool(channels_last or (use_fp16 and fp16_channels_last))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        layer_common = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, resample_filter=resample_filter,
                **layer_common, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_common, **layer_kwargs)
        self.num_conv += 1

        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                channels_last=self.channels_last)
            self.num_torgb += 1

        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = _compute_dtype(self.use_fp16, force_fp32, ws.device)
        memory_format = _memory_format(self.channels_last, force_fp32)
        if fused_modconv is None:
            # The grouped conv is the faster choice in inference; the fp16 path prefers
            # activation scaling unless there is a single sample.
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            # const is 3-D: a memory format only applies once the batch axis exists.
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.to(memory_format=memory_format)
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture}, use_fp16={self.use_fp16}'

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
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.res_uc = res_uc
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        if res_uc:
            if res_uc not in self.block_resolutions[:-1]:
                raise ValueError(f'res_uc={res_uc} must be a power of two >= 4 and below img_resolution={img_resolution}')
            if block_kwargs.get('architecture', 'skip') != 'skip':
                raise ValueError('UTLO (res_uc > 0) needs the "skip" G architecture: img_uc is the skip '
                                 'RGB image after the res_uc block')
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        self.num_ws_list = []   # cumulative ws consumed up to and including each block
        for res in self.block_resolutions:
            is_last = (res == img_resolution)
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                img_channels=img_channels, is_last=is_last, use_fp16=(res >= fp16_resolution), **block_kwargs)
            setattr(self, f'b{res}', block)
            self.num_ws += block.num_conv + (block.num_torgb if (res_uc or is_last) else 0)
            self.num_ws_list.append(self.num_ws)
        self.num_ws_uc = self.num_ws_list[self.block_resolutions.index(res_uc)] if res_uc else 0

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
        return (f'w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, '
                f'img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}, res_uc={self.res_uc}')

@persistence.persistent_class
class Generator(torch.nn.Module):
    """(z [N, z_dim], c [N, c_dim]) -> img [N, img_channels, R, R]."""
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={},
                 res_uc=0):
        super().__init__()
        synthesis_kwargs = dict(synthesis_kwargs)
        res_uc = res_uc or synthesis_kwargs.pop('res_uc', 0)
        synthesis_kwargs.pop('res_uc', None)
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.res_uc = res_uc
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            res_uc=res_uc, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.num_ws_uc = self.synthesis.num_ws_uc
        mapping_kwargs = {k: v for k, v in mapping_kwargs.items() if k != 'num_ws_uc'}
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
            num_ws_uc=self.num_ws_uc, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

#----------------------------------------------------------------------------

@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: (x [N, tmp, r, r] or None, img [N, C, r, r]) -> (x [N, out, r/2, r/2], img)."""
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=[1, 3, 3, 1], conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f'in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}')
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f'D architecture must be "orig", "skip" or "resnet", not "{architecture}"')
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = bool(channels_last or (use_fp16 and fp16_channels_last))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))

        # Freeze-D counts layers from the input side across all blocks.
        self.num_layers = 0
        def next_trainable():
            trainable = (self.first_layer_idx + self.num_layers) >= freeze_layers
            self.num_layers += 1
            return trainable
        common = dict(conv_clamp=conv_clamp, channels_last=self.channels_last)

        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                trainable=next_trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
            trainable=next_trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
            trainable=next_trainable(), resample_filter=resample_filter, **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                trainable=next_trainable(), resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        device = (x if x is not None else img).device
        dtype = _compute_dtype(self.use_fp16, force_fp32, device)
        memory_format = _memory_format(self.channels_last, force_fp32)

        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        if self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))

        assert x.dtype == dtype
        return x, img

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture}, use_fp16={self.use_fp16}'

@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Appends num_channels feature maps holding the stddev across a group of samples.

    Sample i belongs to group i mod (N / G), where G = min(group_size, N).
    """
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        G = N if self.group_size is None else min(int(self.group_size), int(N))
        F = self.num_channels
        if N % G != 0:
            raise ValueError(f'minibatch-stddev group size {G} does not divide the batch size {N}: '
                             f'choose a per-GPU batch that is a multiple of mbstd_group_size')
        y = x.reshape(G, N // G, F, C // F, H, W).to(torch.float32)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()    # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4])                          # [n, F]
        y = y.reshape(-1, F, 1, 1).repeat(G, 1, H, W)      # [N, F, H, W]
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self):
        return f'group_size={self.group_size}, num_channels={self.num_channels:d}'

@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 end of D: mbstd -> conv -> fc (`features`), then out + projection (`head`)."""
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet', mbstd_group_size=4,
                 mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f'D architecture must be "orig", "skip" or "resnet", not "{architecture}"')
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
            conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def features(self, x, img, force_fp32=False):
        """x [N, in_channels, r, r] -> [N, in_channels] (output of fc, float32)."""
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.fc(x.flatten(1))

    def head(self, x, cmap):
        """x [N, in_channels], cmap [N, cmap_dim] or None -> logits [N, 1]."""
        x = self.out(x)
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

    def forward(self, x, img, cmap, force_fp32=False):
        return self.head(self.features(x, img, force_fp32=force_fp32), cmap)

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture}'

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
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.res_uc = res_uc
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if res_uc:
            if res_uc not in [4] + self.block_resolutions[1:]:
                raise ValueError(f'res_uc={res_uc} must be a power of two >= 4 and below img_resolution={img_resolution}')
            if architecture == 'skip':
                raise ValueError('UTLO (res_uc > 0) does not support the "skip" D architecture; use "resnet" or "orig"')

        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                resolution=res, first_layer_idx=layer_idx, use_fp16=(res >= fp16_resolution), **block_kwargs, **common)
            setattr(self, f'b{res}', block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

        if res_uc:
            activation = block_kwargs.get('activation', 'lrelu')
            self.fromrgb_uc = Conv2dLayer(img_channels, channels[res_uc], kernel_size=1, activation=activation,
                conv_clamp=conv_clamp)
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
        return (f'c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}, '
                f'res_uc={self.res_uc}')

#----------------------------------------------------------------------------
