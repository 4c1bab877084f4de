"""Knowledge propagation to new classes (cGANTransfer, Shahbazi et al. 2021), ported to
StyleGAN2: a new class's embedding is a learned combination of the pretrained classes'
embeddings plus a small residual, e_new(y) = E_old A y + R y (methods.md section 8, [adaptation]).

Starts from a pretrained snapshot (--resume). G.mapping.embed is replaced by CombinedEmbedding,
a persistent module, so the trained generator loads and samples with no plugin code.
"""

import copy
import math

import torch

from plugins import Option, Plugin, register
from torch_utils import persistence, training_stats

STAGES = ('bn', 'ft')
COMB_TENSORS = ('E_old', 'A', 'a_bias', 'R')
DEFAULT_LR = 2e-4       # the reference's CIFAR rate (its ImageNet scripts use 1e-4)

#----------------------------------------------------------------------------

@persistence.persistent_class
class CombinedEmbedding(torch.nn.Module):
    """One-hot c [N, n_new] -> embedding [N, features] = E_old (A_sn c + a_bias) + R c.

    E_old [features, n_old]: column k is the pretrained embedding of old class k.
    A [n_old, n_new] ~ N(0, comb_std^2): similarity of each new class to the old ones; divided
    by its largest singular value when spectral_norm (exact, not power iteration, so train and
    eval agree). a_bias [n_old] (optional) ~ U(-1/sqrt(n_new), 1/sqrt(n_new)), the reference's
    (torch's default Linear) bias init. R [features, n_new] ~ N(0, res_std^2).

    Each tensor is stored divided by lr_multiplier and multiplied back in the forward pass (the
    equalised-learning-rate device of StyleGAN2's mapping network): an optimizer at rate lr
    then moves the values at lr * lr_multiplier. value(name) is the tensor as used.
    """
    def __init__(self, n_old, n_new, features, comb_bias=True, spectral_norm=True, res_std=0.02, comb_std=0.02,
                 lr_multiplier=1.0):
        super().__init__()
        self.n_old = n_old
        self.n_new = n_new
        self.features = features
        self.spectral_norm = spectral_norm
        self.lr_multiplier = float(lr_multiplier)
        inv = 1 / self.lr_multiplier
        self.E_old = torch.nn.Parameter(torch.zeros([features, n_old]))
        self.A = torch.nn.Parameter(torch.randn([n_old, n_new]) * (comb_std * inv))
        bound = 1 / math.sqrt(n_new)
        self.a_bias = torch.nn.Parameter((torch.rand([n_old]) * 2 - 1) * (bound * inv)) if comb_bias else None
        self.R = torch.nn.Parameter(torch.randn([features, n_new]) * (res_std * inv))

    def value(self, name):
        """The tensor `name` (E_old, A, a_bias or R) as the forward pass uses it; None if absent."""
        t = getattr(self, name)
        if t is None or self.lr_multiplier == 1:
            return t
        return t * self.lr_multiplier

    @torch.no_grad()
    def set_value(self, name, value):
        getattr(self, name).copy_(value / self.lr_multiplier)

    def combination_matrix(self):
        """A as used in the forward pass, [n_old, n_new]."""
        A = self.value('A')
        if self.spectral_norm and A.numel() > 0:
            return A / torch.linalg.matrix_norm(A, ord=2).clamp_min(1e-12)
        return A

    def coefficients(self, c):
        """[N, n_new] -> combination coefficients over the old classes [N, n_old]."""
        a = c.matmul(self.combination_matrix().t())
        return a + self.value('a_bias') if self.a_bias is not None else a

    def forward(self, c):
        c = c.to(torch.float32)
        return self.coefficients(c).matmul(self.value('E_old').t()) + c.matmul(self.value('R').t())

    def extra_repr(self):
        return (f'n_old={self.n_old}, n_new={self.n_new}, features={self.features}, spectral_norm={self.spectral_norm}, '
                f'lr_multiplier={self.lr_multiplier:g}')

