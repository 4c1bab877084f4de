"""bench/gpu_suite.py: the --cpu-smoke run end to end, and the pieces its GPU steps rely on
(caps that kill whole process groups, a failing step that does not stop the next, the pytest
report parsers, the op comparison, the lever list, reading run directories)."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import gpu_suite  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_a_small_report(tmp_path):
    out = tmp_path / 'report'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu_suite.py'), '--cpu-smoke', f'--out={out}',
                           '--budget-s=400'], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == sorted(gpu_suite.REPORT_FILES) and len(files) <= 8
    assert all((out / f).stat().st_size < 1_000_000 for f in files)
    for name in ('reals.png', 'fakes_init.png', 'fakes_final.png'):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    report = json.loads((out / 'gpu_report.json').read_text())
    steps = {s['key']: s for s in report['steps']}
    assert [s['key'] for s in report['steps']] == ['env', 'build', 'pytest', 'ops', 'speed', 'real', 'plugins', 'dist']
    assert report['mode'] == 'cpu-smoke' and report['passed'] and report['elapsed_s'] <= 400
    assert steps['env']['status'] == 'pass' and steps['env']['figures']['cuda'] is False
    for key in ('build', 'pytest', 'ops'):
        assert (steps[key]['status'], steps[key]['reason']) == ('skipped', 'no GPU')

    speed = steps['speed']
    assert speed['status'] == 'pass'
    assert [(r['label'], r['aug']) for r in speed['figures']['rows']] == [('anchor', 'noaug'), ('anchor', 'fixed0.3'),
                                                                          ('allow-tf32', 'fixed0.3')]
    assert all(r['sec_per_kimg'] > 0 and abs(r['sec_per_kimg'] * r['images_per_sec'] - 1000) < 1e-6 for r in speed['figures']['rows'])

    real = steps['real']['figures']
    assert steps['real']['status'] == 'pass' and real['ticks'] >= 6 and real['losses_finite'] and real['losses'] > 0
    assert real['stats']['p']['last'] > real['stats']['p']['first'] == 0     # ADA moved p
    assert real['grids'] == ['reals.png', 'fakes_init.png', 'fakes_final.png'] and real['snapshots']

    plugins = steps['plugins']
    assert plugins['status'] == 'pass' and set(plugins['figures']['rows']) == {'cond', 'transfer-bn', 'regan'}
    assert plugins['figures']['rows']['transfer-bn']['stats']['comb_l1'] is not None
    assert plugins['figures']['rows']['regan']['stats']['sparsity']['max'] == pytest.approx(0.3, abs=0.01)

    dist = steps['dist']
    assert dist['status'] == 'pass'
    assert (dist['figures']['collectives']['world'], dist['figures']['collectives']['backend']) == (1, 'gloo')
    assert dist['figures']['train']['ticks'] >= 2 and dist['figures']['train']['snapshots']

    md = (out / 'gpu_report.md').read_text()
    assert proc.stdout.rstrip().endswith(md.rstrip())      # the markdown is printed last
    summary = md.split('## Summary')[1]
    assert '| 2. Kernel builds (bias_act, upfirdn2d) | skipped: no GPU |' in summary and 'Result: PASS' in summary
    assert md.count('\n## ') == 9      # one section per step, then the summary
    log = (out / 'gpu_suite.log').read_text()
    assert 'torch.distributed.run' in log and 'train_speed.py' in log

def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    runner = CliRunner()
    taken = tmp_path / 'file.txt'
    taken.write_text('x')
    result = runner.invoke(gpu_suite.main, [f'--out={taken}'])
    assert result.exit_code == 2 and 'is a file; give a folder' in result.output
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'notes.txt').write_text('mine')
    result = runner.invoke(gpu_suite.main, [f'--out={busy}'])
    assert result.exit_code == 2 and 'holds other files (notes.txt)' in result.output
    result = runner.invoke(gpu_suite.main, [f'--out={tmp_path / "new"}', f'--data={tmp_path / "missing.zip"}'])
    assert result.exit_code == 2 and 'does not exist' in result.output
    result = runner.invoke(gpu_suite.main, [f'--out={tmp_path / "new"}', '--budget-s=5'])
    assert result.exit_code == 2 and '--budget-s' in result.output
    assert sorted(os.listdir(tmp_path)) == ['busy', 'file.txt'] and os.listdir(busy) == ['notes.txt']

def _ctx(tmp_path):
    return gpu_suite.Context(True, None, str(tmp_path), str(tmp_path))

def test_a_command_past_its_cap_is_killed_with_what_it_started(tmp_path):
    pid_file = tmp_path / 'grandchild.pid'
    code = ('import subprocess, sys, time; '
            'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); '
            f'open({str(pid_file)!r}, "w").write(str(p.pid)); print("started", flush=True); time.sleep(60)')
    t0 = time.monotonic()
    child = gpu_suite.run_child(_ctx(tmp_path), [sys.executable, '-c', code], timeout=3)
    assert child.timed_out and time.monotonic() - t0 < 20 and 'killed at its' in child.why()
    assert child.out == 'started\n'
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)

def _alive(pid):
    """Running (a killed process that nobody has reaped yet counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False

def test_a_failing_step_does_not_stop_the_next_and_caps_stay_in_budget(tmp_path, monkeypatch):
    seen = []
    def broken(ctx, deadline):
        seen.append(('broken', deadline.left()))
        raise RuntimeError('boom')
    def failing(ctx, deadline):
        seen.append(('failing', deadline.left()))
        return gpu_suite.result('fail', 'it failed')
    def passing(ctx, deadline):
        seen.append(('passing', deadline.left()))
        return gpu_suite.result('pass', figures=dict(n=1))
    monkeypatch.setattr(gpu_suite, 'STEPS', [('a', 'A', broken), ('b', 'B', failing), ('c', 'C', passing)])
    ctx = _ctx(tmp_path)
    ctx.profile = dict(ctx.profile, weights=dict(a=1, b=1, c=2))
    steps = gpu_suite.run_suite(ctx, 43)
    assert [(s['key'], s['status']) for s in steps] == [('a', 'fail'), ('b', 'fail'), ('c', 'pass')]
    assert steps[0]['reason'] == 'the suite itself failed: RuntimeError: boom' and 'Traceback' in ctx.log.text()
    assert [name for name, _ in seen] == ['broken', 'failing', 'passing']
    # 40 s after the reserve: a takes 1/4; what it leaves goes on to b (1/3 of the rest) and c (all of it)
    assert [round(cap) for _, cap in seen] == [10, 13, 40]

def test_pytest_reports_are_read_from_the_xml_and_from_verbose_lines(tmp_path):
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'test_mix.py').write_text(
        'import pytest\n'
        'def test_ok(): assert 1\n'
        'def test_bad(): assert 1 == 2, "one is not two"\n'
        '@pytest.fixture\n'
        'def broken(): raise ValueError("fixture broke")\n'
        'def test_error(broken): pass\n'
        'def test_skip(): pytest.skip("needs CUDA")\n')
    xml = tmp_path / 'r.xml'
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-v', '-p', 'no:cacheprovider', f'--junitxml={xml}', 'test_mix.py'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    counts, failures = gpu_suite.parse_junit(str(xml))
    assert counts == dict(passed=1, failed=1, errors=1, skipped=1)
    assert [(name, kind) for name, kind, _ in failures] == [('test_mix::test_bad', 'failure'), ('test_mix::test_error', 'error')]
    assert 'one is not two' in failures[0][2] and 'fixture broke' in failures[1][2]
    counts, failures = gpu_suite.parse_pytest_verbose(proc.stdout)
    assert counts == dict(passed=1, failed=1, errors=1, skipped=1)
    assert [name for name, _, _ in failures] == ['test_mix.py::test_bad', 'test_mix.py::test_error']

    child = gpu_suite.Child(['pytest'], proc.returncode, proc.stdout, proc.stderr, 1.0, False)
    r = gpu_suite.pytest_result(child, str(xml))
    assert r['status'] == 'fail' and r['reason'].startswith('2 of 4 failed') and 'one is not two' in r['notes'][0]
    cut = gpu_suite.Child(['pytest'], -9, proc.stdout, '', 30.0, True)     # killed before the XML was written
    r = gpu_suite.pytest_result(cut, str(tmp_path / 'none.xml'))
    assert r['status'] == 'fail' and r['figures']['passed'] == 1 and 'killed at its 30 s cap' in r['reason']

