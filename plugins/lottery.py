"""GAN lottery tickets + AdvAug ("Ultra-Data-Efficient GAN Training", Chen et al.; methods.md
section 9, StyleGAN2 port). Ticket search: rounds of training, global magnitude pruning of
G's conv kernels and rewinding to the initial weights theta_0. Ticket training: fixed masks,
plus AdvAug, a one-step sign-gradient perturbation of D's last features and G's 4x4 features.

Pruned weights are stored as zeros in G itself, so a ticket generator needs no plugin code.
"""

import os

import torch
import torch.nn.functional as F

from plugins import Option, Plugin, register
from plugins.masks import ParamMasks
from torch_utils import training_stats

PRUNABLE_LAYERS = ('SynthesisLayer', 'ToRGBLayer', 'Conv2dLayer')   # G's conv kernels

#----------------------------------------------------------------------------
# Tickets: masks (plugins.masks.ParamMasks, True = weight kept) over G's conv kernels.

def prunable_names(G):
    """Names of the conv kernels IMP prunes: `.weight` of SynthesisLayer, ToRGBLayer and
    Conv2dLayer modules (mapping and affine FCs, biases, noise, const are never pruned)."""
    names = []
    for mod_name, module in G.named_modules():
        if type(module).__name__ in PRUNABLE_LAYERS and isinstance(getattr(module, 'weight', None), torch.nn.Parameter):
            names.append(f'{mod_name}.weight' if mod_name else 'weight')
    return names

def ticket_masks(G):
    """All-kept masks over G's prunable tensors, in G's parameter order (the order IMP ranks them in)."""
    prunable = set(prunable_names(G))
    return ParamMasks(G, [name for name, _ in G.named_parameters() if name in prunable])

def cpu_state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

#----------------------------------------------------------------------------
# AdvAug: sign-gradient steps on features, computed on detached copies (a constant offset).

def feature_perturbation(fn, f, gamma, steps, direction=1.0):
    """delta with f + delta = f + gamma * sum_t sign(grad of direction * mean fn(f + delta_t)).

    fn: features -> logits; f: any shape. Only the features get a gradient here (no
    parameter .grad is touched). Returns the detached offset, same shape as f.
    """
    delta = torch.zeros_like(f, dtype=torch.float32)
    for _ in range(steps):
        f_var = (f.detach().float() + delta).to(f.dtype).requires_grad_(True)
        with torch.enable_grad():
            objective = fn(f_var).float().mean() * direction
            grad, = torch.autograd.grad(objective, [f_var])
        delta = delta + gamma * grad.float().sign()
    return delta.to(f.dtype).detach()

#----------------------------------------------------------------------------