def rescaled_embedding(old, lr_multiplier):
    """A CombinedEmbedding with the same values as `old` (any version), stored for another multiplier."""
    old_multiplier = getattr(old, 'lr_multiplier', 1.0)
    embed = CombinedEmbedding(old.n_old, old.n_new, old.features, comb_bias=old.a_bias is not None,
                              spectral_norm=old.spectral_norm, lr_multiplier=lr_multiplier)
    for name in COMB_TENSORS:
        if getattr(old, name) is not None:
            embed.set_value(name, getattr(old, name).detach().cpu() * old_multiplier)
    return embed

def old_class_embeddings(embed, n_old, device='cpu'):
    """E_old [features, n_old]: the pretrained embed evaluated on every one-hot old class."""
    with torch.no_grad():
        eye = torch.eye(n_old, device=device)
        return embed.to(device)(eye).t().contiguous()

def _is_combined(module):
    """True for a CombinedEmbedding, also one rebuilt from a pickle's embedded source."""
    return isinstance(module, torch.nn.Module) and type(module).__name__ == 'CombinedEmbedding'

def fresh_like(module):
    """A freshly initialised copy of a persistent layer, from its recorded constructor arguments."""
    if not hasattr(module, 'init_args'):
        raise TypeError(f'cannot re-initialise {type(module).__name__}: not a persistent class')
    device = next(module.parameters()).device
    return type(module)(*module.init_args, **module.init_kwargs).to(device)

def widen_first_layer(fc0_old, fc0_new, z_dim):
    """Unconditional source: copy its fc0 into the z half of the new fc0 and zero the class half.

    The equalised-LR gain is lr_mul/sqrt(fan_in) and fan_in grows from z_dim to z_dim + features,
    so the copied weights are rescaled to keep fc0's output (hence every image) unchanged.
    """
    with torch.no_grad():
        scale = fc0_old.weight_gain / fc0_new.weight_gain
        fc0_new.weight.zero_()
        fc0_new.weight[:, :z_dim].copy_(fc0_old.weight.to(fc0_new.weight.device) * scale)
        if fc0_new.bias is not None and fc0_old.bias is not None:
            fc0_new.bias.copy_(fc0_old.bias.to(fc0_new.bias.device))

def regularizers(embed):
    """(comb_l1, res_l2): sum over Comb tensors of mean|theta|, and mean(R^2)."""
    comb = [t for t in [embed.value('A'), embed.value('a_bias')] if t is not None and t.numel() > 0]
    R = embed.value('R')
    comb_l1 = sum((t.abs().mean() for t in comb), R.new_zeros([]))
    res_l2 = R.square().mean()
    return comb_l1, res_l2

def trainable_names(G, stage):
    """Names of G's parameters trained in a stage.

    bn: only A (+ a_bias), R and E_old; ft: everything except A (+ a_bias) and E_old.
    From an unconditional source (n_old = 0) bn also trains mapping.fc0, whose class half
    starts at zero: without it nothing could use R.
    """
    comb = {'mapping.embed.A', 'mapping.embed.a_bias', 'mapping.embed.E_old'}
    names = [name for name, _ in G.named_parameters()]
    if stage == 'bn':
        keep = comb | {'mapping.embed.R'}
        if G.mapping.embed.n_old == 0:
            keep |= {'mapping.fc0.weight', 'mapping.fc0.bias'}
        return [n for n in names if n in keep]
    return [n for n in names if n not in comb]

def check_ft_source(G_old, source):
    """Stage ft continues a transfer: the source must already hold a learned combination A."""
    if not _is_combined(getattr(G_old.mapping, 'embed', None)):
        raise ValueError(f'--transfer-stage=ft fine-tunes a generator that was transferred before, but {source} has no '
                         f'learned class combination yet: first train --transfer-stage=bn from it, then run '
                         f'--transfer-stage=ft with --resume=<a snapshot of that run>')

def rate_multiplier(opts, G_opt_kwargs):
    """The transfer rate as a multiplier over G's own (see CombinedEmbedding)."""
    G_lr = (G_opt_kwargs or {}).get('lr')
    return opts['transfer_lr'] / G_lr if G_lr else 1.0

