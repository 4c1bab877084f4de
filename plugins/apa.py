"""APA, Adaptive Pseudo Augmentation (Jiang et al. 2021, "Deceive D"): with an adaptive
probability p, real images in D's real batch are swapped for G's current fakes, still
labelled real (methods.md section 4). No extra G forward: the fakes of the latest Gmain are reused.

With several accumulation rounds per phase, every Gmain round's fakes are kept and D round r
draws from Gmain round r's, so no fake stands in for two reals of one D phase (the reference
never accumulates: its whole per-GPU batch is one round). Dmain and Dreg of an iteration use
the same rounds, as in the reference.
"""

import torch

from plugins import AdaptiveP, Option, Plugin, register
from plugins.ada import ADA_INTERVAL, AUGPIPE, TARGET, build_augment_pipe, check_augpipe, check_target
from torch_utils import misc, training_stats


def mix_batches(real, pseudo, flags):
    """Per-sample choice: row i of the result is pseudo[i] where flags[i] else real[i].

    real, pseudo: [N, C, H, W]; flags: bool [N]. Returns a new tensor (detached).
    """
    return torch.where(flags.view(-1, 1, 1, 1), pseudo.to(real.dtype), real).detach()

def match_batch(pseudo, n):
    """Match the pseudo batch to n rows (truncate, or repeat cyclically if it is smaller)."""
    if pseudo.shape[0] == n:
        return pseudo
    idx = torch.arange(n, device=pseudo.device) % pseudo.shape[0]
    return pseudo[idx]

@register('apa')
class APAPlugin(Plugin):
    kind = 'aug'
    order = 10      # the batch is replaced before any augmentation sees it
    provides_augment_pipe = True
    options = [
        TARGET,
        AUGPIPE,
        Option('with-dataaug', type=bool, default=False,
               help='APA: also apply the ADA pipeline (--augpipe) in every D call; its p is shared '
                    'with APA\'s p as in the APA reference'),
        Option('apa-fixed-p', type=float, default=None,
               help='APA: keep p constant at this value instead of adapting it to --target'),
    ]
    option_hints = {'p': 'with --aug=apa, --apa-fixed-p holds the APA probability constant'}

    @classmethod
    def validate(cls, aug, methods, opts):
        check_target(opts)
        if 'augpipe' in opts['typed'] and not opts['with_dataaug']:
            raise ValueError('--augpipe only matters with --aug=apa --with-dataaug=true; add that or drop --augpipe')
        fixed = opts['apa_fixed_p']
        if fixed is not None and not 0 <= fixed <= 1:
            raise ValueError(f'--apa-fixed-p must be in [0, 1], got {fixed}')
        if opts['with_dataaug']:
            check_augpipe(opts)

    @classmethod
    def describe(cls, opts):
        tag = 'apa-wdataaug' if opts['with_dataaug'] else 'apa'
        if opts['apa_fixed_p'] is not None:
            tag += f'-p{opts["apa_fixed_p"]:g}'
        return tag

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.with_dataaug = bool(opts['with_dataaug'])
        self.fixed_p = opts['apa_fixed_p']
        self.pseudo = []            # per Gmain round of the latest G phase: detached fakes [N, C, H, W]
        self._new_capture = True    # the next Gmain capture starts a new list (a D phase ran since)
        self._d_phase = None        # the D phase whose rounds are being counted
        self._d_round = 0
        self.augment_pipe = None
        if self.with_dataaug:
            self.augment_pipe = build_augment_pipe(opts['augpipe'], device)
            self.p = self.augment_pipe.p            # one shared p (APA ref behaviour)
        else:
            self.p = torch.zeros([], device=device)
        misc.set_host_value(self.p, 0.0 if self.fixed_p is None else float(self.fixed_p))
        self.controller = None
        if self.fixed_p is None:
            self.controller = AdaptiveP(self.p, target=opts['target'], speed_kimg=opts['ada_kimg'],
                                        interval=ADA_INTERVAL, stat_name='Loss/signs/real')

    def after_phase(self, phase, ctx):
        # The fakes G's main phase just produced become this round's pseudo batch.
        if phase.net == 'G' and phase.main and ctx.gen_img is not None:
            if self._new_capture:
                self.pseudo, self._new_capture, self._d_phase = [], False, None
            self.pseudo.append(ctx.gen_img.detach())

    def _next_pseudo(self, phase):
        """The fakes of the Gmain round matching this D round (rounds counted per D phase), or None."""
        self._new_capture = True
        if phase != self._d_phase:
            self._d_phase, self._d_round = phase, 0
        round_idx, self._d_round = self._d_round, self._d_round + 1
        if not self.pseudo:
            return None
        return self.pseudo[round_idx % len(self.pseudo)]

    def replace_real_batch(self, real_img, phase):
        if phase.net != 'D':   # D's phases see the real batch
            return real_img
        pseudo = self._next_pseudo(phase)       # counted even when p is 0, so the rounds stay aligned
        if misc.host_value(self.p) <= 0:      # known on the host unless someone else wrote p
            return real_img
        flags = torch.rand([real_img.shape[0]], device=real_img.device) < self.p
        training_stats.report('APA/replaced_fraction', flags.float())
        if pseudo is None:
            if not bool(flags.any()):
                return real_img
            raise RuntimeError('APA: real samples are to be replaced but no Gmain fakes exist yet; '
                               'the Gmain phase must run before Dmain/Dreg in each iteration')
        # No `flags.any()` test in the normal path: it would stall the GPU once per D phase,
        # and with no flag set the result equals real_img anyway.
        pseudo = match_batch(pseudo, real_img.shape[0]).to(real_img.device)
        return mix_batches(real_img, pseudo, flags)

    def augment_D_input(self, img, is_real, phase):
        if self.augment_pipe is None:
            return img
        return self.augment_pipe(img)

    def end_of_iteration(self, state, stats):
        if self.controller is not None:
            self.controller.update(state.batch_idx, state.batch_size)

    def on_D_rewind(self):
        if self.controller is not None:     # a rewound D has not overfit yet: p restarts from 0
            self.controller.restart()

    def report_stats(self):
        training_stats.report0('Progress/augment', misc.host_value(self.p))

    def status_text(self):
        return f'apa-p {misc.host_value(self.p):.3f}'

    def state_for_snapshot(self):
        return dict(p=float(self.p),
                    controller=None if self.controller is None else self.controller.state_dict())

    def load_state(self, state):
        if state.get('p') is not None:
            misc.set_host_value(self.p, float(state['p']))
        # p and the pending window are restored; the controller's target and speed come from
        # this run's options (ada_kimg is 100 when resuming).
        if self.controller is not None and state.get('controller') is not None:
            self.controller.load_state_dict(state['controller'], schedule=False)
