"""bench/train_speed.py on the CPU: the real loop runs, the numbers are consistent."""

import json
import os
import sys

from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import train_speed  # noqa: E402

def test_train_speed_reports_throughput_and_phase_shares():
    result = CliRunner().invoke(train_speed.main, ['--runs=tiny:16', '--augs=noaug,fixed0.3', '--iters=2', '--warmup=1',
                                                   '--workers=0', '--json', '--train-args=--batch-gpu=4', '--no-isolate'])
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

def test_speed_levers_are_train_options():
    # The GPU suite makes one row per entry: each must be a list of train.py arguments that parse.
    assert list(train_speed.SPEED_LEVERS)[0] == 'default' and train_speed.SPEED_LEVERS['default'] == []
    assert train_speed.GPU_ONLY_LEVERS | train_speed.CPU_ONLY_LEVERS <= set(train_speed.SPEED_LEVERS)
    command = train_speed.train.build_cli()
    for name, args in train_speed.SPEED_LEVERS.items():
        assert isinstance(args, list) and all(isinstance(a, str) and a.startswith('--') for a in args), name
        names = {a.split('=')[0] for a in args}
        known = {opt for p in command.params for opt in p.opts}
        assert names <= known, (name, names - known)

def test_levers_run_in_fresh_processes_with_their_memory():
    result = CliRunner().invoke(train_speed.main, ['--runs=tiny:16', '--augs=noaug', '--iters=1', '--warmup=0', '--workers=0',
                                                   '--no-phases', '--json', '--levers=default,loop-adam',
                                                   '--train-args=--cpu-threads=1'])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith('{')]
    assert [r['lever'] for r in rows] == ['default', 'loop-adam']
    for r in rows:
        assert r['repeats'] == 1 and r['iterations'] == 1
        assert r['cpu_sec_per_kimg'] > 0 and r['sec_per_kimg'] > 0
        assert 0.1 < r['peak_rss_gb'] < 8          # a fresh process: torch plus tiny networks
    assert rows[0]['speedup'] == 1.0 and rows[0]['cpu_speedup'] == 1.0

def test_levers_alternate_and_medians_pair_by_round(monkeypatch):
    calls = []
    times = {'default': [10.0, 30.0, 11.0], 'bf16': [5.0, 10.0, 6.0]}   # a noisy second round
    def fake_run(argv):
        lever = next(a.split('=')[1] for a in argv if a.startswith('--levers='))
        calls.append(lever)
        sec = times[lever][sum(1 for c in calls if c == lever) - 1]
        return [dict(cfg='tiny', resolution=16, aug='noaug', batch=8, batch_gpu=8, iterations=1, sec_per_kimg=sec,
                     cpu_sec_per_kimg=sec / 2, images_per_sec=1000 / sec, peak_gpu_mem_gb=0.0, peak_rss_gb=0.5 + len(calls))]
    monkeypatch.setattr(train_speed, 'run_isolated', fake_run)
    rows = train_speed.compare_levers('tiny:16', 'noaug', ['default', 'bf16'], 3, [])
    assert calls == ['default', 'bf16'] * 3
    assert [r['sec_per_kimg'] for r in rows] == [11.0, 6.0]
    assert rows[1]['speedup'] == 2.0 and rows[1]['cpu_speedup'] == 2.0     # median of 2, 3, 1.833
    assert rows[0]['peak_rss_gb'] == 5.5 and rows[1]['peak_rss_gb'] == 6.5

def test_unknown_lever_is_named():
    result = CliRunner().invoke(train_speed.main, ['--levers=default,warp-drive'])
    assert result.exit_code == 2 and 'unknown warp-drive' in result.output and 'bf16' in result.output