def new_parameter_count(embed):
    """Parameters added for the new classes: A (+ a_bias) and R."""
    return embed.A.numel() + embed.R.numel() + (embed.a_bias.numel() if embed.a_bias is not None else 0)

#----------------------------------------------------------------------------

@register('transfer')
class TransferPlugin(Plugin):
    options = [
        Option('transfer-stage', type=str, default='bn',
               help='transfer: bn = train only the class combination (A, R, E_old); ft = train all of G except A and E_old'),
        Option('transfer-comb-l1', type=float, default=0.01, help='transfer: weight of the L1 penalty on A'),
        Option('transfer-res-l2', type=float, default=0.01, help='transfer: weight of the L2 penalty on R'),
        Option('transfer-sn', type=bool, default=True, help='transfer: spectral-normalise A'),
        Option('transfer-comb-bias', type=bool, default=True, help='transfer: give A a bias over the old classes, as in the ref'),
        Option('transfer-res-init', type=str, default='normal', help='transfer: R initialisation, normal (N(0, 0.02^2)) or zeros'),
        Option('transfer-lr', type=float, default=DEFAULT_LR,
               help='transfer: learning rate of A, its bias, R and E_old (the reference: 2e-4 CIFAR, 1e-4 ImageNet); '
                    'scaled for lazy regularisation like G\'s own rate'),
    ]

    @classmethod
    def validate(cls, aug, methods, opts):
        if opts['transfer_stage'] not in STAGES:
            raise ValueError(f'--transfer-stage must be bn or ft, got {opts["transfer_stage"]}')
        if opts['transfer_res_init'] not in ('normal', 'zeros'):
            raise ValueError(f'--transfer-res-init must be normal or zeros, got {opts["transfer_res_init"]}')
        for key in ('transfer_comb_l1', 'transfer_res_l2'):
            if opts[key] < 0:
                raise ValueError(f'--{key.replace("_", "-")} must be >= 0')
        if not opts['transfer_lr'] > 0:
            raise ValueError(f'--transfer-lr must be > 0, got {opts["transfer_lr"]}')

    @classmethod
    def configure(cls, c, opts):
        if 'resume_pkl' in c and not c.resume_pkl:     # (setup() checks again if train.py sets it later)
            raise ValueError('--method=transfer starts from a pretrained network: add --resume=<snapshot.pkl>')
        if not (c.get('training_set_kwargs') or {}).get('use_labels', False):
            raise ValueError('--method=transfer trains new classes: add --cond=1 and a dataset with labels')
        if opts['transfer_stage'] == 'ft' and c.get('resume_pkl'):
            from training.snapshot import load_network
            check_ft_source(load_network(c.resume_pkl, verbose=False)['G'], c.resume_pkl)
        # G and D are built with c_dim = the new dataset's label_dim (n_new); the loop copies
        # the pretrained weights by name and skips the differently shaped embeddings, and
        # setup() rebuilds both embeddings from the snapshot.

    @classmethod
    def describe(cls, opts):
        return f'transfer-{opts["transfer_stage"]}'

    def __init__(self, opts, device, rank=0, num_gpus=1):
        super().__init__(opts, device, rank, num_gpus)
        self.stage = opts['transfer_stage']
        self.comb_l1 = float(opts['transfer_comb_l1'])
        self.res_l2 = float(opts['transfer_res_l2'])
        self.G = None
        self.frozen_w_avg = None

    @classmethod
    def resume_mode(cls, data, c, opts):
        old = getattr(data['G'].mapping, 'embed', None)
        if not _is_combined(old):
            # A pretrained snapshot of another run: its counters, optimizer moments and plugin
            # state belong to the old classes.
            return 'weights'
        if getattr(old, 'lr_multiplier', 1.0) != rate_multiplier(opts, c.get('G_opt_kwargs')):
            # The stored tensors are scaled for another rate: a full resume would copy them over
            # the rescaled ones (and their Adam moments belong to that scale).
            return 'weights'
        return 'full'

    def setup(self, G, D, G_ema, ctx):
        resume = ctx.get('resume_data')
        if resume is None:
            raise ValueError('--method=transfer needs the pretrained snapshot: add --resume=<snapshot.pkl>')
        n_new = G.c_dim
        if n_new <= 0:
            raise ValueError('--method=transfer needs a labelled dataset (--cond=1)')
        if self.stage == 'ft':
            check_ft_source(resume['G'], 'the --resume network')
        embed = self.build_embedding(resume['G'], n_new, G.mapping.embed_features, G.mapping.embed.weight.device,
                                     rate_multiplier(self.opts, ctx.get('G_opt_kwargs')))
        G.mapping.embed = embed
        G_ema.mapping.embed = copy.deepcopy(embed)
        G.c_dim = G.mapping.c_dim = n_new
        G_ema.c_dim = G_ema.mapping.c_dim = n_new
        if embed.n_old == 0 and not ctx.get('full_resume'):
            for net in (G, G_ema):
                widen_first_layer(resume['G'].mapping.fc0, net.mapping.fc0, G.mapping.z_dim)
        if getattr(D, 'c_dim', 0) > 0:
            D.mapping.embed = fresh_like(D.mapping.embed)     # new classes: a fresh projection embedding
        self.G = G
        self.apply_stage(G)
        self.frozen_w_avg = G.mapping.w_avg.detach().clone() if self.stage == 'bn' else None

    def build_embedding(self, G_old, n_new, features, device, lr_multiplier=1.0):
        """CombinedEmbedding for n_new classes from the pretrained generator's embedding."""
        old = getattr(G_old.mapping, 'embed', None) if G_old.mapping.c_dim > 0 else None
        if _is_combined(old):                           # continuing a transfer run (e.g. bn -> ft)
            if old.n_new != n_new:
                raise ValueError(f'the snapshot was transferred to {old.n_new} classes, the dataset has {n_new}')
            if getattr(old, 'lr_multiplier', 1.0) == lr_multiplier:
                return copy.deepcopy(old).to(device)
            return rescaled_embedding(old, lr_multiplier).to(device)
        n_old = G_old.mapping.c_dim if old is not None else 0
        embed = CombinedEmbedding(n_old, n_new, features, comb_bias=bool(self.opts['transfer_comb_bias']),
                                  spectral_norm=bool(self.opts['transfer_sn']), lr_multiplier=lr_multiplier)
        if self.opts['transfer_res_init'] == 'zeros':
            embed.R.data.zero_()
        if n_old > 0:
            embed.set_value('E_old', old_class_embeddings(copy.deepcopy(old), n_old))
        return embed.to(device)

    def apply_stage(self, G):
        """Switch requires_grad per stage; the loop builds the G optimizer from what stays on."""
        keep = set(trainable_names(G, self.stage))
        for name, param in G.named_parameters():
            param.requires_grad_(name in keep)

    def extra_loss(self, phase, ctx):
        if not (phase.net == 'G' and phase.main):
            return None
        comb_l1, res_l2 = regularizers(ctx.G.mapping.embed)
        training_stats.report('Transfer/comb_l1', comb_l1)
        training_stats.report('Transfer/res_l2', res_l2)
        return comb_l1 * self.comb_l1 + res_l2 * self.res_l2

    def before_ema(self, G, G_ema):
        if self.frozen_w_avg is not None:   # stage bn: the mapping, hence w_avg, stays pretrained
            G.mapping.w_avg.copy_(self.frozen_w_avg)

    def report_stats(self):
        embed = self.G.mapping.embed
        if embed.n_old == 0:
            return
        with torch.no_grad():
            top = embed.combination_matrix().argmax(dim=0)      # most similar old class per new class
        for j, k in enumerate(top.tolist()):
            training_stats.report0(f'Transfer/top_old_class/{j}', k)

    def state_for_snapshot(self):
        return dict(stage=self.stage, frozen_w_avg=None if self.frozen_w_avg is None else self.frozen_w_avg.cpu())

    def load_state(self, state):
        if self.stage == 'bn' and state.get('frozen_w_avg') is not None:
            self.frozen_w_avg = state['frozen_w_avg'].to(self.frozen_w_avg.device)
