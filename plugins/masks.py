"""Weight masks of the pruning methods (Re-GAN, lottery tickets): one boolean tensor per masked
parameter of a network, True = the weight is kept (the lottery-ticket convention, also that of
ticket files). Registers no plugin; the two methods differ only in how they choose what to
prune (per tensor, from scratch, vs. globally among the survivors), both kept here.
"""

from collections.abc import Mapping

import numpy as np
import torch

# Version of state_dict()'s layout. Before it existed each plugin saved a bare {name: mask}
# dict in its own polarity (Re-GAN: True = pruned; lottery: True = kept); load_state_dict
# converts those.
STATE_FORMAT = 2

def linear_quantile(values, q):
    """q-quantile of a 1-D tensor with linear interpolation (torch.quantile semantics, no size limit)."""
    v = values.flatten().sort().values
    pos = q * (v.numel() - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, v.numel() - 1)
    frac = pos - lo
    return v[lo] + (v[hi] - v[lo]) * frac

class ParamMasks(Mapping):
    """{parameter name: kept mask} over the named parameters of `module`; starts with all kept.

    The pruned complement of every mask is kept beside it, so that zeroing weights and gradients
    (every phase of a sparse step) launches one masked_fill per tensor and nothing else.
    """
    def __init__(self, module, names):
        self.params = dict(module.named_parameters())
        self._kept, self._pruned = {}, {}
        for name in names:
            self._set(name, torch.ones_like(self.params[name], dtype=torch.bool))

    def _set(self, name, kept, pruned=None):
        self._kept[name] = kept
        self._pruned[name] = ~kept if pruned is None else pruned
        self._any_pruned = None     # any_pruned() asks the device again

    # Read-only mapping of the kept masks.
    def __getitem__(self, name):
        return self._kept[name]

    def __iter__(self):
        return iter(self._kept)

    def __len__(self):
        return len(self._kept)

    # --- masking ------------------------------------------------------------------------------

    def _params_of(self, module):
        return self.params if module is None else dict(module.named_parameters())

    @torch.no_grad()
    def apply_to_weights(self, module=None):
        """Zero the pruned weights of `module` (default: the network the masks were made for)."""
        params = self._params_of(module)
        for name, pruned in self._pruned.items():
            params[name].masked_fill_(pruned.to(params[name].device), 0)

    @torch.no_grad()
    def apply_to_grads(self, module=None):
        """Zero the gradients of the pruned weights (parameters without a gradient are skipped)."""
        params = self._params_of(module)
        for name, pruned in self._pruned.items():
            grad = params[name].grad
            if grad is not None:
                grad.masked_fill_(pruned.to(grad.device), 0)

    # --- counts -------------------------------------------------------------------------------

    def any_pruned(self):
        """Whether any weight is pruned. Cached (each bool() is a device sync): every change of
        the masks goes through _set, which drops the cached value."""
        if self._any_pruned is None:
            self._any_pruned = any(bool(p.any()) for p in self._pruned.values())
        return self._any_pruned

    def pruned_counts(self):
        """{name: number of pruned entries}."""
        return {name: int(pruned.sum()) for name, pruned in self._pruned.items()}

    def density(self):
        """(overall kept fraction, {name: kept fraction})."""
        kept = sum(int(m.sum()) for m in self._kept.values())
        total = sum(m.numel() for m in self._kept.values())
        return kept / max(total, 1), {n: float(m.float().mean()) for n, m in self._kept.items()}

    # --- pruning ------------------------------------------------------------------------------

    def prune_per_tensor(self, fraction):
        """New masks from the current weights alone (Re-GAN): in every tensor, prune the entries
        with |w| strictly below the `fraction` quantile of its |w|; earlier masks are forgotten."""
        for name in self._kept:
            w = self.params[name].detach().abs().float()
            pruned = w < linear_quantile(w, fraction)
            self._set(name, ~pruned, pruned)

    def prune_global(self, fraction):
        """Prune `fraction` of the kept entries (lottery IMP): exactly round(fraction * kept) of
        them, those with the smallest |w| over all masked tensors together; pruned stays pruned."""
        names = list(self._kept)
        kept = [self.params[n].detach().abs().flatten()[self._kept[n].flatten()] for n in names]
        values = torch.cat([k.float().cpu() for k in kept])
        k = int(round(fraction * values.numel()))
        survive = torch.ones(values.numel(), dtype=torch.bool)
        if k > 0:
            survive[torch.topk(values, k, largest=False).indices] = False
        offset = 0
        for n, kv in zip(names, kept):
            flat = self._kept[n].flatten().clone()
            flat[flat.nonzero().flatten()] = survive[offset:offset + kv.numel()].to(flat.device)
            offset += kv.numel()
            self._set(n, flat.view_as(self._kept[n]))

    # --- files and snapshots --------------------------------------------------------------------

    def misfit(self, masks):
        """The first name of {name: mask} that these masks do not cover with the same shape, or None."""
        for name, mask in masks.items():
            if name not in self._kept or mask.shape != self._kept[name].shape:
                return name
        return None

    def load_kept(self, masks):
        """Take {name: kept mask}; names not covered or of another shape are skipped."""
        for name, mask in masks.items():
            if self.misfit({name: mask}) is None:
                self._set(name, mask.to(device=self._kept[name].device, dtype=torch.bool))

    def state_dict(self):
        return dict(format=STATE_FORMAT, kept={n: m.cpu().clone() for n, m in self._kept.items()})

    def load_state_dict(self, state, old_polarity):
        """Inverse of state_dict(). A state without 'format' is a plugin's bare {name: mask} of
        before, in `old_polarity` ('kept' or 'pruned'): converted here."""
        fmt = state.get('format')
        if fmt == STATE_FORMAT:
            self.load_kept(state['kept'])
        elif fmt is None:
            assert old_polarity in ('kept', 'pruned')
            flip = old_polarity == 'pruned'
            self.load_kept({n: ~m.bool() if flip else m for n, m in state.items()})
        else:
            raise ValueError(f'mask state format {fmt} is newer than this code ({STATE_FORMAT}): update the code')
