"""The training step does not read device values back to the host (issue 9).

A host read (item / float / tolist / .cpu(), nonzero, boolean-mask indexing, torch.tensor(...,
device=...)) stalls the CUDA queue, and at small resolutions the step is launch-bound, so each
one costs idle GPU time. SyncAudit finds them on the CPU too, so these tests run in CI:
the steady-state iterations of every plugin combination must be free of them, the only
exception being the ADA / APA statistic read every 4 iterations (one device-to-host copy).
"""

import os

import numpy as np
import pytest
import torch

import plugins
from plugins import AdaptiveP
from plugin_train_util import make_dataset, read_stats, tiny_config
from torch_utils import misc
from torch_utils.sync_audit import SyncAudit
from training import training_loop
from training.augment import AugmentPipe, augpipe_specs

#----------------------------------------------------------------------------
# The audit itself.

def test_audit_records_every_kind_of_host_read():
    x = torch.rand(6)
    with SyncAudit() as audit:
        float(x[0])
        x.sum().item()
        bool(x[1] > 0.5)
        x.tolist()
        x.cpu()
        x.numpy()
        x.nonzero()
        x[x > 0.5]
        torch.tensor([1.0, 2.0], device=x.device)
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]))
    kinds = [what for what, _where in audit.events]
    assert kinds.count('aten._local_scalar_dense.default') == 3
    assert {'Tensor.tolist', 'Tensor.cpu', 'Tensor.numpy', 'aten.nonzero.default', 'aten.index.Tensor',
            'torch.tensor(host data, device=...)', 'aten.repeat_interleave.Tensor'} <= set(kinds)
    assert all(where.startswith(os.path.join('tests', 'test_sync_free.py')) for _what, where in audit.events), audit.report()
    assert torch.Tensor.tolist is not None and 'reader' not in torch.Tensor.tolist.__name__   # restored on exit

def test_audit_ignores_device_side_work_and_optimizer_step_counters():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([w], lr=0.01)
    (w.square().sum()).backward()
    opt.step()                           # creates the host-side step counter
    misc.constant([1.0, 2.0, 3.0], device=w.device)      # first use copies; later uses are cached
    with SyncAudit() as audit:
        y = torch.where(w > 0, w, torch.zeros_like(w)).sum(dim=1)
        idx = torch.argmax(y)
        z = w.index_select(0, idx.reshape(1)) * misc.constant([1.0, 2.0, 3.0], device=w.device)
        w.grad = z.expand_as(w).clone()
        opt.step()
        x = torch.rand(4).repeat_interleave(2, dim=0)
    assert audit.events == [], audit.report()
    assert x.shape == (8,)

#----------------------------------------------------------------------------
# p known on the host.

def test_host_value_is_read_once_and_after_foreign_writes():
    p = torch.zeros([])
    assert misc.host_value(p) == 0.0
    misc.set_host_value(p, 0.1)
    with SyncAudit() as audit:
        v = misc.host_value(p)
    assert audit.events == [] and v == float(p) == float(np.float32(0.1))
    p.add_(0.5)                          # somebody else writes p in place
    with SyncAudit() as audit:
        v = misc.host_value(p)
    assert len(audit.events) == 1 and v == float(p)
    q = p.clone()                        # another tensor: never confused with p
    q.fill_(3.0)
    assert misc.host_value(q) == 3.0 and misc.host_value(p) == v

def test_adaptive_p_host_arithmetic_equals_the_device_update():
    rng = np.random.RandomState(0)
    p = torch.zeros([])
    misc.set_host_value(p, 0.0)          # as the plugins create p
    reference = torch.zeros([])
    ctrl = AdaptiveP(p, target=0.6, speed_kimg=0.5, interval=4)
    for _ in range(300):
        r = rng.uniform(0.3, 0.9)
        batch = int(rng.choice([4, 32, 64]))
        step = float(np.sign(r - 0.6)) * ctrl.step_size(batch)
        with SyncAudit() as audit:
            ctrl.adjust(r, batch)
        reference = (reference + step).clamp_min(0)
        assert audit.events == []
        assert torch.equal(p, reference) and misc.host_value(p) == float(reference)
    assert float(reference) > 0

#----------------------------------------------------------------------------
# The sync-free warp.

@pytest.mark.parametrize('spec', ['blit', 'geom', 'bgc', 'bgcfnc'])
def test_sync_free_augment_pipe_matches_the_cpu_path(spec, monkeypatch):
    x = torch.rand(12, 3, 16, 16) * 2 - 1
    for p in [0.2, 1.0]:
        pipe = AugmentPipe(**augpipe_specs[spec])
        misc.set_host_value(pipe.p, p)
        out = {}
        for sync_free in [False, True]:
            monkeypatch.setattr(AugmentPipe, 'sync_free', sync_free)
            pipe(x)                      # the first call fills misc.constant's cache
            torch.manual_seed(5)
            with SyncAudit() as audit:
                out[sync_free] = pipe(x)
            if sync_free:
                assert audit.events == [], audit.report()
        if spec == 'blit':
            assert torch.equal(out[False], out[True])
        else:
            assert (out[False] - out[True]).abs().max() < 5e-4
        assert not torch.equal(out[True], x)

