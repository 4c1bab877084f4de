"""ADA's differentiable augmentation pipeline (Karras et al. 2020): 18 transformations in 6 groups.

Every transformation fires per sample with probability strength * p. Blit and geometric steps
are composed into one inverse 3x3 matrix and executed once; colour steps into one 4x4 matrix;
then the frequency-band filter, additive noise and cutout. All of it is differentiable twice
(R1 is taken through it). Samples whose geometric transform is a pure pixel permutation are
executed exactly by indexing; the others are resampled with a 2x oversampled bilinear warp.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc, persistence
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import upfirdn2d

#----------------------------------------------------------------------------
# Orthonormal Daubechies symlet low-pass filters (public coefficients; sum = sqrt(2)).

SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# --augpipe presets: which transformations each enables (multiplier 1, the others 0). Every
# AugmentPipe keyword that switches a transformation on belongs to one group; each combined
# preset adds the next group of the chain.
_GROUP_OF = {
    'xflip': 'blit', 'rotate90': 'blit', 'xint': 'blit',
    'scale': 'geom', 'rotate': 'geom', 'aniso': 'geom', 'xfrac': 'geom',
    'brightness': 'color', 'contrast': 'color', 'lumaflip': 'color', 'hue': 'color', 'saturation': 'color',
    'imgfilter': 'filter', 'noise': 'noise', 'cutout': 'cutout',
}
_CHAIN = ['blit', 'geom', 'color', 'filter', 'noise', 'cutout']

def _combine(*groups):
    return {key: 1 for key, group in _GROUP_OF.items() if group in groups}

augpipe_specs = {name: _combine(name) for name in _CHAIN}
augpipe_specs.update({name: _combine(*_CHAIN[:length]) for length, name in
                      [(2, 'bg'), (3, 'bgc'), (4, 'bgcf'), (5, 'bgcfn'), (6, 'bgcfnc')]})
augpipe_specs['mnist'] = _combine('geom', 'color')   # UTLO's reference: geometric + colour, no blit

#----------------------------------------------------------------------------
# Batched homogeneous matrices. 2-D ones act on (x, y, 1), 3-D ones on (r, g, b, 1).

def _eye(n, batch_size, device):
    return torch.eye(n, device=device).unsqueeze(0).repeat(batch_size, 1, 1)

def _translate2d(tx, ty):
    m = _eye(3, tx.shape[0], tx.device)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m

def _scale2d(sx, sy):
    m = _eye(3, sx.shape[0], sx.device)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m

def _rotate2d(cos, sin):
    m = _eye(3, cos.shape[0], cos.device)
    m[:, 0, 0] = cos
    m[:, 0, 1] = -sin
    m[:, 1, 0] = sin
    m[:, 1, 1] = cos
    return m

def _translate3d(t):
    m = _eye(4, t.shape[0], t.device)
    m[:, :3, 3] = t.unsqueeze(1)
    return m

def _scale3d(s):
    m = _eye(4, s.shape[0], s.device)
    m[:, :3, :3] *= s.reshape(-1, 1, 1)
    return m

def _rotate3d(axis, theta):
    """Rodrigues rotation by theta [N] about the unit 3-vector `axis` (python floats)."""
    ax, ay, az = axis
    device = theta.device
    cross = misc.constant([[0, -az, ay], [az, 0, -ax], [-ay, ax, 0]], dtype=torch.float32, device=device)
    outer = misc.constant([[ax * ax, ax * ay, ax * az], [ay * ax, ay * ay, ay * az], [az * ax, az * ay, az * az]],
                          dtype=torch.float32, device=device)
    c = theta.cos().reshape(-1, 1, 1)
    s = theta.sin().reshape(-1, 1, 1)
    m = _eye(4, theta.shape[0], device)
    m[:, :3, :3] = c * torch.eye(3, device=device) + s * cross + (1 - c) * outer
    return m

#----------------------------------------------------------------------------
# Filters.

def _band_filters():
    """Four zero-phase bands of a dyadic sym2 decomposition, [4, 43], lowest band first; rows sum to a delta."""
    h = np.asarray(SYM2, dtype=np.float64)
    g = h * (-1.0) ** np.arange(h.size)          # quadrature mirror high-pass
    lo = np.convolve(h, h[::-1]) / 2            # |H|^2 / 2: symmetric, sums to 1
    hi = np.convolve(g, g[::-1]) / 2            # |G|^2 / 2 = 1 - lo in frequency
    def dilate(f, k):                           # f(z) -> f(z^k)
        out = np.zeros((f.size - 1) * k + 1)
        out[::k] = f
        return out
    lo1, lo2, lo4 = lo, dilate(lo, 2), dilate(lo, 4)
    hi1, hi2, hi4 = hi, dilate(hi, 2), dilate(hi, 4)
    bands = [
        np.convolve(np.convolve(lo4, lo2), lo1),     # [0, pi/8]
        np.convolve(np.convolve(hi4, lo2), lo1),     # [pi/8, pi/4]
        np.convolve(hi2, lo1),                      # [pi/4, pi/2]
        hi1,                                        # [pi/2, pi]
    ]
    width = max(b.size for b in bands)
    bank = np.zeros([4, width])
    for i, b in enumerate(bands):
        start = (width - b.size) // 2
        bank[i, start:start + b.size] = b
    return bank.astype(np.float32)

def _reflect_index(idx, size):
    """Map integer positions to [0, size) by mirroring about the edge pixels (no edge repeat)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)

