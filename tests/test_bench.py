"""bench/train_speed.py on the CPU: the real loop runs, the numbers are consistent."""

import json
import os
import sys

from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import train_speed  # noqa: E402

def test_train_speed_reports_throughput_and_phase_shares():
    result = CliRunner().invoke(train_speed.main, ['--runs=tiny:16', '--augs=noaug,fixed0.3', '--iters=2', '--warmup=1',
                                                   '--workers=0', '--json', '--train-args=--batch-gpu=4'])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith('{')]
    assert [r['aug'] for r in rows] == ['noaug', 'fixed0.3']
    for r in rows:
        assert (r['cfg'], r['resolution'], r['batch'], r['batch_gpu'], r['iterations']) == ('tiny', 16, 8, 4, 2)
        assert r['sec_per_kimg'] > 0
        assert abs(r['images_per_sec'] * r['sec_per_kimg'] - 1000) < 1e-6 * 1000
        assert set(r['phase_share']) >= {'Gmain', 'Dmain'}
        assert all(0 < share < 1 for share in r['phase_share'].values())
        assert 0.5 < sum(r['phase_share'].values()) <= 1.0 + 1e-6