#----------------------------------------------------------------------------
# Whole training iterations.

CONFIGS = [('fixed', [], dict(p=0.5)), ('ada', [], {}), ('apa', [], {}), ('diffaug', [], {}),
           ('ada', ['utlo'], {}), ('ada', ['regan'], {}), ('ada', ['lottery'], {})]

def audit_iterations(c, monkeypatch):
    """Run training_loop on config c with one SyncAudit per iteration; returns the audits."""
    audits = []
    start, end = plugins.PluginSet.on_iteration_start, plugins.PluginSet.end_of_iteration
    def on_iteration_start(self, state):
        audits.append(SyncAudit())
        audits[-1].__enter__()
        return start(self, state)
    def end_of_iteration(self, state, stats):
        try:
            return end(self, state, stats)
        finally:
            audits[-1].__exit__(None, None, None)
    monkeypatch.setattr(plugins.PluginSet, 'on_iteration_start', on_iteration_start)
    monkeypatch.setattr(plugins.PluginSet, 'end_of_iteration', end_of_iteration)
    monkeypatch.setattr(AugmentPipe, 'sync_free', True)      # the code path accelerators take
    os.makedirs(c.run_dir, exist_ok=True)
    training_loop.training_loop(**{k: v for k, v in c.items() if k != 'desc'})
    return audits

@pytest.mark.parametrize('aug,methods,opts', CONFIGS, ids=['-'.join([a] + m) for a, m, _ in CONFIGS])
def test_training_iterations_do_not_read_the_device(aug, methods, opts, tmp_path, monkeypatch):
    data = make_dataset(tmp_path / 'data')
    c = tiny_config(data, tmp_path / 'run', aug=aug, methods=methods, cond=True, kimg=0.004 * 12, **opts)
    c.kimg_per_tick = 1000                   # no tick inside: ticks read statistics by design
    c.network_snapshot_ticks = None
    audits = audit_iterations(c, monkeypatch)
    assert len(audits) == 12
    adaptive = aug in ('ada', 'apa')
    for i, audit in enumerate(audits[1:], start=1):     # iteration 0 creates optimizer state and masks
        if adaptive and (i + 1) % 4 == 0:
            # The p controller's statistic: one copy of the accumulated sums to the host.
            kinds = [what for what, _where in audit.events]
            assert kinds.count('Tensor.cpu') == 1, audit.report()
            assert all('training_stats.py' in where for _what, where in audit.events), audit.report()
        else:
            assert audit.events == [], f'iteration {i}:\n{audit.report()}'

def test_sync_free_and_benchmark_settings_keep_the_losses(tmp_path, monkeypatch):
    """Per-iteration losses of the default run equal those of a run with the sync-free warp and
    synchronised phase timing (the benchmark's settings), up to float rounding."""
    data = make_dataset(tmp_path / 'data')
    losses = []
    for name, sync_free, sync_timing in [('default', None, False), ('bench', True, True)]:
        c = tiny_config(data, tmp_path / name, aug='fixed', cond=True, kimg=0.004 * 4, p=0.6)
        c.kimg_per_tick = 0.001                     # a tick (one stats line) per iteration
        c.sync_timing = sync_timing
        monkeypatch.setattr(AugmentPipe, 'sync_free', sync_free)
        os.makedirs(c.run_dir, exist_ok=True)
        training_loop.training_loop(**{k: v for k, v in c.items() if k != 'desc'})
        stats = read_stats(c.run_dir)
        losses.append(np.array([stats['Loss/G/loss'], stats['Loss/D/loss']], dtype=np.float64))
    assert losses[0].shape == (2, 4)
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3, atol=1e-4)

#----------------------------------------------------------------------------
# On a GPU: CUDA's own sync detector over steady-state iterations.

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_sync_debug_mode_sees_no_sync_in_steady_state(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / 'data')
    c = tiny_config(data, tmp_path / 'run', aug='ada', cond=True, kimg=0.004 * 7)
    c.device = 'cuda'
    c.kimg_per_tick = 1000
    c.network_snapshot_ticks = None
    seen = []
    start, end = plugins.PluginSet.on_iteration_start, plugins.PluginSet.end_of_iteration
    def on_iteration_start(self, state):
        if state.batch_idx in (1, 2, 5, 6):       # not iteration 0, not the ADA read (batch_idx % 4 == 3 -> 0)
            torch.cuda.set_sync_debug_mode('error')
        return start(self, state)
    def end_of_iteration(self, state, stats):
        torch.cuda.set_sync_debug_mode('default')
        seen.append(state.batch_idx)
        return end(self, state, stats)
    monkeypatch.setattr(plugins.PluginSet, 'on_iteration_start', on_iteration_start)
    monkeypatch.setattr(plugins.PluginSet, 'end_of_iteration', end_of_iteration)
    os.makedirs(c.run_dir, exist_ok=True)
    try:
        training_loop.training_loop(**{k: v for k, v in c.items() if k != 'desc'})
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert len(seen) == 7
