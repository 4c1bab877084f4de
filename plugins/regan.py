"""Re-GAN (Saxena et al. 2023): alternate sparse and dense phases of G during one run. In a
sparse phase the smallest-magnitude fraction of every G tensor is zeroed and frozen; in a dense
phase everything regrows at a tenth of the learning rate (methods.md section 7). D is never pruned.

DDP: each rank computes its masks from its own copy of G's weights; DDP keeps those weights
identical on every rank, so the masks are identical too and need no broadcast.
"""

import re

from plugins import Option, Plugin, register
from plugins.masks import ParamMasks
from torch_utils import training_stats

WARMUP, SPARSE, DENSE = 'warmup', 'sparse', 'dense'
PHASE_CODES = {WARMUP: 0, SPARSE: 1, DENSE: 2}  # numeric form for the stats
DENSE_LR_FACTOR = 0.1

#----------------------------------------------------------------------------
# Pure functions: schedule and the parameters covered.

def schedule(it, warmup, g, ref_extra_sparse_iter=False):
    """Mode and LR factor of iteration `it` (0-based G steps).

    warm-up (dense, LR x1) for `warmup` iterations, then sparse (x1) and dense (x0.1) phases of
    `g` iterations each, alternating. ref_extra_sparse_iter: the StyleGAN2 ref's flag counter
    makes the first sparse phase g+1 iterations long.
    """
    if it < warmup:
        return WARMUP, 1.0
    t = it - warmup
    if ref_extra_sparse_iter:
        if t <= g:
            return SPARSE, 1.0
        t -= 1
    if (t // g) % 2 == 0:
        return SPARSE, 1.0
    return DENSE, DENSE_LR_FACTOR

def select_params(module, exclude='torgb', skip_bias=False, include=None):
    """Names of the parameters Re-GAN covers: those matching `include` (regex search; None =
    all) but not `exclude`; with skip_bias also not biases and 1-element tensors."""
    pattern = re.compile(exclude) if exclude else None
    keep = re.compile(include) if include else None
    names = []
    for name, param in module.named_parameters():
        if pattern is not None and pattern.search(name):
            continue
        if keep is not None and not keep.search(name):
            continue
        if skip_bias and (name.endswith('bias') or param.numel() == 1):
            continue
        names.append(name)
    return names

def uses_per_image(name, param):
    """How often one weight entry is used per generated image: the output pixel count of the
    block for synthesis conv kernels, once for everything else (FC weights, affines)."""
    m = re.search(r'synthesis\.b(\d+)\.', name)
    if m and param.ndim == 4:
        return int(m.group(1)) ** 2
    return 1

def iterations(opts, what):
    """--regan-{what} in iterations, or --regan-{what}-kimg converted with the global batch."""
    kimg = opts[f'regan_{what}_kimg']
    if kimg is not None:
        return max(1 if what == 'g' else 0, int(round(kimg * 1000 / opts['batch_size'])))
    return int(opts[f'regan_{what}'])

#----------------------------------------------------------------------------

@register('regan')
class ReGANPlugin(Plugin):
    options = [
        Option('regan-sparsity', type=float, default=0.3, help='Re-GAN: fraction of each G tensor pruned in sparse phases'),
        Option('regan-g', type=int, default=5000, help='Re-GAN: length of each sparse and dense phase, in iterations'),
        Option('regan-warmup', type=int, default=10000, help='Re-GAN: dense warm-up iterations before the first sparse phase'),
        Option('regan-refresh', type=str, default='every_step',
               help='Re-GAN: recompute masks on every sparse iteration (every_step, StyleGAN2 ref) or only when a sparse phase starts (phase_start)'),
        Option('regan-exclude', type=str, default='torgb', help='Re-GAN: regex of G parameter names never pruned'),
        Option('regan-include', type=str, default=None, help='Re-GAN: regex; prune only G parameters whose names match [default: all]'),
        Option('regan-skip-bias', type=bool, default=False, help='Re-GAN: also leave biases and 1-element tensors dense'),
        Option('regan-g-kimg', type=float, default=None, help='Re-GAN: phase length in kimg instead of iterations (overrides --regan-g)'),
        Option('regan-warmup-kimg', type=float, default=None, help='Re-GAN: warm-up in kimg instead of iterations (overrides --regan-warmup)'),
        Option('regan-ref-extra-sparse-iter', type=bool, default=False,
               help='Re-GAN: make the first sparse phase g+1 iterations long, like the StyleGAN2 ref'),
    ]

    @classmethod
    def validate(cls, aug, methods, opts):
        s = opts['regan_sparsity']
        if not 0 <= s < 1:
            raise ValueError(f'--regan-sparsity must be in [0, 1), got {s}')
        if opts['regan_g'] < 1:
            raise ValueError(f'--regan-g must be a positive number of iterations, got {opts["regan_g"]}')
        if opts['regan_warmup'] < 0:
            raise ValueError(f'--regan-warmup must be >= 0, got {opts["regan_warmup"]}')
        if opts['regan_refresh'] not in ('every_step', 'phase_start'):
            raise ValueError(f'--regan-refresh must be every_step or phase_start, got {opts["regan_refresh"]}')
        for key in ('regan_exclude', 'regan_include'):
            if opts[key] is None:          # --regan-include's default: no pattern
                continue
            try:
                re.compile(opts[key])
            except re.error as e:
                raise ValueError(f'--{key.replace("_", "-")} is not a valid regex: {e}')

    @classmethod
    def describe(cls, opts):
        return f'regan-s{opts["regan_sparsity"]:g}-g{iterations(opts, "g")}'

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.sparsity = float(opts['regan_sparsity'])
        self.g = iterations(opts, 'g')
        self.warmup = iterations(opts, 'warmup')
        self.include = opts['regan_include']
        self.refresh = opts['regan_refresh']
        self.exclude = opts['regan_exclude']
        self.skip_bias = opts['regan_skip_bias']
        self.ref_extra = opts['regan_ref_extra_sparse_iter']
        self.masks = None           # ParamMasks over the covered G parameters (True = kept)
        self.mode = WARMUP
        self.lr_factor = 1.0
        self.G_lr = None            # the Gmain LR in force, for the stats

    def attach(self, G):
        """Bind to the training G with nothing pruned yet."""
        self.masks = ParamMasks(G, select_params(G, self.exclude, self.skip_bias, self.include))

    def update_masks(self):
        """Recompute every mask from the current weights and zero the pruned weights."""
        self.masks.prune_per_tensor(self.sparsity)
        self.masks.apply_to_weights()

    # --- hooks ------------------------------------------------------------------------------

    def setup(self, G, D, G_ema, ctx):
        self.attach(G)

    def on_iteration_start(self, state):
        prev_mode = self.mode
        self.mode, self.lr_factor = schedule(state.batch_idx, self.warmup, self.g, self.ref_extra)
        for phase in state.phases:
            if phase.name.net == 'G' and phase.opt is not None:
                for group in phase.opt.param_groups:
                    group['lr'] = phase.lr * self.lr_factor
        entering = self.mode == SPARSE and prev_mode != SPARSE
        if self.mode == SPARSE and (self.refresh == 'every_step' or entering or not self.masks.any_pruned()):
            self.update_masks()

    def after_backward(self, phase, module):
        if self.mode == SPARSE and phase.net == 'G':
            self.masks.apply_to_grads()
            self.masks.apply_to_weights()

    def after_step(self, phase, module):
        if self.mode == SPARSE and phase.net == 'G':
            self.masks.apply_to_weights()

    def before_ema(self, G, G_ema):
        if self.mode == SPARSE:
            self.masks.apply_to_weights(G_ema)

    # --- stats and state --------------------------------------------------------------------

    def sparsity_stats(self):
        """(per-tensor pruned fraction, overall fraction, MACs saved per image, fraction of covered MACs)."""
        counts = self.masks.pruned_counts() if self.mode == SPARSE else {}
        per_tensor, pruned, total, macs_saved, macs_total = {}, 0, 0, 0, 0
        for name, mask in self.masks.items():
            n_pruned = counts.get(name, 0)
            per_tensor[name] = n_pruned / mask.numel()
            pruned += n_pruned
            total += mask.numel()
            if name.endswith('weight'):
                uses = uses_per_image(name, self.masks.params[name])
                macs_saved += n_pruned * uses
                macs_total += mask.numel() * uses
        return per_tensor, pruned / max(total, 1), macs_saved, macs_saved / max(macs_total, 1)

    def status_text(self):
        return f'regan {self.mode}'

    def report_stats(self):
        per_tensor, overall, macs_saved, macs_frac = self.sparsity_stats()
        training_stats.report0('ReGAN/phase', PHASE_CODES[self.mode])
        training_stats.report0('ReGAN/lr_factor', self.lr_factor)
        if self.G_lr is not None:
            training_stats.report0('ReGAN/G_lr', self.G_lr)
        training_stats.report0('ReGAN/sparsity', overall)
        training_stats.report0('ReGAN/macs_saved_per_image', macs_saved)
        training_stats.report0('ReGAN/macs_saved_fraction', macs_frac)
        for name, frac in per_tensor.items():
            training_stats.report0(f'ReGAN/sparsity/{name}', frac)

    def end_of_iteration(self, state, stats):
        for phase in state.phases:
            if phase.name.net == 'G' and phase.name.main and phase.opt is not None:
                self.G_lr = phase.opt.param_groups[0]['lr']

    def state_for_snapshot(self):
        return dict(mode=self.mode, lr_factor=self.lr_factor, masks=self.masks.state_dict())

    def load_state(self, state):
        self.mode = state.get('mode', self.mode)
        self.lr_factor = state.get('lr_factor', self.lr_factor)
        # Snapshots written before the shared mask class hold {name: True = pruned}.
        self.masks.load_state_dict(state.get('masks', {}), old_polarity='pruned')
