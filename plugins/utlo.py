"""UTLO (Khorram et al. 2024): unconditional training at lower resolutions for long-tailed
class-conditional data. G's layers up to res_uc ignore the class; their intermediate image
img_uc is judged by an unconditional D head, weighted alpha/(1+alpha) (methods.md section 6).

The network side (res_uc ws layout, img_uc, D.fromrgb_uc / out_uc / downsample_uc) lives in
training/networks.py, so a UTLO generator needs no plugin code at inference.
"""

import os

import torch
import torch.nn.functional as F

from plugins import Option, Plugin, register
from torch_utils import training_stats


def uc_weights(alpha):
    """(weight of the conditional term, weight of the unconditional term) = (1/(1+a), a/(1+a))."""
    return 1.0 / (1.0 + alpha), alpha / (1.0 + alpha)

@register('utlo')
class UTLOPlugin(Plugin):
    options = [
        Option('res-uc', type=int, default=8,
               help='UTLO: resolution up to which G is unconditional (power of two >= 4, below the image resolution)'),
        Option('alpha', type=float, default=1.0,
               help='UTLO: weight of the unconditional low-resolution loss, alpha/(1+alpha) vs 1/(1+alpha)'),
        Option('add-uc', type=bool, default=True,
               help='UTLO: add the unconditional low-resolution D term (false with --alpha=0 gives the conditional baseline)'),
        Option('utlo-grid-ticks', type=int, default=None,
               help='UTLO: write fakes_uc*.png (the img_uc of the sample grid) every N ticks [default: --snap]'),
    ]

    @classmethod
    def validate(cls, aug, methods, opts):
        res_uc, alpha = opts['res_uc'], opts['alpha']
        if res_uc < 4 or res_uc & (res_uc - 1) != 0:
            raise ValueError(f'--res-uc must be a power of two >= 4, got {res_uc}')
        if alpha < 0:
            raise ValueError(f'--alpha must be >= 0, got {alpha}')
        if opts['utlo_grid_ticks'] is not None and opts['utlo_grid_ticks'] < 1:
            raise ValueError(f'--utlo-grid-ticks must be at least 1, got {opts["utlo_grid_ticks"]}')
        if not opts['add_uc'] and alpha != 0:
            raise ValueError('--add-uc=false trains no unconditional head, so its loss weight must be 0: add --alpha=0')

    @classmethod
    def configure(cls, c, opts):
        tsk = c.get('training_set_kwargs') or {}
        if not tsk.get('use_labels', False):
            raise ValueError('UTLO is class-conditional: add --cond=1 (and a dataset with labels)')
        res_uc = int(opts['res_uc'])
        resolution = tsk.get('resolution')
        if resolution is not None and res_uc >= resolution:
            raise ValueError(f'--res-uc={res_uc} must be below the image resolution {resolution}')
        g_arch = (c.G_kwargs.get('synthesis_kwargs') or {}).get('architecture', 'skip')
        if g_arch != 'skip':
            raise ValueError(f'UTLO needs the "skip" G architecture (got "{g_arch}"): img_uc is its skip RGB image')
        d_arch = c.D_kwargs.get('architecture', 'resnet')
        if d_arch not in ('resnet', 'orig'):
            raise ValueError(f'UTLO needs the "resnet" or "orig" D architecture, got "{d_arch}"')
        c.G_kwargs['res_uc'] = res_uc
        c.D_kwargs['res_uc'] = res_uc
        if opts['utlo_grid_ticks'] is None:     # fakes_uc grids beside the fakes grids (every 50 ticks without them)
            opts['utlo_grid_ticks'] = c.get('image_snapshot_ticks') or 50

    @classmethod
    def describe(cls, opts):
        tag = f'res-uc{opts["res_uc"]}'
        if opts['add_uc']:
            tag += '-add-uc'
        return tag + f'-alpha-{float(opts["alpha"])}'

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.alpha = float(opts['alpha'])
        self.add_uc = bool(opts['add_uc'])
        self.w_main, self.w_uc = uc_weights(self.alpha)
        self.grid_ticks = opts['utlo_grid_ticks']
        self.run_dir = None
        self.G_ema = None
        self.grid = None

    def setup(self, G, D, G_ema, ctx):
        if not getattr(G, 'res_uc', 0) or not getattr(D, 'res_uc', 0):
            raise ValueError('UTLO needs G and D built with res_uc > 0 (UTLOPlugin.configure sets it)')
        self.G_ema = G_ema
        self.run_dir = ctx.get('run_dir')
        if self.rank == 0 and self.run_dir is not None and ctx.get('training_set') is not None:
            self.grid = _tail_first_grid(ctx.training_set, G.z_dim, self.device)

    def synthesis_kwargs(self, phase):
        if self.add_uc and phase.main:
            return {'add_uc': True}
        return {}

    def main_loss_weight(self, phase):
        return self.w_main if phase.main else 1.0

    def _D_uc(self, ctx, img_low, is_real):
        """Logits of the unconditional head on A(img_low): [N, 1]."""
        return ctx.D(ctx.augment(img_low, is_real), None, uc=True)

    def extra_loss(self, phase, ctx):
        if not self.add_uc or not phase.main or not ctx.gen_extra:
            return None
        img_uc = ctx.gen_extra[0]
        total = 0
        if phase.net == 'G':
            logits = self._D_uc(ctx, img_uc, False)
            training_stats.report('Loss/scores/fake_uc', logits)
            training_stats.report('Loss/signs/fake_uc', logits.sign())
            loss_uc = F.softplus(-logits)
            training_stats.report('Loss/G/loss_uc', loss_uc)
            total = total + loss_uc.mean()
        if phase.net == 'D':
            logits_fake = self._D_uc(ctx, img_uc.detach(), False)
            training_stats.report('Loss/scores/fake_uc', logits_fake)
            training_stats.report('Loss/signs/fake_uc', logits_fake.sign())
            # The reals are downsampled first, then augmented; R1 stays on the main branch.
            real_low = ctx.D.downsample_uc(ctx.real_img.detach())
            logits_real = self._D_uc(ctx, real_low, True)
            training_stats.report('Loss/scores/real_uc', logits_real)
            training_stats.report('Loss/signs/real_uc', logits_real.sign())
            loss_D_uc = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
            training_stats.report('Loss/D/loss_uc', F.softplus(logits_fake) + F.softplus(-logits_real))
            total = total + loss_D_uc
        return total * self.w_uc

    # --- fakes_uc grids ---------------------------------------------------------------------

    def on_tick(self, state, tick):
        # The img_uc grid every grid_ticks ticks (the image-snapshot schedule by default) and at the end.
        if self.grid is not None and (tick.done or state.cur_tick % self.grid_ticks == 0):
            save_uc_grid(self.G_ema, self.grid, os.path.join(self.run_dir, f'fakes_uc{state.cur_nimg // 1000:06d}.png'))

