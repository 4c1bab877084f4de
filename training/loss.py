"""The StyleGAN2 loss: non-saturating logistic GAN loss with lazy R1 and path-length
regularisation (methods.md section 0), with the plugin hook points of docs/architecture.md
(batch replacement, the augmentation `A` in front of D, loss weights and extra terms).
"""

import numpy as np
import torch
import torch.nn.functional as F

from dnnlib import EasyDict
from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')
REG_GAINS = ('interval', 'none')

class Phase(str):
    """A phase name that knows what the phase trains: `net` 'G' or 'D' and `kind` 'main' (the
    adversarial term), 'reg' (the lazy regulariser) or 'both' (the two in one step, when the
    regularisation interval is None). A str: it prints, compares and keys as its name."""
    def __new__(cls, name):
        if isinstance(name, Phase):
            return name
        if name not in PHASES:
            raise ValueError(f'unknown phase {name!r}; one of {", ".join(PHASES)}')
        return super().__new__(cls, name)

    net = property(lambda self: str(self)[0])
    kind = property(lambda self: str(self)[1:])
    main = property(lambda self: self.kind != 'reg', doc='computes the adversarial term')
    reg = property(lambda self: self.kind != 'main', doc='computes the regulariser')
    lazy = property(lambda self: self.kind == 'reg', doc='a regulariser run every k iterations')

#----------------------------------------------------------------------------

def _empty_plugin_set():
    from plugins import PluginSet
    return PluginSet([], {}, device=None)

#----------------------------------------------------------------------------