@register('lottery')
class LotteryPlugin(Plugin):
    options = [
        Option('imp-rounds', type=int, default=0, help='lottery: rounds of iterative magnitude pruning before training the ticket'),
        Option('imp-percent', type=float, default=0.2, help='lottery: fraction of the remaining G conv weights pruned per round'),
        Option('imp-kimg', type=float, default=None, help='lottery: training length of each IMP round, in kimg; after the last round the ticket trains for the rest of --kimg'),
        Option('rewind-D', type=bool, default=True, help='lottery: rewind D to its initial weights after each round / for a ticket'),
        Option('ticket', type=str, default=None, help='lottery: train this ticket (a ticket-*.pt file written by a search)'),
        Option('ticket-out', type=str, default=None, help='lottery: also write the latest ticket to this path [default: run dir only]'),
        Option('advaug-gamma', type=float, default=0.01, help='lottery: AdvAug step size on features (0 disables AdvAug)'),
        Option('advaug-steps', type=int, default=1, help='lottery: AdvAug sign-gradient steps'),
        Option('advaug-sign', type=str, default='ref',
               help='lottery: AdvAug direction: ref (raise D\'s logit for reals and fakes, as the reference) or loss_ascent'),
        Option('advaug-G-target', type=str, default='b4', help='lottery: G feature AdvAug perturbs: b4 (the 4x4 block output) or ws'),
    ]

    @classmethod
    def validate(cls, aug, methods, opts):
        rounds = opts['imp_rounds']
        if rounds < 0:
            raise ValueError(f'--imp-rounds must be >= 0, got {rounds}')
        if rounds > 0:
            if opts['imp_kimg'] is None or opts['imp_kimg'] <= 0:
                raise ValueError('--imp-rounds needs the length of each round: add --imp-kimg=<kimg>')
            if opts['ticket']:
                raise ValueError('--ticket trains a given ticket; it cannot be combined with --imp-rounds (a new search)')
            total = opts['total_kimg']
            if total is not None and rounds * opts['imp_kimg'] > total:
                raise ValueError(f'--kimg={total} is shorter than the search (--imp-rounds x --imp-kimg = {rounds * opts["imp_kimg"]:g})')
        if not 0 < opts['imp_percent'] < 1:
            raise ValueError(f'--imp-percent must be in (0, 1), got {opts["imp_percent"]}')
        if opts['ticket'] and not os.path.isfile(opts['ticket']):
            raise ValueError(f'--ticket file not found: {opts["ticket"]}')
        if opts['advaug_gamma'] < 0 or opts['advaug_steps'] < 1:
            raise ValueError('--advaug-gamma must be >= 0 and --advaug-steps >= 1')
        if opts['advaug_sign'] not in ('ref', 'loss_ascent'):
            raise ValueError(f'--advaug-sign must be ref or loss_ascent, got {opts["advaug_sign"]}')
        if opts['advaug_G_target'] not in ('b4', 'ws'):
            raise ValueError(f'--advaug-G-target must be b4 or ws, got {opts["advaug_G_target"]}')

    @classmethod
    def describe(cls, opts):
        tag = 'lottery'
        if opts['imp_rounds']:
            tag += f'-imp{opts["imp_rounds"]}x{opts["imp_kimg"]:g}k-p{opts["imp_percent"]:g}'
        elif opts['ticket']:
            tag += '-ticket'
        if opts['advaug_gamma']:
            tag += f'-advaug{opts["advaug_gamma"]:g}'
        return tag

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.rounds = int(opts['imp_rounds'])
        self.percent = float(opts['imp_percent'])
        # --imp-kimg has no default: without it there are no rounds (validate), so no length.
        self.round_nimg = 0 if opts['imp_kimg'] is None else int(float(opts['imp_kimg']) * 1000)
        self.rewind_D = opts['rewind_D']
        self.gamma = float(opts['advaug_gamma'])
        self.steps = int(opts['advaug_steps'])
        self.sign = opts['advaug_sign']
        self.g_target = opts['advaug_G_target']
        self.round = 0                  # completed IMP rounds
        self.round_start_nimg = 0
        self.masks = None               # ParamMasks over G's conv kernels (True = kept)
        self.theta0_G = self.theta0_D = None
        self.run_dir = None
        self.loss = None

    # --- set-up, rounds -----------------------------------------------------------------------

    def setup(self, G, D, G_ema, ctx):
        self.G, self.D, self.G_ema = G, D, G_ema
        self.run_dir = ctx.get('run_dir')
        self.masks = ticket_masks(G)
        if self.opts['ticket'] and not ctx.get('full_resume'):
            self.load_ticket(self.opts['ticket'])

    def on_iteration_start(self, state):
        if self.theta0_G is None:
            # theta_0: the seeded initial weights (or a weights-only resume) before any step. Taken
            # here, not in setup(), because with several processes the loop broadcasts rank 0's
            # weights after setup: every rank must rewind to the same theta_0.
            self.theta0_G, self.theta0_D = cpu_state(self.G), cpu_state(self.D)

    def load_ticket(self, path):
        """Masks from a ticket file; G rewound to its theta_0 (and D too, with --rewind-D)."""
        ticket = torch.load(path, map_location='cpu', weights_only=False)
        misfit = self.masks.misfit(ticket['masks'])
        if misfit is not None:
            raise ValueError(f'--ticket {path} does not fit this generator (tensor {misfit}); '
                             f'use the same --cfg and resolution as the search')
        self.masks.load_kept(ticket['masks'])
        if ticket.get('theta0_G') is not None:
            self.theta0_G = ticket['theta0_G']
        if ticket.get('theta0_D') is not None:
            self.theta0_D = ticket['theta0_D']
        self.rewind(self.D if self.rewind_D else None)

    def rewind(self, D=None):
        """G (and G_ema) back to theta_0 with the pruned weights zeroed; D to theta_0 if given.

        A rewound D also restarts the adaptive augmentation (ADA / APA p back to 0): each round
        of the reference is a fresh training run, and p measured how much the old D overfit.
        """
        self.G.load_state_dict(self.theta0_G)
        self.masks.apply_to_weights()
        self.G_ema.load_state_dict(self.G.state_dict())
        if D is not None:
            D.load_state_dict(self.theta0_D)
            plugin_set = getattr(self, 'plugin_set', None)
            if plugin_set is not None:
                plugin_set.on_D_rewind()

    def searching(self):
        return self.round < self.rounds

    def finish_round(self, state):
        """Prune, rewind, reset the optimizers and save the ticket."""
        self.masks.prune_global(self.percent)
        self.rewind(self.D if self.rewind_D else None)
        for phase in state.phases:
            phase.opt.state.clear()         # Adam moments belong to the discarded weights
        if self.loss is not None and hasattr(self.loss, 'pl_mean'):
            self.loss.pl_mean.zero_()
        self.round += 1
        self.round_start_nimg = state.cur_nimg
        self.save_ticket()

    def ticket_data(self):
        return dict(masks={n: m.cpu() for n, m in self.masks.items()}, theta0_G=self.theta0_G,
                    theta0_D=self.theta0_D, round=self.round, density=self.masks.density()[0])

    def save_ticket(self):
        if self.rank != 0:
            return
        paths = [self.opts['ticket_out']]
        if self.run_dir is not None:
            paths.append(os.path.join(self.run_dir, f'ticket-round{self.round:02d}.pt'))
        for path in filter(None, paths):
            torch.save(self.ticket_data(), path + '.tmp')
            os.replace(path + '.tmp', path)

    # --- hooks ----------------------------------------------------------------------------------

    def end_of_iteration(self, state, stats):
        if self.searching() and state.cur_nimg - self.round_start_nimg >= self.round_nimg:
            self.finish_round(state)

    def after_backward(self, phase, module):
        if phase.net == 'G' and self.masks.any_pruned():
            self.masks.apply_to_grads(module)

    def after_step(self, phase, module):
        if phase.net == 'G' and self.masks.any_pruned():
            self.masks.apply_to_weights(module)

    def before_ema(self, G, G_ema):
        if self.masks.any_pruned():
            self.masks.apply_to_weights(G_ema)

    # --- AdvAug ---------------------------------------------------------------------------------

    def advaug_active(self):
        return self.gamma > 0 and not self.searching()

    def main_loss_weight(self, phase):
        if self.advaug_active() and phase.main:
            return 0.5
        return 1.0

    def _direction(self, is_real, for_G=False):
        """+1 raises D's logit. ref: always; loss_ascent: the direction that increases the loss."""
        if self.sign == 'ref':
            return 1.0
        if for_G:
            return -1.0         # G's loss softplus(-l) grows as the fake logit falls
        return -1.0 if is_real else 1.0

    def after_phase(self, phase, ctx):
        self.loss = ctx.get('loss')     # a round's end resets its path-length mean
        if phase.net == 'D' and phase.main and ctx.real_logits is not None:
            training_stats.report('Lottery/D_acc_real', (ctx.real_logits > 0).float())
            training_stats.report('Lottery/D_acc_fake', (ctx.gen_logits < 0).float())

    def extra_loss(self, phase, ctx):
        if not self.advaug_active():
            return None
        if phase.main:
            return 0.5 * (self.D_adv_loss(ctx) if phase.net == 'D' else self.G_adv_loss(ctx))
        return None

    def D_adv_loss(self, ctx):
        """softplus(D2(f_fake + d)) + softplus(-D2(f_real + d)) on the features of this phase."""
        def adv_logits(features, is_real):
            x, cmap = features
            head = lambda f: ctx.D.head(f, cmap.detach() if cmap is not None else None)
            delta = feature_perturbation(head, x, self.gamma, self.steps, self._direction(is_real))
            return ctx.D.head(x + delta, cmap)
        logits_fake = adv_logits(ctx.gen_features, False)
        logits_real = adv_logits(ctx.real_features, True)
        training_stats.report('Lottery/advaug/scores_fake', logits_fake)
        training_stats.report('Lottery/advaug/scores_real', logits_real)
        return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()

    def G_adv_loss(self, ctx):
        """softplus(-D(A(G2(h + d)))) with h the b4 output (or ws), d from sign-gradient steps.

        G2 is re-run from ctx.gen_ws (the clean pass's ws, style mixing included); with
        noise_mode='random' these extra synthesis passes draw their own per-pixel noise.
        """
        G, ws, c = ctx.G, ctx.gen_ws, ctx.gen_c
        direction = self._direction(False, for_G=True)
        def synth(ws_in, hook=None):
            out = G.synthesis(ws_in, b4_hook=hook)
            return out[0] if isinstance(out, (tuple, list)) else out
        if self.g_target == 'ws':
            delta = feature_perturbation(lambda w: ctx.run_D(synth(w), c, False), ws, self.gamma, self.steps, direction)
            img = synth(ws + delta)
        else:
            delta = self._b4_perturbation(synth, ws.detach(), lambda img: ctx.run_D(img, c, False), direction)
            img = synth(ws, hook=lambda x: x + delta.to(x.dtype))
        logits = ctx.run_D(img, c, False)
        training_stats.report('Lottery/advaug/scores_G', logits)
        return F.softplus(-logits).mean()

    def _b4_perturbation(self, synth, ws, run_D, direction):
        """Sign-gradient offset of the b4 output h: steps x (G2 forward + D forward + grad w.r.t. h)."""
        delta = None
        for _ in range(self.steps):
            holder = {}
            def hook(x):
                d = torch.zeros_like(x) if delta is None else delta.to(x.dtype)
                holder['h'] = (x.detach() + d).requires_grad_(True)
                return holder['h']
            with torch.enable_grad():
                objective = run_D(synth(ws, hook)).float().mean() * direction
                grad, = torch.autograd.grad(objective, [holder['h']])
            step = self.gamma * grad.sign()
            delta = step if delta is None else delta + step
        return delta.detach()

    # --- stats and state ------------------------------------------------------------------------

    def status_text(self):
        return f'lottery round {self.round}/{self.rounds}'

    def report_stats(self):
        overall, per_layer = self.masks.density()
        training_stats.report0('Lottery/density', overall)
        training_stats.report0('Lottery/round', self.round)
        for name, frac in per_layer.items():
            training_stats.report0(f'Lottery/density/{name}', frac)

    def state_for_snapshot(self):
        state = dict(round=self.round, round_start_nimg=self.round_start_nimg,
                     masks=self.masks.state_dict())
        if self.searching():        # theta_0 is only needed for rewinds still to come
            state.update(theta0_G=self.theta0_G, theta0_D=self.theta0_D)
        return state

    def load_state(self, state):
        self.round = int(state.get('round', 0))
        self.round_start_nimg = int(state.get('round_start_nimg', 0))
        # Snapshots written before the shared mask class hold {name: True = kept}.
        self.masks.load_state_dict(state.get('masks', {}), old_polarity='kept')
        if state.get('theta0_G') is not None:
            self.theta0_G, self.theta0_D = state['theta0_G'], state.get('theta0_D')