def test_op_comparison_measures_the_error_against_float64(tmp_path):
    import torch
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import ops as bench_ops
    cases = bench_ops._cases(1, False)
    assert len(cases) == 8
    name, shape, dtype, op = cases[1]       # upsample2d: the reference runs for impl='cuda' on a CPU
    r = gpu_suite.compare_op(name, shape, dtype, op, False, 2, bench_ops._median_ms)
    assert r['ok'] and 0 < r['fwd_rel_err'] < 1e-6 and 0 < r['grad_rel_err'] < 1e-6
    assert r['fwd_ms'] > 0 and r['ref_fb_ms'] > 0 and r['shape'] == 'x'.join(map(str, shape))
    def off_by_a_bit(x, impl):      # a "kernel" 1e-3 off in relative terms must fail float32's tolerance
        y = op(x, 'ref')
        return y * (1 + 1e-3) if impl == 'cuda' else y
    r = gpu_suite.compare_op(name, shape, dtype, off_by_a_bit, False, 1, bench_ops._median_ms)
    assert not r['ok'] and r['fwd_rel_err'] == pytest.approx(1e-3, rel=1e-3)
    def nan_kernel(x, impl):
        y = op(x, 'ref')
        return y * torch.nan if impl == 'cuda' else y
    assert not gpu_suite.compare_op(name, shape, dtype, nan_kernel, False, 1, bench_ops._median_ms)['ok']