class StyleGAN2Loss:
    """Computes and back-propagates one training phase.

    G, D: the (unwrapped) networks; D must offer `features(img, c)` and `head(x, cmap)`.
    plugins: a plugins.PluginSet (None = no plugins).
    The gradients left in the parameters are those of `phase_loss * gain`, where
    phase_loss = main_loss_weight * adversarial term + regulariser + extra_loss(phase, ctx).
    Extra terms from plugins are therefore scaled by `gain` like the rest of the phase
    (gain is 1 in the main and *both phases, the regularisation interval in Greg / Dreg).
    reg_gain: 'interval' uses the gain the loop passes for Greg / Dreg (StyleGAN2-ADA);
    'none' replaces it by 1, as the UTLO code does (R1 then acts like gamma / 16 and the path
    length penalty like pl_weight / 4). The lazy Adam lr / betas scaling is the loop's and stays.
    """

    def __init__(self, device, G, D, plugins=None, r1_gamma=10, style_mixing_prob=0.9, pl_weight=0,
                 pl_batch_shrink=2, pl_decay=0.01, pl_no_weight_grad=False, reg_gain='interval'):
        self.device = device
        self.G = G
        self.D = D
        self.plugins = plugins if plugins is not None else _empty_plugin_set()
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_no_weight_grad = bool(pl_no_weight_grad)
        if reg_gain not in REG_GAINS:
            raise ValueError(f'reg_gain must be one of {", ".join(REG_GAINS)}, got {reg_gain!r}')
        self.reg_gain = reg_gain
        self.pl_mean = torch.zeros([], device=device)   # running mean of path lengths (per rank)

    # --- resume ---------------------------------------------------------------------------

    def state_dict(self):
        return dict(pl_mean=float(self.pl_mean))

    def load_state_dict(self, state):
        if state and 'pl_mean' in state:
            self.pl_mean.fill_(float(state['pl_mean']))

    # --- generator and discriminator calls --------------------------------------------------

    def _mix_styles(self, z, c, ws):
        """With probability style_mixing_prob, take ws[:, cutoff:] from a second latent.

        The coin and the cutoff (uniform in [1, num_ws)) are drawn on the device and applied
        with a mask, so nothing is read back to the host; the second mapping pass runs every
        time and is masked out when the coin says no.
        """
        num_ws = ws.shape[1]
        if self.style_mixing_prob <= 0 or num_ws < 2:
            return ws
        cutoff = torch.randint(1, num_ws, [], device=ws.device)
        mix = torch.rand([], device=ws.device) < self.style_mixing_prob
        cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
        ws2 = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
        tail = torch.arange(num_ws, device=ws.device).reshape(1, num_ws, 1) >= cutoff
        return torch.where(tail, ws2, ws)

    def run_G(self, z, c, **synthesis_kwargs):
        """z: [N, z_dim], c: [N, c_dim] -> (img [N, C, H, W] in ~[-1, 1], ws [N, num_ws, w_dim], extra tuple)."""
        ws = self.G.mapping(z, c)
        ws = self._mix_styles(z, c, ws)
        out = self.G.synthesis(ws, **synthesis_kwargs)
        if isinstance(out, (tuple, list)):
            return out[0], ws, tuple(out[1:])
        return out, ws, ()

    def augment(self, img, is_real, phase):
        """The augmentation chain `A` every D input goes through."""
        return self.plugins.augment_D_input(img, is_real, phase)

    def _run_D_full(self, img, c, is_real, phase):
        """-> (logits [N, 1], (x, cmap) features before D.head, augmented image)."""
        img_aug = self.augment(img, is_real, phase)
        features = self.D.features(img_aug, c)
        logits = self.D.head(*features)
        return logits, features, img_aug

    def run_D(self, img, c, is_real, phase):
        return self._run_D_full(img, c, is_real, phase)[0]

    def _new_ctx(self, phase, gain, gen_z, gen_c, real_c):
        keys = ['gen_ws', 'gen_img', 'gen_extra', 'gen_img_aug', 'gen_features', 'gen_logits',
                'real_img', 'real_img_aug', 'real_features', 'real_logits']
        ctx = EasyDict({k: None for k in keys})
        synthesis_kwargs = self.plugins.synthesis_kwargs(phase)
        ctx.update(phase=phase, G=self.G, D=self.D, loss=self, gain=gain, gen_z=gen_z, gen_c=gen_c, real_c=real_c,
                   run_G=lambda z, c, **kw: self.run_G(z, c, **{**synthesis_kwargs, **kw}),
                   run_D=lambda img, c, is_real: self.run_D(img, c, is_real, phase),
                   augment=lambda img, is_real: self.augment(img, is_real, phase))
        return ctx, synthesis_kwargs

    # --- the terms of each phase (each returns a scalar before `gain`) -----------------------

    def _fake_logits(self, ctx, synthesis_kwargs):
        """D(A(G(z, c)), c) [N, 1] for the phase's latents; fills ctx's gen_* keys and reports the scores."""
        img, ws, extra = self.run_G(ctx.gen_z, ctx.gen_c, **synthesis_kwargs)
        logits, features, img_aug = self._run_D_full(img, ctx.gen_c, False, ctx.phase)
        ctx.update(gen_img=img, gen_ws=ws, gen_extra=extra, gen_img_aug=img_aug, gen_features=features, gen_logits=logits)
        training_stats.report('Loss/scores/fake', logits)
        training_stats.report('Loss/signs/fake', logits.sign())
        return logits

    def _G_main(self, ctx, synthesis_kwargs, weight):
        """softplus(-D(A(G(z, c)), c)) averaged over the batch."""
        loss_G = F.softplus(-self._fake_logits(ctx, synthesis_kwargs))
        training_stats.report('Loss/G/loss', loss_G)
        return loss_G.mean() * weight

    def _G_pl(self, ctx, synthesis_kwargs):
        """Path-length penalty on batch // pl_batch_shrink samples: pl_weight * (|J^T y| - a)^2."""
        batch = max(1, ctx.gen_z.shape[0] // self.pl_batch_shrink)
        img, ws, extra = self.run_G(ctx.gen_z[:batch], ctx.gen_c[:batch], **synthesis_kwargs)
        if ctx.gen_img is None:
            ctx.update(gen_img=img, gen_ws=ws, gen_extra=extra)
        noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
        with conv2d_gradfix.no_weight_gradients(self.pl_no_weight_grad):   # only d/dws is needed here
            grads = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True, only_inputs=True)[0]
        lengths = grads.square().sum(2).mean(1).sqrt()              # [batch]
        pl_mean = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        penalty = (lengths - pl_mean).square()
        training_stats.report('Loss/pl_penalty', penalty)
        loss_Gpl = penalty * self.pl_weight
        training_stats.report('Loss/G/reg', loss_Gpl)
        # img[:, 0, 0, 0] * 0 ties every synthesis parameter into the graph (zero gradient
        # rather than None), so all ranks reduce the same set of gradients.
        return (img[:, 0, 0, 0] * 0 + loss_Gpl).mean()

    def _D_fake(self, ctx, synthesis_kwargs, weight):
        """softplus(D(A(G(z, c)), c)): returns (per-sample loss [N, 1], weighted batch mean)."""
        loss_Dgen = F.softplus(self._fake_logits(ctx, synthesis_kwargs))
        return loss_Dgen, loss_Dgen.mean() * weight

    def _D_real(self, ctx, real_img, do_main, do_r1, weight, loss_Dgen):
        """Real branch: softplus(-D(A(x), c)) and/or R1 = gamma/2 * |dD(A(x))/dx|^2 w.r.t. the un-augmented x."""
        real = self.plugins.replace_real_batch(real_img, ctx.phase).detach().requires_grad_(do_r1)
        logits, features, img_aug = self._run_D_full(real, ctx.real_c, True, ctx.phase)
        ctx.update(real_img=real, real_img_aug=img_aug, real_features=features, real_logits=logits)
        training_stats.report('Loss/scores/real', logits)
        training_stats.report('Loss/signs/real', logits.sign())
        total = logits.sum() * 0    # keeps every D parameter in the graph (see _G_pl)
        if do_main:
            loss_Dreal = F.softplus(-logits)
            training_stats.report('Loss/D/loss', loss_Dgen + loss_Dreal if loss_Dgen is not None else loss_Dreal)
            total = total + loss_Dreal.mean() * weight
        if do_r1:
            loss_Dr1 = self._r1_penalty(logits, real) * (self.r1_gamma / 2)
            training_stats.report('Loss/D/reg', loss_Dr1)
            total = total + loss_Dr1.mean()
        return total

    @staticmethod
    def _r1_penalty(logits, real):
        """Squared norm of d(sum of logits)/d(real image), per image [N]; differentiable (create_graph)."""
        with conv2d_gradfix.no_weight_gradients():   # d/dx only; weights get theirs via the penalty's backward
            grads = torch.autograd.grad(outputs=[logits.sum()], inputs=[real], create_graph=True, only_inputs=True)[0]
        penalty = grads.square().sum([1, 2, 3])
        training_stats.report('Loss/r1_penalty', penalty)
        return penalty

    # --- entry point --------------------------------------------------------------------------

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        """Back-propagate one phase for one round of the per-GPU batch.

        real_img: [N, C, H, W] float in [-1, 1]; real_c: [N, c_dim]; gen_z: [N, z_dim]; gen_c: [N, c_dim].
        gain: multiplier on the whole phase loss (the regularisation interval for lazy phases).
        Returns the ctx (EasyDict) that extra_loss saw, for tests and diagnostics.
        """
        phase = Phase(phase)
        if self.reg_gain == 'none' and phase.lazy:
            gain = 1
        do_Gmain = phase.net == 'G' and phase.main
        do_Gpl = phase.net == 'G' and phase.reg and self.pl_weight != 0
        do_Dmain = phase.net == 'D' and phase.main
        do_Dr1 = phase.net == 'D' and phase.reg and self.r1_gamma != 0
        ctx, synthesis_kwargs = self._new_ctx(phase, gain, gen_z, gen_c, real_c)
        ctx.cur_nimg = cur_nimg
        weight = self.plugins.main_loss_weight(phase) if (do_Gmain or do_Dmain) else 1.0

        terms = []
        if do_Gmain:
            terms.append(self._G_main(ctx, synthesis_kwargs, weight))
        if do_Gpl:
            terms.append(self._G_pl(ctx, synthesis_kwargs))
        loss_Dgen = None
        if do_Dmain:
            loss_Dgen, term = self._D_fake(ctx, synthesis_kwargs, weight)
            terms.append(term)
        if do_Dmain or do_Dr1:
            terms.append(self._D_real(ctx, real_img, do_Dmain, do_Dr1, weight, loss_Dgen))

        extra = self.plugins.extra_loss(phase, ctx)
        if extra is not None:
            terms.append(extra)
        if terms:
            total = sum(terms[1:], terms[0])
            ctx.phase_loss = total.detach()
            (total * gain).backward()
        self.plugins.after_phase(phase, ctx)
        return ctx

#----------------------------------------------------------------------------
