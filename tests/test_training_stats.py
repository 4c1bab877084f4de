"""torch_utils.training_stats: moments against numpy, collectors, cross-process all-reduce."""

import os
import socket
import sys
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from torch_utils import training_stats

#----------------------------------------------------------------------------

def test_report_and_collect_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=100)
    b = rng.normal(-1.0, 0.5, size=(4, 8))
    collector = training_stats.Collector(regex='ts1/.*')
    for chunk in np.split(a, 5):
        assert training_stats.report('ts1/a', torch.as_tensor(chunk)) is not None
    training_stats.report('ts1/b', torch.as_tensor(b, dtype=torch.float32))
    training_stats.report('ts1/b', 2.5) # plain python scalar
    training_stats.report('ts1/empty', [])
    training_stats.report('other/x', 1.0) # outside the regex
    collector.update()

    assert collector.names() == ['ts1/a', 'ts1/b', 'ts1/empty']
    assert collector.num('ts1/a') == 100
    assert collector.mean('ts1/a') == pytest.approx(a.mean(), rel=1e-12)
    assert collector.std('ts1/a') == pytest.approx(a.std(), rel=1e-9)
    b_all = np.concatenate([b.astype(np.float32).astype(np.float64).ravel(), [2.5]])
    assert collector.num('ts1/b') == 33
    assert collector['ts1/b'] == pytest.approx(b_all.mean(), rel=1e-9)
    assert collector.std('ts1/b') == pytest.approx(b_all.std(), rel=1e-9)
    assert collector.num('ts1/empty') == 0 and np.isnan(collector.mean('ts1/empty'))
    d = collector.as_dict()
    assert set(d) == {'ts1/a', 'ts1/b', 'ts1/empty'}
    assert d['ts1/a'].num == 100 and d['ts1/a'].mean == pytest.approx(a.mean())

def test_report_returns_value_unchanged():
    x = torch.randn(3, requires_grad=True)
    assert training_stats.report('ts2/x', x) is x
    assert training_stats.report0('ts2/y', 5) == 5

def test_update_windows_and_keep_previous():
    keep = training_stats.Collector(regex='ts3/.*', keep_previous=True)
    drop = training_stats.Collector(regex='ts3/.*', keep_previous=False)
    training_stats.report('ts3/v', [1.0, 2.0, 3.0])
    keep.update(); drop.update()
    assert keep.num('ts3/v') == 3 and keep.mean('ts3/v') == 2.0
    assert drop.num('ts3/v') == 3
    assert keep.std('ts3/v') == pytest.approx(np.std([1, 2, 3]))

    # Only the values since the previous update count; both collectors see each value.
    training_stats.report('ts3/v', [10.0])
    keep.update(); drop.update()
    assert keep.num('ts3/v') == 1 and keep.mean('ts3/v') == 10.0 and keep.std('ts3/v') == 0.0
    assert drop.mean('ts3/v') == 10.0

    # Nothing new: keep_previous keeps the last window, the other forgets it.
    keep.update(); drop.update()
    assert keep.mean('ts3/v') == 10.0
    assert drop.num('ts3/v') == 0 and np.isnan(drop.mean('ts3/v'))

def test_collector_sees_only_values_reported_after_it_was_made():
    training_stats.report('ts4/v', [100.0, 200.0])
    late = training_stats.Collector(regex='ts4/.*')
    training_stats.report('ts4/v', [1.0, float('inf')])
    late.update()
    assert late.num('ts4/v') == 2 and late.mean('ts4/v') == float('inf')
    assert np.isnan(late.std('ts4/v'))      # not finite: no spread to report
    with pytest.raises(KeyError, match='ts5/x'):
        late.mean('ts5/x')                  # a name outside its regex is a mistake, not an empty stat

def test_default_collector_exists():
    assert isinstance(training_stats.default_collector, training_stats.Collector)

#----------------------------------------------------------------------------
# Two processes with gloo: update() sums over ranks.

_WORKER = textwrap.dedent('''
    import sys, json
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from torch_utils import training_stats
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    training_stats.init_multiprocessing(rank=rank, sync_device=None)
    c = training_stats.Collector(regex='d/.*')
    vals = [1.0, 2.0, 3.0] if rank == 0 else [10.0]
    training_stats.report('d/v', torch.tensor(vals))
    training_stats.report0('d/r0', 7.0)
    c.update()
    print(json.dumps(dict(rank=rank, stats=c.as_dict())))
    dist.destroy_process_group()
''')

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_collector_all_reduces_across_two_processes(tmp_path):
    import json
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(port), root], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for o in outs:
        v = o['stats']['d/v']
        assert v['num'] == 4
        assert v['mean'] == pytest.approx(4.0)
        assert v['std'] == pytest.approx(np.std([1, 2, 3, 10]))
        assert o['stats']['d/r0']['num'] == 1 and o['stats']['d/r0']['mean'] == 7.0

#----------------------------------------------------------------------------
