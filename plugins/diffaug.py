"""DiffAugment (Zhao et al. 2020): the same differentiable colour / translation / cutout
transform applied to every image D sees, reals and fakes, in every phase (methods.md section 5).

Selected with `--aug=diffaug`, or stacked after ADA / APA with `--diffaug-policy=...`.
"""

import torch
import torch.nn.functional as F

from plugins import Option, Plugin, register

DEFAULT_POLICY = 'color,translation,cutout'
TRANSLATION_RATIO = 0.125   # max shift as a fraction of the image side
CUTOUT_RATIO = 0.5          # side of the zeroed square as a fraction of the image side

#----------------------------------------------------------------------------
# The ops. x: [N, C, H, W] float in [-1, 1]; every random draw is per sample.

def _per_sample_uniform(x, low, high):
    """[N, 1, 1, 1] uniform draws in [low, high) on x's device and dtype."""
    return torch.rand([x.shape[0], 1, 1, 1], device=x.device, dtype=x.dtype) * (high - low) + low

def rand_brightness(x):
    """Add one U(-0.5, 0.5) offset per image."""
    return x + _per_sample_uniform(x, -0.5, 0.5)

def rand_saturation(x):
    """Scale each pixel's deviation from its channel mean (per pixel, across C) by U(0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_sample_uniform(x, 0.0, 2.0) + mean

def rand_contrast(x):
    """Scale each image's deviation from its global mean by U(0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * _per_sample_uniform(x, 0.5, 1.5) + mean

def _batch_grid(n, h, w, device):
    """Index tensors [n, h, w] for batch, row and column."""
    return torch.meshgrid(torch.arange(n, device=device), torch.arange(h, device=device),
                          torch.arange(w, device=device), indexing='ij')

def rand_translation(x, ratio=TRANSLATION_RATIO):
    """Shift each image by an integer in [-round(s*ratio), +round(s*ratio)] per axis, zero fill.

    A one-pixel zero border is added and indices are clamped onto it, so every output pixel
    is either a shifted input pixel or exactly 0. A gather keeps it differentiable (and
    twice differentiable, for R1).
    """
    n, _c, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, size=[n, 1, 1], device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, size=[n, 1, 1], device=x.device)
    gb, gy, gx = _batch_grid(n, h, w, x.device)
    gy = (gy + dy + 1).clamp(0, h + 1)      # +1: index into the padded image
    gx = (gx + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()

def rand_cutout(x, ratio=CUTOUT_RATIO):
    """Zero a square of side round(s*ratio) centred uniformly at random (clipped at the border)."""
    n, _c, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Centres range over [0, s) for even sides and [0, s] for odd ones (as in the DA ref).
    cy = torch.randint(0, h + (1 - size_y % 2), size=[n, 1, 1], device=x.device)
    cx = torch.randint(0, w + (1 - size_x % 2), size=[n, 1, 1], device=x.device)
    gb, gy, gx = _batch_grid(n, size_y, size_x, x.device)
    gy = (gy + cy - size_y // 2).clamp(0, h - 1)
    gx = (gx + cx - size_x // 2).clamp(0, w - 1)
    mask = torch.ones([n, h, w], device=x.device, dtype=x.dtype)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)

# Each --diffaug-policy name and the functions it applies, in this order.
POLICY_OPS = dict(color=[rand_brightness, rand_saturation, rand_contrast], translation=[rand_translation],
                  cutout=[rand_cutout])

def parse_policy(policy):
    """'color,cutout' -> ['color', 'cutout']; raises ValueError naming the valid ops."""
    names = [p.strip() for p in (policy or '').split(',') if p.strip()]
    for name in names:
        if name not in POLICY_OPS:
            raise ValueError(f'unknown DiffAugment op "{name}" in --diffaug-policy; '
                             f'choose a comma-separated subset of: {", ".join(POLICY_OPS)}')
    return names

def diff_augment(x, policy):
    """Apply the ops of `policy` (str or list) in order. x: [N, C, H, W] -> same shape."""
    names = parse_policy(policy) if isinstance(policy, str) else list(policy)
    for name in names:
        for op in POLICY_OPS[name]:
            x = op(x)
    return x

#----------------------------------------------------------------------------

def effective_policy(aug, opts):
    """The policy string in force: the option if given, else the default under --aug=diffaug."""
    policy = opts['diffaug_policy']
    if policy is None:
        return DEFAULT_POLICY if aug == 'diffaug' else ''
    return policy

@register('diffaug')
class DiffAugPlugin(Plugin):
    kind = 'aug'
    order = 30      # after APA batch replacement (10) and ADA (20)
    options = [
        Option('diffaug-policy', type=str, default=None,
               help=f'DiffAugment ops, comma-separated subset of color,translation,cutout '
                    f'[default: {DEFAULT_POLICY} with --aug=diffaug; empty disables]. '
                    f'With another --aug (e.g. ada) it stacks DiffAugment after that augmentation.'),
    ]

    @classmethod
    def is_active(cls, aug, methods, opts):
        return aug == 'diffaug' or bool(opts['diffaug_policy'])

    @classmethod
    def validate(cls, aug, methods, opts):
        parse_policy(effective_policy(aug, opts))

    @classmethod
    def describe(cls, opts):
        names = parse_policy(effective_policy(opts['aug'], opts))
        return '-'.join(['diffaug'] + names) if names else 'diffaug-none'

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.policy = parse_policy(effective_policy(opts['aug'], opts))

    def augment_D_input(self, img, is_real, phase):
        return diff_augment(img, self.policy)