def test_speed_levers_come_from_train_speed_without_the_cpu_only_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, 'BENCH', str(tmp_path))
    (tmp_path / 'train_speed.py').write_text(
        "import os\nSPEED_LEVERS = {'default': [], 'graphs': ['--cuda-graphs=1'], 'both': '--nhwc=1 --batch-gpu=64',\n"
        "                'threads': ['--cpu-threads=1']}\nCPU_ONLY_LEVERS = {'threads'}\n")
    assert gpu_suite.speed_levers(smoke=False) == {'default': [], 'graphs': ['--cuda-graphs=1'],
                                                   'both': ['--nhwc=1', '--batch-gpu=64']}
    assert gpu_suite.speed_levers(smoke=True) == gpu_suite.SMOKE_LEVERS
    (tmp_path / 'train_speed.py').write_text('LEVERS = {}\n')
    assert gpu_suite.speed_levers(smoke=False) is None
    monkeypatch.undo()
    real = gpu_suite.speed_levers(smoke=False)      # the shape bench/train_speed.py keeps for this reader
    assert real and all(isinstance(args, list) for args in real.values())

def test_stop_after_needs_both_the_time_and_the_ticks():
    stop = gpu_suite.StopAfter(0, 3, time.time() + 60)
    assert [stop(), stop(), stop()] == [False, False, True]
    stop = gpu_suite.StopAfter(60, 1, time.time() + 60)
    assert not stop() and not stop()
    assert gpu_suite.StopAfter(60, 1, time.time() - 1)()       # the hard end wins

def test_a_run_directory_with_nan_losses_fails(tmp_path):
    run_dir = tmp_path / 'out' / '00000-x'
    run_dir.mkdir(parents=True)
    ticks = [{'Progress/kimg': {'num': 1, 'mean': 0.1}, 'Timing/sec_per_kimg': {'num': 1, 'mean': 9.0},
              'Loss/G/loss': {'num': 1, 'mean': 1.0}, 'Progress/augment': {'num': 1, 'mean': 0.0}},
             {'Progress/kimg': {'num': 1, 'mean': 0.2}, 'Timing/sec_per_kimg': {'num': 1, 'mean': 3.0},
              'Loss/G/loss': {'num': 1, 'mean': math.nan}, 'Progress/augment': {'num': 1, 'mean': 0.1}}]
    (run_dir / 'stats.jsonl').write_text(''.join(json.dumps(t) + '\n' for t in ticks) + '{"cut sh')
    (run_dir / 'fakes000000.png').write_bytes(PNG_MAGIC)
    run = gpu_suite.read_run(str(tmp_path / 'out'))
    assert len(run['ticks']) == 2 and run['fakes'] == ['fakes000000.png'] and run['snapshots'] == []
    summary = gpu_suite.run_summary(run, dict(p='Progress/augment', missing='Nope/never'))
    assert (summary['ticks'], summary['kimg'], summary['sec_per_kimg']) == (2, 0.2, 3.0)
    assert summary['stats']['p'] == dict(first=0.0, last=0.1, max=0.1, min=0.0) and summary['stats']['missing'] is None
    child = gpu_suite.Child(['x'], 0, '', '', 1.0, False)
    problems = gpu_suite.run_problems(child, summary, dict(p='Progress/augment', missing='Nope/never'), 2)
    assert problems == ['NaN or inf in the losses', 'statistic missing (Nope/never) never reported']