def _reflect_pad(x, px0, px1, py0, py1):
    """Reflect padding of [N, C, H, W] that, unlike F.pad, allows pads as large as the image or larger."""
    H, W = x.shape[2], x.shape[3]
    if max(px0, px1) < W and max(py0, py1) < H:
        return F.pad(x, [px0, px1, py0, py1], mode='reflect')
    ix = _reflect_index(torch.arange(-px0, W + px1, device=x.device), W)
    iy = _reflect_index(torch.arange(-py0, H + py1, device=x.device), H)
    return x.index_select(3, ix).index_select(2, iy)

#----------------------------------------------------------------------------

@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """images [N, C, H, W] float32 (roughly [-1, 1], C = 1 or 3) -> augmented images, same shape.

    Keyword names are those of stylegan2-ada-pytorch: each group strength (0 = off, 1 = on) is
    multiplied by the buffer `p` to give the per-sample probability.
    """
    # Geometric warps without host reads (every sample resampled, fixed padding): None = on
    # accelerators, where a host read stalls the device queue; off on the CPU, where the read
    # is free and resampling only the samples that need it is faster. True / False forces it.
    sync_free = None

    def __init__(self,
        # Per group: the probability multipliers, then their ranges.
        xflip=0, rotate90=0, xint=0,
        xint_max=0.125,
        scale=0, rotate=0, aniso=0, xfrac=0,
        scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
        brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
        imgfilter=0,
        imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1,
        noise=0, cutout=0,
        noise_std=0.1, cutout_size=0.5,
    ):
        super().__init__()
        self.register_buffer('p', torch.zeros([]))
        self._debug = None      # quantile used instead of random draws (forward's debug_percentile)

        self.xflip = float(xflip)               # probability multiplier for x-flip
        self.rotate90 = float(rotate90)         # ... for rotations by k * 90 degrees
        self.xint = float(xint)                 # ... for integer translation
        self.xint_max = float(xint_max)         # range of integer translation, fraction of image size
        self.scale = float(scale)               # isotropic scaling
        self.rotate = float(rotate)             # arbitrary rotation
        self.aniso = float(aniso)               # anisotropic scaling
        self.xfrac = float(xfrac)               # fractional translation
        self.scale_std = float(scale_std)       # log2 std of isotropic scaling
        self.rotate_max = float(rotate_max)     # rotation range, fraction of pi
        self.aniso_std = float(aniso_std)       # log2 std of anisotropic scaling
        self.xfrac_std = float(xfrac_std)       # std of fractional translation, fraction of image size

        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)     # log2 std
        self.hue_max = float(hue_max)               # fraction of pi
        self.saturation_std = float(saturation_std) # log2 std

        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = list(imgfilter_bands)
        self.imgfilter_std = float(imgfilter_std)   # log2 std of band gains
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)
        self.cutout_size = float(cutout_size)

        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(SYM6))  # [12], normalised to sum 1
        # Where the sym6 filter puts its output (its centroid, ~5.10 taps); it is not symmetric,
        # and aligning flips and rotations to (L-1)/2 instead would misplace them by ~0.2 px.
        self._geom_delay = float(np.dot(np.arange(len(SYM6)), SYM6) / np.sum(SYM6))
        self.register_buffer('Hz_fbank', torch.as_tensor(_band_filters()))
        if len(self.imgfilter_bands) != self.Hz_fbank.shape[0]:
            raise ValueError(f'imgfilter_bands needs {self.Hz_fbank.shape[0]} entries, got {len(self.imgfilter_bands)}')

    #------------------------------------------------------------------
    # Random draws. With debug_percentile q every value is the q-quantile of its
    # distribution (for visualising an augmentation at a fixed strength).

    def _uniform(self, shape, device):
        if self._debug is not None:
            return torch.full(shape, self._debug, device=device)
        return torch.rand(shape, device=device)

    def _normal(self, shape, device):
        if self._debug is not None:
            return torch.full(shape, math.sqrt(2) * float(torch.erfinv(torch.tensor(2 * self._debug - 1))), device=device)
        return torch.randn(shape, device=device)

    def _fires(self, prob, batch_size, device):
        """Bool [N]: does the transformation fire for each sample? (always, in debug mode)"""
        if self._debug is not None:
            return torch.ones([batch_size], dtype=torch.bool, device=device)
        return torch.rand([batch_size], device=device) < prob

    #------------------------------------------------------------------

    def forward(self, images, debug_percentile=None):
        if not (isinstance(images, torch.Tensor) and images.ndim == 4):
            raise ValueError('AugmentPipe expects images as a [N, C, H, W] tensor')
        N, C, H, W = images.shape
        if C not in (1, 3):
            raise ValueError(f'AugmentPipe supports 1- or 3-channel images, got {C} channels')
        if debug_percentile is None and misc.host_value(self.p) == 0:     # no device read: see set_host_value
            return images
        self._debug = None if debug_percentile is None else float(debug_percentile)
        try:
            return self._augment(images)
        finally:
            self._debug = None

    def _augment(self, images):
        """Geometric, colour, filter, noise, cutout, in that order."""
        N, C, H, W = images.shape
        device = images.device
        G_inv = self._geometric_matrix(N, H, W, device)
        if G_inv is not None:
            images = self._warp(images, G_inv)
        C_mat = self._color_matrix(N, C, device)
        if C_mat is not None:
            images = self._apply_color(images, C_mat)
        if self.imgfilter > 0:
            images = self._apply_filter(images)
        if self.noise > 0:
            sigma = self._normal([N, 1, 1, 1], device).abs() * self.noise_std
            sigma = torch.where(self._fires(self.noise * self.p, N, device).reshape(N, 1, 1, 1), sigma, torch.zeros_like(sigma))
            images = images + torch.randn_like(images) * sigma
        if self.cutout > 0:
            images = images * self._cutout_mask(N, H, W, device)
        return images

    #------------------------------------------------------------------
    # Geometry.

    def _geometric_matrix(self, N, H, W, device):
        """Inverse transform [N, 3, 3] from output to input pixel coordinates (origin at the image centre), or None."""
        blit = self.xflip > 0 or self.rotate90 > 0 or self.xint > 0
        geom = self.scale > 0 or self.rotate > 0 or self.aniso > 0 or self.xfrac > 0
        if not (blit or geom):
            return None
        G = _eye(3, N, device)
        one, zero = torch.ones([N], device=device), torch.zeros([N], device=device)
        # The forward transform applies the steps in this order, so G = M1^-1 M2^-1 ... Mk^-1.

        if self.xflip > 0:
            flip = torch.floor(self._uniform([N], device) * 2)
            flip = torch.where(self._fires(self.xflip * self.p, N, device), flip, zero)
            G = G @ _scale2d(1 - 2 * flip, one)
        if self.rotate90 > 0:
            k = torch.floor(self._uniform([N], device) * 4)
            k = torch.where(self._fires(self.rotate90 * self.p, N, device), k, zero).long()
            cos = misc.constant([1., 0., -1., 0.], dtype=torch.float32, device=device)[k]   # exact, so the result stays a blit
            sin = misc.constant([0., 1., 0., -1.], dtype=torch.float32, device=device)[k]
            G = G @ _rotate2d(cos, -sin)
        if self.xint > 0:
            t = (self._uniform([N, 2], device) * 2 - 1) * self.xint_max
            t = torch.where(self._fires(self.xint * self.p, N, device).unsqueeze(1), t, torch.zeros_like(t))
            G = G @ _translate2d(-torch.round(t[:, 0] * W), -torch.round(t[:, 1] * H))

        if self.scale > 0:
            s = torch.exp2(self._normal([N], device) * self.scale_std)
            s = torch.where(self._fires(self.scale * self.p, N, device), s, one)
            G = G @ _scale2d(1 / s, 1 / s)
        # Rotation fires before and/or after the anisotropic scaling; P(at least one) = rotate * p.
        p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))
        if self.rotate > 0:
            theta = (self._uniform([N], device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._fires(p_rot, N, device), theta, zero)
            G = G @ _rotate2d(theta.cos(), -theta.sin())
        if self.aniso > 0:
            s = torch.exp2(self._normal([N], device) * self.aniso_std)
            s = torch.where(self._fires(self.aniso * self.p, N, device), s, one)
            G = G @ _scale2d(1 / s, s)
        if self.rotate > 0:
            theta = (self._uniform([N], device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._fires(p_rot, N, device), theta, zero)
            G = G @ _rotate2d(theta.cos(), -theta.sin())
        if self.xfrac > 0:
            t = self._normal([N, 2], device) * self.xfrac_std
            t = torch.where(self._fires(self.xfrac * self.p, N, device).unsqueeze(1), t, torch.zeros_like(t))
            G = G @ _translate2d(-t[:, 0] * W, -t[:, 1] * H)
        return G

    @staticmethod
    def _as_blit(G_inv, H, W):
        """For each sample: is the transform a pixel permutation? Returns (mask [N], A [N,2,2] long, o [N,2] long)
        such that source index = A @ (x, y) + o."""
        c = misc.constant([(W - 1) / 2, (H - 1) / 2], device=G_inv.device, dtype=G_inv.dtype)
        A = G_inv[:, :2, :2]
        o = G_inv[:, :2, 2] + c - A @ c
        A_int, o_int = A.round(), o.round()
        ok = ((A - A_int).abs() < 1e-4).all(dim=2).all(dim=1) & ((o - o_int).abs() < 1e-4).all(dim=1)
        ok = ok & (A_int.abs().sum(dim=1) == 1).all(dim=1) & (A_int.abs().sum(dim=2) == 1).all(dim=1)
        return ok, A_int.long(), o_int.long()

    @staticmethod
    def _blit(images, A, o):
        """Exact permutation of pixels (flips, 90-degree turns, integer shifts) with reflect at the borders."""
        N, C, H, W = images.shape
        ys, xs = torch.meshgrid(torch.arange(H, device=images.device), torch.arange(W, device=images.device), indexing='ij')
        src_x = A[:, 0, 0, None, None] * xs + A[:, 0, 1, None, None] * ys + o[:, 0, None, None]
        src_y = A[:, 1, 0, None, None] * xs + A[:, 1, 1, None, None] * ys + o[:, 1, None, None]
        src = _reflect_index(src_y, H) * W + _reflect_index(src_x, W)           # [N, H, W]
        src = src.reshape(N, 1, H * W).expand(N, C, H * W)
        return images.reshape(N, C, H * W).gather(2, src).reshape(N, C, H, W)

    def _warp(self, images, G_inv):
        N, C, H, W = images.shape
        is_blit, A, o = self._as_blit(G_inv, H, W)
        out = self._blit(images, A, o)
        if self._sync_free(images.device):
            # Every sample is resampled and the mask picks: resampling only the non-blit samples
            # needs their indices on the host, a device sync.
            return torch.where(is_blit.reshape(N, 1, 1, 1), out, self._resample(images, G_inv, fit_margin=False))
        resample = (~is_blit).nonzero().squeeze(1)
        if resample.numel() > 0:
            warped = self._resample(images.index_select(0, resample), G_inv.index_select(0, resample), fit_margin=True)
            out = out.index_copy(0, resample, warped)
        return out

    def _sync_free(self, device):
        return self.sync_free if self.sync_free is not None else device.type != 'cpu'

    def _resample(self, images, G_inv, fit_margin):
        """Warp [N, C, H, W] by G_inv: reflect pad, 2x upsample (sym6), bilinear sample, 2x downsample, crop.

        Bookkeeping in centred pixel coordinates u of the input (u = index - (size-1)/2). With d the
        filter's delay, the upsample (convolution with f, zero padding L-1) puts input index k at
        upsampled position 2k + d and the downsample (correlation with f, no padding) reads output
        pixel i around sample 2i + d. Since f is orthonormal, f convolved with its reverse is
        half-band, so identity and integer-shift warps are exact whatever d is.

        The reflect padding covers every input position the samples reach (capped at size - 1,
        as far as reflection goes). With fit_margin it is fitted to this batch's transforms, which
        needs the bounds on the host; otherwise it is the cap for every batch (more pixels to
        upsample, no device sync). Both give the same image up to rounding.
        """
        N, C, H, W = images.shape
        f = self.Hz_geom
        L = f.shape[0]
        d = self._geom_delay
        cx, cy = (W - 1) / 2, (H - 1) / 2
        HS, WS = 2 * H + L - 2, 2 * W + L - 2          # sampled grid; a valid downsample makes it [H, W]
        px0, py0, px1, py1 = W - 1, H - 1, W - 1, H - 1
        if fit_margin:
            # The sampled grid in output coordinates spans v = (m - d) / 2 - c for m in [0, size).
            lo_x, hi_x = -d / 2 - cx, (WS - 1 - d) / 2 - cx
            lo_y, hi_y = -d / 2 - cy, (HS - 1 - d) / 2 - cy
            corners = misc.constant([[lo_x, lo_y, 1], [hi_x, lo_y, 1], [hi_x, hi_y, 1], [lo_x, hi_y, 1]],
                                    device=images.device, dtype=G_inv.dtype)
            src = G_inv @ corners.t()                                 # [N, 3, 4]
            reach = L / 4                                             # input pixels read by the upsampler per side
            margin = torch.stack([-src[:, 0].min() - cx, -src[:, 1].min() - cy,
                                   src[:, 0].max() - cx, src[:, 1].max() - cy]) + reach
            margin = margin.clamp(min=0).ceil().tolist()
            px0, py0, px1, py1 = [min(int(m), cap) for m, cap in zip(margin, [px0, py0, px1, py1])]
        images = F.pad(images, [px0, px1, py0, py1], mode='reflect')

        images = upfirdn2d.upfirdn2d(images, f, up=2, padding=[L - 1] * 4, gain=4)
        HU, WU = images.shape[2], images.shape[3]

        # Per-sample affine map: grid index m -> output coords v -> input coords u -> upsampled
        # index j = 2 (u + pad + c) + d -> grid_sample's normalised coordinate (2j + 1) / size - 1.
        grid_to_v = misc.constant([[0.5, 0, -d / 2 - cx], [0, 0.5, -d / 2 - cy], [0, 0, 1]],
                                  device=images.device, dtype=G_inv.dtype)
        u_to_norm = [[4 / WU, 0, (4 * (px0 + cx) + 2 * d + 1) / WU - 1],
                     [0, 4 / HU, (4 * (py0 + cy) + 2 * d + 1) / HU - 1], [0, 0, 1]]
        # A fitted margin changes per batch (and is on the host already): no cache entry per margin.
        make = torch.tensor if fit_margin else misc.constant
        u_to_norm = make(u_to_norm, device=images.device, dtype=G_inv.dtype)
        M = u_to_norm @ G_inv @ grid_to_v                                # [N, 3, 3]
        ys, xs = torch.meshgrid(torch.arange(HS, device=images.device, dtype=G_inv.dtype),
                                torch.arange(WS, device=images.device, dtype=G_inv.dtype), indexing='ij')
        coords = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, HS * WS, 3)
        grid = (coords @ M[:, :2, :].transpose(1, 2)).reshape(N, HS, WS, 2)
        images = grid_sample_gradfix.grid_sample(images, grid.to(images.dtype))

        return upfirdn2d.upfirdn2d(images, f, down=2, flip_filter=True)

    #------------------------------------------------------------------
    # Colour.

    def _color_matrix(self, N, C, device):
        """4x4 matrices [N, 4, 4] acting on (r, g, b, 1), or None when no colour step is enabled."""
        steps = [self.brightness, self.contrast, self.lumaflip] + ([self.hue, self.saturation] if C > 1 else [])
        if not any(s > 0 for s in steps):
            return None
        M = _eye(4, N, device)
        v = [1 / math.sqrt(3)] * 3                                     # luma axis
        vv = torch.zeros([1, 4, 4], device=device)
        vv[:, :3, :3] = 1 / 3                                          # v v^T
        zero = torch.zeros([N], device=device)
        one = torch.ones([N], device=device)

        if self.brightness > 0:
            b = self._normal([N], device) * self.brightness_std
            b = torch.where(self._fires(self.brightness * self.p, N, device), b, zero)
            M = _translate3d(b) @ M
        if self.contrast > 0:
            c = torch.exp2(self._normal([N], device) * self.contrast_std)
            c = torch.where(self._fires(self.contrast * self.p, N, device), c, one)
            M = _scale3d(c) @ M
        if self.lumaflip > 0:
            i = torch.floor(self._uniform([N], device) * 2)
            i = torch.where(self._fires(self.lumaflip * self.p, N, device), i, zero)
            M = (_eye(4, N, device) - 2 * vv * i.reshape(N, 1, 1)) @ M  # Householder reflection along v
        if C > 1 and self.hue > 0:
            theta = (self._uniform([N], device) * 2 - 1) * math.pi * self.hue_max
            theta = torch.where(self._fires(self.hue * self.p, N, device), theta, zero)
            M = _rotate3d(v, theta) @ M
        if C > 1 and self.saturation > 0:
            s = torch.exp2(self._normal([N], device) * self.saturation_std)
            s = torch.where(self._fires(self.saturation * self.p, N, device), s, one)
            sat = _eye(4, N, device)
            sat[:, :3, :3] = vv[:, :3, :3] + (torch.eye(3, device=device) - vv[:, :3, :3]) * s.reshape(N, 1, 1)
            M = sat @ M
        return M

    @staticmethod
    def _apply_color(images, M):
        N, C, H, W = images.shape
        x = images.reshape(N, C, H * W)
        if C == 3:
            x = M[:, :3, :3] @ x + M[:, :3, 3:]
        else:
            # Grey: average the colour rows; a grey pixel g is (g, g, g), so its weights add up.
            m = M[:, :3, :].mean(dim=1, keepdim=True)                  # [N, 1, 4]
            x = x * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
        return x.reshape(N, C, H, W)

    #------------------------------------------------------------------
    # Frequency-band filter, cutout.

    def _band_gains(self, N, device):
        """Per-sample gain of each band [N, 4].

        Band i's gain vector (t_i at band i, 1 elsewhere) is normalised on its own to keep the
        expected power under the prior spectrum, and the normalised vectors are multiplied
        (methods.md section 1). Normalising the product instead would give other gains as soon
        as two bands fire in one sample.
        """
        num_bands = self.Hz_fbank.shape[0]
        prior = misc.constant(np.array([10., 1., 1., 1.]) / 13, dtype=torch.float32, device=device)
        g = torch.ones([N, num_bands], device=device)
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = torch.exp2(self._normal([N], device) * self.imgfilter_std)
            t_i = torch.where(self._fires(self.imgfilter * band_strength * self.p, N, device), t_i, torch.ones_like(t_i))
            t = torch.ones([N, num_bands], device=device)
            t[:, i] = t_i
            t = t / (prior * t.square()).sum(dim=1, keepdim=True).sqrt()
            g = g * t
        return g

    def _apply_filter(self, images):
        N, C, H, W = images.shape
        taps = self._band_gains(N, images.device) @ self.Hz_fbank       # [N, 43] symmetric 1-D kernels
        taps = taps.repeat_interleave(C, dim=0).to(images.dtype)        # [N*C, 43]
        pad = taps.shape[1] // 2
        x = _reflect_pad(images.reshape(1, N * C, H, W), pad, pad, pad, pad)
        x = F.conv2d(x, taps.reshape(N * C, 1, 1, -1), groups=N * C)
        x = F.conv2d(x, taps.reshape(N * C, 1, -1, 1), groups=N * C)
        return x.reshape(N, C, H, W)

    def _cutout_mask(self, N, H, W, device):
        """[N, 1, H, W] float mask: 0 inside a box of cutout_size x cutout_size (fraction of the image)."""
        size = torch.where(self._fires(self.cutout * self.p, N, device), torch.full([N], self.cutout_size, device=device),
                           torch.zeros([N], device=device)).reshape(N, 1, 1)
        center = self._uniform([N, 2], device)
        x = (torch.arange(W, device=device) + 0.5) / W
        y = (torch.arange(H, device=device) + 0.5) / H
        out_x = (x.reshape(1, 1, W) - center[:, 0].reshape(N, 1, 1)).abs() >= size / 2
        out_y = (y.reshape(1, H, 1) - center[:, 1].reshape(N, 1, 1)).abs() >= size / 2
        return (out_x | out_y).to(torch.float32).unsqueeze(1)

    def extra_repr(self):
        names = ['xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac', 'brightness', 'contrast',
                 'lumaflip', 'hue', 'saturation', 'imgfilter', 'noise', 'cutout']
        return 'enabled=' + ','.join(n for n in names if getattr(self, n) > 0)

#----------------------------------------------------------------------------