def _tail_first_grid(training_set, z_dim, device, rows=8, seed=0):
    """Latents and labels for the fakes_uc grid: one row per class, tail classes first (as in the ref)."""
    label_dim = training_set.label_dim
    classes = list(range(label_dim))[::-1][:rows] if label_dim > 0 else [None]
    cols = 8
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([len(classes) * cols, z_dim], generator=gen)
    c = torch.zeros([len(classes) * cols, max(label_dim, 0)])
    for i, k in enumerate(classes):
        if k is not None:
            c[i * cols:(i + 1) * cols, k] = 1
    return dict(z=z.to(device), c=c.to(device), grid_size=(cols, len(classes)))

@torch.no_grad()
def save_uc_grid(G_ema, grid, path):
    """Save G_ema's img_uc for the grid latents as a PNG (noise const), one class per row."""
    import PIL.Image
    img_uc = torch.cat([G_ema(z=z, c=c, noise_mode='const', add_uc=True)[1].cpu()
                        for z, c in zip(grid['z'].split(16), grid['c'].split(16))])
    cols, rows = grid['grid_size']
    img = ((img_uc * 127.5 + 128).clamp(0, 255).to(torch.uint8)).numpy()
    _n, ch, h, w = img.shape
    img = img.reshape(rows, cols, ch, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, cols * w, ch)
    PIL.Image.fromarray(img[:, :, 0] if ch == 1 else img, 'L' if ch == 1 else 'RGB').save(path)
