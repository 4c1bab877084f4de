"""The base augmentation family chosen with --aug (methods.md section 1):
'ada' (adaptive p), 'fixed' (constant p) and 'noaug' (no augmentation).
"""

from plugins import AdaptiveP, Option, Plugin, register
from torch_utils import misc, training_stats

ADA_INTERVAL = 4

def _augpipe_names():
    from training.augment import augpipe_specs
    return sorted(augpipe_specs)

# The base family's options, declared once here and listed by every plugin that reads them
# (apa.py reads TARGET and AUGPIPE too).
P = Option('p', type=float, default=None, help='Augmentation probability for --aug=fixed (0 <= P <= 1)')
TARGET = Option('target', type=float, default=0.6, help='ADA / APA target value of the overfitting heuristic r_t')
AUGPIPE = Option('augpipe', type=str, default='bgc',
                 help='Augmentation pipeline: a preset of training/augment.py, e.g. blit, geom, color, bgc, bgcfnc')

def check_augpipe(opts):
    if opts['augpipe'] not in _augpipe_names():
        raise ValueError(f'unknown --augpipe "{opts["augpipe"]}"; choose one of: {", ".join(_augpipe_names())}')

def check_target(opts):
    if not 0 <= opts['target'] <= 1:
        raise ValueError(f'--target must be between 0 and 1, got {opts["target"]}')

def augpipe_tag(opts):
    """'-NAME' for a pipeline other than the default (part of the run directory name)."""
    return '' if opts['augpipe'] == AUGPIPE.default else f'-{opts["augpipe"]}'

def build_augment_pipe(augpipe, device):
    """AugmentPipe for a preset name, in training mode, with p = 0 and no trainable parameters."""
    from training.augment import AugmentPipe, augpipe_specs
    pipe = AugmentPipe(**augpipe_specs[augpipe]).train().requires_grad_(False).to(device)
    misc.set_host_value(pipe.p, 0.0)
    return pipe

#----------------------------------------------------------------------------

class _AugmentBase(Plugin):
    """Shared by 'ada' and 'fixed': owns the AugmentPipe that becomes the snapshot's augment_pipe."""
    kind = 'aug'
    order = 20
    provides_augment_pipe = True

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.augment_pipe = build_augment_pipe(opts['augpipe'], device)

    def augment_D_input(self, img, is_real, phase):
        return self.augment_pipe(img)

    def report_stats(self):
        training_stats.report0('Progress/augment', misc.host_value(self.augment_pipe.p))

    def status_text(self):
        return f'augment {misc.host_value(self.augment_pipe.p):.3f}'

    def state_for_snapshot(self):
        return dict(p=float(self.augment_pipe.p))

    def load_state(self, state):
        if 'p' in state:
            misc.set_host_value(self.augment_pipe.p, float(state['p']))

@register('ada')
class ADAPlugin(_AugmentBase):
    """Adaptive p: every 4 iterations p moves by sign(E[sign(D(real))] - target) * B * 4 / (ada_kimg * 1000)."""
    options = [TARGET, AUGPIPE]
    option_hints = {'p': 'ada adapts p itself; use --target to steer it'}

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.controller = AdaptiveP(self.augment_pipe.p, target=opts['target'], speed_kimg=opts['ada_kimg'],
                                    interval=ADA_INTERVAL, stat_name='Loss/signs/real')

    @classmethod
    def validate(cls, aug, methods, opts):
        check_target(opts)
        check_augpipe(opts)

    @classmethod
    def describe(cls, opts):
        target = '' if opts['target'] == TARGET.default else f'-target{opts["target"]:g}'
        return 'ada' + target + augpipe_tag(opts)

    def end_of_iteration(self, state, stats):
        self.controller.update(state.batch_idx, state.batch_size)

    def on_D_rewind(self):
        self.controller.restart()   # a rewound D has not overfit yet: p starts again from 0

    def state_for_snapshot(self):
        return dict(p=float(self.augment_pipe.p), controller=self.controller.state_dict())

    def load_state(self, state):
        super().load_state(state)
        controller = dict(state.get('controller') or {})
        if 'pending' in state:   # snapshots written before the controller owned the window
            controller['pending'] = state['pending']
        self.controller.load_state_dict(controller)

#----------------------------------------------------------------------------

@register('fixed')
class FixedPlugin(_AugmentBase):
    """Constant p = --p."""
    options = [P, AUGPIPE]

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        misc.set_host_value(self.augment_pipe.p, float(opts['p']))

    @classmethod
    def validate(cls, aug, methods, opts):
        p = opts['p']
        if p is None:
            raise ValueError('--aug=fixed needs --p=P (the constant augmentation probability, 0 <= P <= 1)')
        if not 0 <= p <= 1:
            raise ValueError(f'--p must be between 0 and 1, got {p}')
        check_augpipe(opts)

    @classmethod
    def describe(cls, opts):
        return f'fixed-p{opts["p"]:g}' + augpipe_tag(opts)

    def load_state(self, state):
        pass    # p is the command-line constant, not the resumed value

@register('noaug')
class NoAugPlugin(Plugin):
    """No augmentation: D sees the images as they are."""
    kind = 'aug'
    order = 20

    @classmethod
    def describe(cls, opts):
        return 'noaug'
