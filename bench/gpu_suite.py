"""Check the whole product on a CUDA machine with one command, within a fixed time budget.

    python bench/gpu_suite.py --data=.carry/c10-10pct.zip --out=gpu-report
    python bench/gpu_suite.py --cpu-smoke --out=smoke-report      # every step on the CPU, tiny

Eight steps, in order: 1 environment, 2 kernel builds, 3 `pytest -m gpu`, 4 custom ops against
their float64 references, 5 training speed (bench/train_speed.py), 6 a real ADA run on --data,
7 every method plugin and the README's combinations, 8 torchrun (NCCL on GPUs, gloo on CPUs).
Every step runs in subprocesses killed at the step's time cap, a share of what is left of
--budget-s, so that a failing or hanging step never stops the next and the whole run ends in
time. Writes gpu_report.json, gpu_report.md, gpu_suite.log (each command with the tail of its
output) and step 6's image grids into --out, prints the markdown (summary table last) and
exits 0 only if every step passed; with --cpu-smoke, steps that need CUDA report
"skipped: no GPU" and the run passes when no step failed.
"""

import ast
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'bench')
RESULT_TAG = 'GPU_SUITE_RESULT '        # prefix of the JSON lines a worker prints for the parent
REPORT_FILES = ('gpu_report.json', 'gpu_report.md', 'gpu_suite.log', 'reals.png', 'fakes_init.png', 'fakes_final.png')
LOG_TAIL = 12000                        # characters of each command's stdout and stderr kept in the log
RESERVE_S = 3.0                         # kept back from the budget for writing the report

# What each mode runs. `weights` share the time budget: step i may use the time left times
# w_i / (w_i + the weights of the later steps), and what it leaves goes on to them. So the quick
# steps whose failure would void the rest (the probe, a fresh kernel build: ~40 s expected) get
# large weights at no cost when they are quick; the later weights are about their seconds.
PROFILES = {
    'gpu': dict(
        weights=dict(env=30, build=160, pytest=45, ops=25, speed=125, real=40, plugins=55, dist=40),
        cfg='cifar', res=32, real_train_s=25, real_tick=1, real_min_ticks=3, real_args=[], plugin_train_s=8,
        plugin_tick=0.25, jobs=6, workers=2, speed_workers=3,
        grid_max=16, startup_s=15, lottery_imp_kimg=0.5, regan_iters=8, dist_kimg=0.5, dist_tick=0.25,
        speed_runs=[('cifar', 32, 'noaug,fixed0.3', 20, 5), ('auto', 64, 'noaug', 12, 3), ('paper256', 256, 'noaug', 8, 3)],
        lever_base=('cifar', 32, 'fixed0.3', 12, 3)),
    'cpu-smoke': dict(
        weights=dict(env=4, build=1, pytest=1, ops=1, speed=12, real=10, plugins=16, dist=12),
        # ADA's p leaves 0 once D's sign statistic passes the target: in a few iterations of the
        # tiny preset only with a low target (with the default 0.6 it takes ~45 iterations).
        cfg='tiny', res=16, real_train_s=1, real_tick=0.04, real_min_ticks=6, real_args=['--target=0'], plugin_train_s=1,
        plugin_tick=0.008, jobs=2, workers=0, speed_workers=0,
        grid_max=4, startup_s=8, lottery_imp_kimg=0.008, regan_iters=1, dist_kimg=0.016, dist_tick=0.008,
        speed_runs=[('tiny', 16, 'noaug,fixed0.3', 2, 1)],
        lever_base=('tiny', 16, 'fixed0.3', 2, 1)),
}

# The speed levers come from bench/train_speed.py (SPEED_LEVERS, one place for them); the CPU
# smoke test runs one that suits the tiny preset and costs little there.
SMOKE_LEVERS = {'allow-tf32': ['--allow-tf32=1']}

# Step 7: (name, train.py arguments, {statistic: stats.jsonl key}, options). '@cond' and
# '@transfer-bn' in the arguments stand for those rows' run directories (transfer starts from them);
# '{...}' are numbers of the profile.
P = 'Progress/augment'
PLUGIN_ROWS = [
    ('cond', ['--cond=1', '--aug=ada', '--diffaug-policy=color,translation,cutout'], dict(p=P), dict(snapshot=True)),
    ('noaug', ['--aug=noaug'], {}, {}),
    ('fixed', ['--aug=fixed', '--p=0.3'], dict(p=P), {}),
    ('ada', ['--aug=ada'], dict(p=P), {}),
    ('apa', ['--aug=apa', '--with-dataaug=1', '--mirror=1'], dict(p=P), {}),     # APA/replaced_fraction only once p > 0
    ('diffaug', ['--aug=diffaug', '--mirror=1'], {}, {}),
    ('utlo', ['--cond=1', '--method=utlo', '--res-uc=8', '--alpha=1', '--mirror=1'], dict(loss_uc='Loss/G/loss_uc'), {}),
    ('transfer-bn', ['--cond=1', '--method=transfer', '--transfer-stage=bn', '--resume=@cond'],
     dict(comb_l1='Transfer/comb_l1'), dict(snapshot=True)),
    ('transfer-ft', ['--cond=1', '--method=transfer', '--transfer-stage=ft', '--resume=@transfer-bn'],
     dict(comb_l1='Transfer/comb_l1'), {}),
    ('regan', ['--aug=apa', '--with-dataaug=1', '--method=regan', '--regan-sparsity=0.3', '--regan-g={regan_iters}',
               '--regan-warmup={regan_iters}'], dict(sparsity='ReGAN/sparsity', phase='ReGAN/phase'), {}),
    ('lottery', ['--aug=diffaug', '--method=lottery', '--imp-rounds=2', '--imp-kimg={lottery_imp_kimg}',
                 '--advaug-gamma=0.01'], dict(round='Lottery/round', density='Lottery/density'), {}),
    ('regan+utlo', ['--cond=1', '--method=regan,utlo', '--regan-g={regan_iters}', '--regan-warmup={regan_iters}'],
     dict(sparsity='ReGAN/sparsity', loss_uc='Loss/G/loss_uc'), {}),
]
SMOKE_PLUGIN_ROWS = ('cond', 'transfer-bn', 'regan')     # the dependency chain and one method, to stay cheap

#----------------------------------------------------------------------------
# Running commands with a cap.

class Child:
    """A finished (or killed) command: exit code, output, wall seconds."""
    def __init__(self, cmd, rc, out, err, sec, timed_out):
        self.cmd, self.rc, self.out, self.err, self.sec, self.timed_out = cmd, rc, out, err, sec, timed_out

    def results(self):
        """The JSON objects the worker printed with RESULT_TAG, in order; unreadable lines are skipped."""
        found = []
        for line in self.out.splitlines():
            if line.startswith(RESULT_TAG):
                try:
                    found.append(json.loads(line[len(RESULT_TAG):]))
                except ValueError:
                    pass
        return found

    def why(self):
        """One line saying how the command ended when it did not succeed."""
        if self.timed_out:
            return f'killed at its {self.sec:.0f} s cap'
        if self.rc != 0:
            return f'exit code {self.rc}: {last_error_line(self.err or self.out)}'
        return ''


def last_error_line(text):
    """The most telling line of a traceback or log: the last that names an error, else the last."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for line in reversed(lines):
        if re.search(r'(Error|Exception|error:|FAILED|Killed)', line):
            return line[:300]
    return lines[-1][:300] if lines else '(no output)'


class Running:
    """A command started in a session of its own, so that its cap kills it with everything it
    started (DataLoader workers, torchrun ranks) and nothing else. Output goes to files in the
    scratch folder, not pipes: a chatty command never blocks on a full pipe nobody reads."""
    def __init__(self, ctx, cmd, cwd=ROOT):
        self.cmd, self.log, self.t0 = cmd, ctx.log, time.monotonic()
        ctx.commands += 1
        base = os.path.join(ctx.work, 'logs', f'{ctx.commands:03d}')
        os.makedirs(os.path.dirname(base), exist_ok=True)
        self.paths = (base + '.out', base + '.err')
        with open(self.paths[0], 'w') as out, open(self.paths[1], 'w') as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=ctx.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)

    def done(self):
        return self.proc.poll() is not None

    def finish(self, timeout):
        """Wait up to `timeout` seconds, then kill the command's process group; log and return it."""
        timed_out = False
        try:
            self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(self.proc)
            self.proc.wait()
        kill_group(self.proc)    # leftovers of a command that exited (a stray worker holding the GPU)
        out, err = (read_text(p) for p in self.paths)
        child = Child(self.cmd, self.proc.returncode, out, err, time.monotonic() - self.t0, timed_out)
        self.log.command(child)
        return child


def read_text(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_child(ctx, cmd, timeout, cwd=ROOT):
    return Running(ctx, cmd, cwd).finish(timeout)


def run_children(ctx, cmds, timeout):
    """Several commands at once, all capped at `timeout`; their Child results in order."""
    t0 = time.monotonic()
    running = [Running(ctx, cmd) for cmd in cmds]
    return [r.finish(timeout - (time.monotonic() - t0)) for r in running]


def worker_cmd(kind, **spec):
    return [sys.executable, os.path.abspath(__file__), '_worker', kind, json.dumps(spec)]


class Log:
    """gpu_suite.log: every command with its exit code, time and output tails."""
    def __init__(self):
        self.parts = []

    def note(self, text):
        self.parts.append(text.rstrip() + '\n')

    def command(self, child):
        state = 'killed at cap' if child.timed_out else f'rc {child.rc}'
        self.note(f'$ {shlex.join(child.cmd)}\n[{state}, {child.sec:.1f} s]')
        for name, text in (('stdout', child.out), ('stderr', child.err)):
            if text.strip():
                cut = '...\n' if len(text) > LOG_TAIL else ''
                self.note(f'--- {name} (last {LOG_TAIL} characters) ---\n{cut}{text[-LOG_TAIL:]}')

    def text(self):
        return '\n'.join(self.parts)


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

#----------------------------------------------------------------------------
# Step results.

def result(status, reason='', figures=None, table=None, notes=None):
    """status: 'pass' | 'fail' | 'skipped'; table: (header, rows) for the report."""
    return dict(status=status, reason=reason, figures=figures or {}, table=table, notes=notes or [])


def no_gpu():
    return result('skipped', 'no GPU')


def fmt(value, digits=3):
    if value is None:
        return '-'
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f'{value:.{digits}g}' if abs(value) < 1e-3 or abs(value) >= 1e5 else f'{value:.{digits}f}'
    return str(value)

#----------------------------------------------------------------------------
# Step 1: the environment.

def step_env(ctx, deadline):
    child = run_child(ctx, worker_cmd('env'), deadline.left())
    found = child.results()
    info = found[-1] if found else {}
    info['nvidia-smi'] = query_nvidia_smi(ctx, deadline)
    ctx.cuda = bool(info.get('cuda'))
    ctx.gpus = int(info.get('gpus') or 0)
    rows = [[key, fmt(value)] for key, value in info.items() if key != 'devices']
    rows += [[f'GPU {i}', dev] for i, dev in enumerate(info.get('devices', []))]
    table = (['item', 'value'], rows)
    if not found:
        return result('fail', f'the probe did not report ({child.why()})', info, table)
    if not ctx.cuda and not ctx.smoke:
        return result('fail', 'torch sees no CUDA device: check the driver and the CUDA build of torch', info, table)
    return result('pass', '', info, table)


def query_nvidia_smi(ctx, deadline):
    if shutil.which('nvidia-smi') is None:
        return 'not found'
    child = run_child(ctx, ['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
                      min(10.0, deadline.left()))
    return child.out.strip().replace('\n', '; ') if child.rc == 0 else f'failed ({child.why()})'


def worker_env(spec):
    import torch
    from torch.utils import cpp_extension
    cuda = torch.cuda.is_available()
    info = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=cuda,
                gpus=torch.cuda.device_count() if cuda else 0, cpus=os.cpu_count(), cuda_home=cpp_extension.CUDA_HOME,
                nvcc=probe(lambda: nvcc_version(cpp_extension.CUDA_HOME)),
                ninja=probe(lambda: command_output(['ninja', '--version']).splitlines()[0]))
    if cuda:
        info['cudnn'] = probe(torch.backends.cudnn.version)
        info['nccl'] = probe(lambda: '.'.join(map(str, torch.cuda.nccl.version())))
        info['devices'] = [probe(lambda i=i: device_info(torch, i)) for i in range(info['gpus'])]
    emit(info)


def probe(fn):
    """fn(), or the error it raised as text: one odd answer must not lose the rest of the report."""
    try:
        return fn()
    except Exception as err:
        return f'unknown ({type(err).__name__}: {err})'


def device_info(torch, i):
    p = torch.cuda.get_device_properties(i)
    return f'{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs'


def nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, 'bin', 'nvcc') if cuda_home else (shutil.which('nvcc') or 'nvcc')
    text = command_output([nvcc, '--version'])
    match = re.search(r'release ([\d.]+)', text)
    return f'{match.group(1)} ({nvcc})' if match else text.strip()[-200:]


def command_output(cmd):
    """stdout of a short command; raises when it cannot run or fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f'{cmd[0]} exited with {out.returncode}')
    return out.stdout

#----------------------------------------------------------------------------
# Step 2: building the CUDA kernels (both at once: each is one compile job chain of its own).

OPS = ('bias_act', 'upfirdn2d')

def step_build(ctx, deadline):
    if not ctx.cuda:
        return no_gpu()
    children = run_children(ctx, [worker_cmd('build', op=op) for op in OPS], deadline.left())
    rows, failed, figures = [], [], {}
    for op, child in zip(OPS, children):
        found = child.results()
        r = found[-1] if found else dict(ok=False, error=child.why() or 'no report', seconds=child.sec)
        figures[op] = r
        if not r.get('ok'):
            failed.append(op)
        rows.append([op, 'built' if r.get('ok') else 'FAILED', f"{r.get('seconds', 0):.1f}", r.get('build', '-'),
                     md_cell(r.get('error', '')[:600])])
    notes = [f'{op} compiler output:\n```\n{figures[op].get("error_lines") or figures[op].get("error", "")}\n```'
             for op in failed]
    reason = f'failed: {", ".join(failed)}' if failed else ''
    return result('fail' if failed else 'pass', reason, figures, (['op', 'status', 'seconds', 'build', 'error'], rows), notes)


def worker_build(spec):
    import importlib
    import torch  # noqa: F401  (custom_ops needs it; imported first for a clear failure)
    from torch_utils import custom_ops
    os.environ[custom_ops.STRICT_ENV] = '1'     # a failure raises with the compiler's output
    os.environ[custom_ops.RETRY_ENV] = '1'      # a failure left by an earlier run is tried again
    module = importlib.import_module(f'torch_utils.ops.{spec["op"]}')
    name = next((n for n, f in custom_ops._registry.items() if f is module._load_plugin), spec['op'])
    built_before = finished_builds(custom_ops.cache_root(), name)
    t0 = time.time()
    try:
        ok = module._load_plugin() is not None
        error = '' if ok else 'no CUDA device'
    except Exception as err:    # the report carries the message; the parent decides pass / fail
        ok, error = False, str(err)
    built_after = finished_builds(custom_ops.cache_root(), name)
    build = ('cached' if built_after <= built_before else 'fresh') if ok else '-'
    emit(dict(ok=ok, seconds=time.time() - t0, plugin=name, cache=custom_ops.cache_root(), build=build,
              error=error[-4000:], error_lines=compiler_errors(error)))


def finished_builds(cache_root, plugin):
    """Build directories of `plugin` under the cache that hold a finished build."""
    if not os.path.isdir(cache_root):
        return set()
    return {d for d in os.listdir(cache_root) if d.startswith(plugin + '-') and os.path.isfile(os.path.join(cache_root, d, 'BUILT'))}


def compiler_errors(text, limit=30):
    """The lines of a build log that state errors (nvcc / gcc / ninja), at most `limit`."""
    lines = [l for l in text.splitlines() if re.search(r'error|Error|FAILED|fatal', l)]
    return '\n'.join(lines[:limit])

#----------------------------------------------------------------------------
# Step 3: pytest -m gpu.

def step_pytest(ctx, deadline):
    if not ctx.cuda:
        return no_gpu()
    xml = os.path.join(ctx.work, 'pytest-gpu.xml')
    files = gpu_test_files()
    child = run_child(ctx, [sys.executable, '-m', 'pytest', '-m', 'gpu', '-v', '-rfEs', f'--junitxml={xml}', *files],
                      deadline.left())
    return pytest_result(child, xml)


def gpu_test_files():
    """Test files that mark a test `gpu`: `-m gpu` over these selects what it selects over tests/,
    without importing every other test module first."""
    tests = os.path.join(ROOT, 'tests')
    found = []
    for name in sorted(os.listdir(tests)):
        if name.startswith('test_') and name.endswith('.py'):
            with open(os.path.join(tests, name), encoding='utf-8') as f:
                if 'mark.gpu' in f.read():
                    found.append(os.path.join('tests', name))
    return found


def parse_junit(path):
    """Counts and failures of a pytest JUnit XML file: (counts, [(test, kind, message)])."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures = []
    for suite in suites:
        for case in suite.iter('testcase'):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            kinds = [child.tag for child in case if child.tag in ('failure', 'error', 'skipped')]
            if 'failure' in kinds or 'error' in kinds:
                tag = 'failure' if 'failure' in kinds else 'error'
                node = case.find(tag)
                counts['failed' if tag == 'failure' else 'errors'] += 1
                failures.append((name, tag, (node.get('message') or node.text or '').strip()))
            elif 'skipped' in kinds:
                counts['skipped'] += 1
            else:
                counts['passed'] += 1
    return counts, failures


def parse_pytest_verbose(text):
    """Counts and failures from `pytest -v` lines, for a run killed before it wrote its XML."""
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures = []
    for name, outcome in re.findall(r'^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)', text, flags=re.M):
        key = dict(PASSED='passed', XPASS='passed', FAILED='failed', ERROR='errors').get(outcome, 'skipped')
        counts[key] += 1
        if key in ('failed', 'errors'):
            failures.append((name, outcome.lower(), '(run cut off: see gpu_suite.log)'))
    return counts, failures


def pytest_result(child, xml):
    try:
        counts, failures = parse_junit(xml) if os.path.isfile(xml) else parse_pytest_verbose(child.out)
    except ET.ParseError:
        counts, failures = parse_pytest_verbose(child.out)
    if sum(counts.values()) == 0 and child.rc != 5:
        return result('fail', f'pytest reported no test ({child.why()})')
    figures = dict(counts, seconds=child.sec, failures=[dict(test=t, kind=k, message=m[:2000]) for t, k, m in failures])
    table = (['passed', 'failed', 'errors', 'skipped', 'seconds'],
             [[counts['passed'], counts['failed'], counts['errors'], counts['skipped'], fmt(child.sec, 1)]])
    notes = []
    if failures:
        notes.append(md_table(['test', 'kind', 'message'], [[t, k, md_cell(m[:400])] for t, k, m in failures]))
    if failures or child.timed_out or child.rc not in (0, 5):
        reason = f'{len(failures)} of {sum(counts.values())} failed' if failures else ''
        return result('fail', '; '.join(x for x in (reason, child.why()) if x), figures, table, notes)
    if counts['passed'] == 0:
        return result('skipped', 'no GPU test ran', figures, table, notes)
    return result('pass', '', figures, table, notes)

#----------------------------------------------------------------------------
# Step 4: each custom op against a float64 reference, and its time against the plain-PyTorch op.

TOLERANCE = {'float32': 1e-4, 'float16': 1e-2, 'bfloat16': 2e-2}   # |out - ref| / |ref| (L2)

def step_ops(ctx, deadline):
    if not ctx.cuda:
        return no_gpu()
    child = run_child(ctx, worker_cmd('ops', reps=10), deadline.left())
    return ops_result(child)


def ops_result(child):
    found = child.results()
    header = next((r for r in found if 'kernels' in r), {})
    rows = [r for r in found if 'case' in r]
    table_rows = []
    for r in rows:
        table_rows.append([r['case'], r['shape'], r['dtype'], fmt(r.get('fwd_ms')), fmt(r.get('ref_fwd_ms')),
                           fmt(r.get('fb_ms')), fmt(r.get('ref_fb_ms')), fmt(r.get('fwd_rel_err'), 2),
                           fmt(r.get('grad_rel_err'), 2), fmt(r.get('max_abs_err'), 2),
                           'ok' if r['ok'] else 'FAIL ' + r.get('error', '')])
    table = (['op', 'input', 'dtype', 'kernel fwd ms', 'ref fwd ms', 'kernel f+b ms', 'ref f+b ms',
              'fwd rel err', 'grad rel err', 'max abs err', 'within tol'], table_rows)
    figures = dict(kernels=header.get('kernels'), cases=rows)
    bad = [r['case'] for r in rows if not r['ok']]
    missing = [k for k, v in (header.get('kernels') or {}).items() if not v]
    if not rows or child.rc != 0:
        return result('fail', child.why() or 'no case reported', figures, table)
    if missing:
        return result('fail', f'kernel not built: {", ".join(missing)} (the rows time the reference twice)', figures, table)
    if bad:
        return result('fail', f'{len(bad)} of {len(rows)} cases outside tolerance {TOLERANCE}', figures, table)
    return result('pass', '', figures, table)


def worker_ops(spec):
    import torch
    sys.path.insert(0, BENCH)
    import ops as bench_ops
    from torch_utils.ops import bias_act, upfirdn2d
    cuda = torch.cuda.is_available()
    kernels = {'bias_act': bias_act._load_plugin() is not None, 'upfirdn2d': upfirdn2d._load_plugin() is not None}
    emit(dict(kernels=kernels if cuda else {}))
    batch = spec.get('batch') or (32 if cuda else 2)
    for name, shape, dtype, op in bench_ops._cases(batch, cuda):
        try:
            emit(compare_op(name, shape, dtype, op, cuda, spec.get('reps', 20), bench_ops._median_ms))
        except Exception as err:    # one broken case must not hide the others
            emit(dict(case=name, shape='x'.join(map(str, shape)), dtype=str(dtype).replace('torch.', ''), ok=False,
                      error=f'{type(err).__name__}: {err}'[:500]))
        if cuda:
            torch.cuda.empty_cache()


def compare_op(name, shape, dtype, op, cuda, reps, median_ms):
    """Output and input gradient of op(x, 'cuda') against op on float64 inputs (fresh random data,
    a random upstream gradient), and the median times of the kernel and of the reference."""
    import torch
    dev = 'cuda' if cuda else 'cpu'
    x = torch.randn(shape, device=dev, dtype=dtype)
    x64 = x.detach().double().requires_grad_(True)
    xk = x.detach().clone().requires_grad_(True)
    y64 = op(x64, 'ref')
    yk = op(xk, 'cuda')
    g = torch.randn_like(yk)    # in the op's dtype, so that both sides see the same upstream gradient
    y64.backward(g.double())
    yk.backward(g)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm().clamp_min(1e-30))
    fwd_err, grad_err = rel(yk.detach(), y64.detach()), rel(xk.grad, x64.grad)
    max_abs = float(max((yk.detach().double() - y64.detach()).abs().max(), (xk.grad.double() - x64.grad).abs().max()))
    tol = TOLERANCE[str(dtype).replace('torch.', '')]
    timing = {}
    xg = x.detach().clone().requires_grad_(True)
    for impl in ('cuda', 'ref'):
        def fwd_bwd(impl=impl):
            y = op(xg, impl)
            y.backward(torch.ones_like(y))
        timing[impl] = (median_ms(lambda impl=impl: op(x, impl), reps, cuda), median_ms(fwd_bwd, reps, cuda))
    return dict(case=name, shape='x'.join(map(str, shape)), dtype=str(dtype).replace('torch.', ''),
                fwd_ms=timing['cuda'][0], fb_ms=timing['cuda'][1], ref_fwd_ms=timing['ref'][0], ref_fb_ms=timing['ref'][1],
                fwd_rel_err=fwd_err, grad_rel_err=grad_err, max_abs_err=max_abs,
                ok=all(math.isfinite(e) and e <= tol for e in (fwd_err, grad_err)))

#----------------------------------------------------------------------------
# Step 5: training speed on the anchor configs, then each speed lever on the lever baseline.

def speed_levers(smoke):
    """name -> train.py args of the levers to time here: bench/train_speed.py's SPEED_LEVERS without
    those it marks for the other kind of device; None when it defines none."""
    if smoke:
        return dict(SMOKE_LEVERS)
    found = read_literals(os.path.join(BENCH, 'train_speed.py'), ('SPEED_LEVERS', 'CPU_ONLY_LEVERS'))
    if not isinstance(found.get('SPEED_LEVERS'), dict):
        return None
    skip = set(found.get('CPU_ONLY_LEVERS') or ())
    return {str(k): shlex.split(v) if isinstance(v, str) else [str(a) for a in v]
            for k, v in found['SPEED_LEVERS'].items() if k not in skip}


def read_literals(path, names):
    """{name: value} of module-level `NAME = <literal>` assignments, read without importing the file
    (importing train_speed would import torch into this process)."""
    try:
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return {}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in names:
                    try:
                        found[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
    return found


def speed_cmd(ctx, cfg, res, augs, iters, warmup, train_args=()):
    cmd = [sys.executable, os.path.join(BENCH, 'train_speed.py'), f'--runs={cfg}:{res}', f'--augs={augs}',
           f'--iters={iters}', f'--warmup={warmup}', f'--workers={ctx.profile["speed_workers"]}', '--no-phases', '--json']
    if train_args:
        cmd.append('--train-args=' + shlex.join(train_args))
    return cmd


def speed_rows(child, label):
    """The JSON rows train_speed printed, labelled; a row per expected run that did not come."""
    rows = []
    for line in child.out.splitlines():
        if line.startswith('{'):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            rows.append(dict(r, label=label, ok=positive(r.get('sec_per_kimg')) and positive(r.get('images_per_sec'))))
    return rows


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def step_speed(ctx, deadline):
    """The anchors first (one train_speed run per resolution group), then one run per lever; a lever
    gets a fair share of the time left, so one slow lever (a compiler) cannot starve the rest."""
    p = ctx.profile
    levers = speed_levers(ctx.smoke)
    cfg, res, aug, it, wu = p['lever_base']
    plans = [('anchor', speed_cmd(ctx, *run), len(run[2].split(','))) for run in p['speed_runs']]
    plans += [(name, speed_cmd(ctx, cfg, res, aug, it, wu, args), 1) for name, args in (levers or {}).items()]
    rows, problems = [], [] if levers else ['bench/train_speed.py defines no SPEED_LEVERS: no lever was timed']
    for i, (label, cmd, expected) in enumerate(plans):
        later = len(plans) - i - 1
        cap = deadline.left() - 8 * later if label == 'anchor' else 1.5 * deadline.left() / (later + 1)
        if cap < 3:
            problems.append(f'{label}: not run (out of time)')
            continue
        child = run_child(ctx, cmd, min(cap, deadline.left()))
        got = speed_rows(child, label)
        rows += got
        if len(got) < expected or child.rc != 0:
            problems.append(f'{label}: {child.why() or "missing rows"}')
    problems += [f"{r['label']} {r['cfg']} {r['aug']}: no valid timing" for r in rows if not r['ok']]
    plain = next((name for name, args in (levers or {}).items() if not args), 'anchor')     # 'default': no extra args
    base = next((r for r in rows if r['label'] == plain and (r['cfg'], r['aug']) == (cfg, aug) and r['ok']), None)
    table = (['run', 'config', 'aug', 'batch/round', 'sec/kimg', 'img/s', 'peak GiB', 'speed vs baseline'],
             [speed_table_row(r, base) for r in rows])
    notes = [f'Levers (bench/train_speed.py SPEED_LEVERS) on {cfg} {res}px {aug}, {it} timed iterations after {wu}; '
             f'baseline: {base["label"] if base else "none"} (> 1x is faster).']
    return result('fail' if problems else 'pass', '; '.join(problems), dict(rows=rows, levers=levers), table, notes)


def speed_table_row(r, base):
    vs = base['sec_per_kimg'] / r['sec_per_kimg'] if base and r['label'] != 'anchor' and r['ok'] else None
    return [r['label'], f"{r['cfg']} {r['resolution']}px", r['aug'], f"{r['batch']}/{r['batch_gpu']}",
            fmt(r['sec_per_kimg'], 3), fmt(r['images_per_sec'], 1), fmt(r['peak_gpu_mem_gb'], 2), f'{vs:.2f}x' if vs else '-']

#----------------------------------------------------------------------------
# Steps 6 and 7: training runs of a fixed length, read back from their run directories.

def train_cmd(ctx, outdir, args, seconds, min_ticks, snapshot, grid_max, hard_end):
    spec = dict(args=[f'--outdir={outdir}', f'--data={ctx.data}', f'--cfg={ctx.profile["cfg"]}', '--metrics=none',
                      f'--workers={ctx.profile["workers"]}', '--kimg=100000', '--snap=100000', *args],
                seconds=seconds, min_ticks=min_ticks, hard_end=hard_end, snapshot=snapshot, grid_max=grid_max)
    return worker_cmd('train', **spec)


def worker_train(spec):
    """train.py for `seconds` of training after the first tick and at least `min_ticks` ticks (or
    until `hard_end`, epoch seconds): train.py has no wall-clock limit, so the loop's abort_fn
    gets one here, handed in around training_loop so that it never lands in the options that
    snapshots store."""
    import functools
    import train
    from training import training_loop
    c = train.build_cli().main([*spec['args'], '--dry-run'], standalone_mode=False)
    c.image_grid_max = spec['grid_max']
    if not spec['snapshot']:
        c.network_snapshot_ticks = None
    training_loop.training_loop = functools.partial(training_loop.training_loop,
                                                    abort_fn=StopAfter(spec['seconds'], spec['min_ticks'], spec['hard_end']))
    train.run_training(c)
    emit(dict(run_dir=c.run_dir))


class StopAfter:
    """abort_fn (called once per tick): true once `seconds` have passed since its first call and
    it has been called `min_ticks` times, or at `hard_end` (epoch seconds)."""
    def __init__(self, seconds, min_ticks, hard_end):
        self.seconds, self.min_ticks, self.hard_end = seconds, min_ticks, hard_end
        self.first, self.calls = None, 0

    def __call__(self):
        now = time.time()
        self.first = now if self.first is None else self.first
        self.calls += 1
        return (now - self.first >= self.seconds and self.calls >= self.min_ticks) or now >= self.hard_end


def read_run(outdir):
    """What a run directory under `outdir` says: ticks from stats.jsonl, images, snapshots."""
    dirs = sorted(d for d in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, d))) if os.path.isdir(outdir) else []
    if not dirs:
        return None
    run_dir = os.path.join(outdir, dirs[-1])
    ticks = []
    stats = os.path.join(run_dir, 'stats.jsonl')
    if os.path.isfile(stats):
        with open(stats, encoding='utf-8') as f:
            for line in f:
                try:
                    ticks.append(json.loads(line))
                except ValueError:
                    pass     # a line cut short by a kill
    files = sorted(os.listdir(run_dir))
    return dict(run_dir=run_dir, ticks=ticks, fakes=[f for f in files if re.fullmatch(r'fakes\d+\.png', f)],
                snapshots=[f for f in files if f.startswith('network-snapshot-') and f.endswith('.pkl')], files=files)


def stat_series(ticks, key):
    return [t[key]['mean'] for t in ticks if isinstance(t.get(key), dict) and t[key].get('mean') is not None]


def run_summary(run, stats):
    """Ticks, kimg, sec/kimg (ticks after the first, which holds the start-up), finite losses, stats."""
    ticks = run['ticks'] if run else []
    kimg = stat_series(ticks, 'Progress/kimg')
    spk = stat_series(ticks, 'Timing/sec_per_kimg')
    losses = [v for t in ticks for k, s in t.items() if k.startswith('Loss/') and isinstance(s, dict)
              for v in [s.get('mean')] if v is not None]
    summary = dict(ticks=len(ticks), kimg=kimg[-1] if kimg else 0.0,
                   sec_per_kimg=(sum(spk[1:]) / len(spk[1:])) if len(spk) > 1 else (spk[0] if spk else None),
                   losses=len(losses), losses_finite=all(math.isfinite(v) for v in losses), stats={})
    for name, key in stats.items():
        series = stat_series(ticks, key)
        summary['stats'][name] = dict(first=series[0], last=series[-1], max=max(series), min=min(series)) if series else None
    return summary


def stats_text(summary):
    parts = []
    for name, s in summary['stats'].items():
        parts.append(f'{name} missing' if s is None else f"{name} {fmt(s['first'], 3)} -> {fmt(s['last'], 3)} (max {fmt(s['max'], 3)})")
    return ', '.join(parts)


def run_problems(child, summary, stats, min_ticks):
    problems = []
    if child.rc != 0 or child.timed_out:
        problems.append(child.why())
    if summary['ticks'] < min_ticks:
        problems.append(f"{summary['ticks']} ticks written (expected at least {min_ticks})")
    if not summary['losses_finite']:
        problems.append('NaN or inf in the losses')
    elif summary['losses'] == 0:
        problems.append('no loss statistics')
    problems += [f'statistic {name} ({stats[name]}) never reported' for name, s in summary['stats'].items() if s is None]
    return problems


def step_real(ctx, deadline):
    p = ctx.profile
    ensure_data(ctx, deadline)
    seconds = max(1.0, min(p['real_train_s'], deadline.left() - p['startup_s']))
    outdir = os.path.join(ctx.work, 'real')
    args = ['--aug=ada', f'--tick={p["real_tick"]}', *p['real_args']]
    stats = dict(p=P, rt='Loss/signs/real')
    child = run_child(ctx, train_cmd(ctx, outdir, args, seconds, p['real_min_ticks'], True, p['grid_max'],
                                     time.time() + deadline.left() - 8), deadline.left())
    run = read_run(outdir)
    summary = run_summary(run, stats)
    problems = run_problems(child, summary, stats, p['real_min_ticks'])
    pstat = summary['stats']['p']
    if pstat is not None and pstat['max'] == pstat['min']:
        problems.append(f"ADA's p never moved (stayed {pstat['max']})")
    grids = copy_grids(run, ctx.out) if run else []
    if 'fakes_final.png' not in grids:
        problems.append('no final grid of fakes')
    if run and not run['snapshots']:
        problems.append('no snapshot written at the end')
    summary.update(data=ctx.data, train_seconds=seconds, grids=grids, snapshots=run['snapshots'] if run else [])
    table = (['data', 'trained', 'ticks', 'kimg', 'sec/kimg', 'p (ADA), rt (sign of D on reals)', 'losses', 'grids', 'snapshot'],
             [[os.path.relpath(ctx.data, ROOT) if ctx.data.startswith(ROOT) else ctx.data, f'{seconds:.0f} s',
               summary['ticks'], fmt(summary['kimg'], 2), fmt(summary['sec_per_kimg'], 2), stats_text(summary),
               'finite' if summary['losses_finite'] else 'NaN/inf', ', '.join(grids) or '-',
               ', '.join(summary['snapshots']) or '-']])
    return result('fail' if problems else 'pass', '; '.join(problems), summary, table)


def copy_grids(run, out):
    """reals.png, fakes_init.png and the newest fakesNNNNNN.png into --out; the names copied."""
    copied = []
    for src, dst in (('reals.png', 'reals.png'), ('fakes_init.png', 'fakes_init.png'),
                     (run['fakes'][-1] if run['fakes'] else None, 'fakes_final.png')):
        if src and os.path.isfile(os.path.join(run['run_dir'], src)):
            shutil.copyfile(os.path.join(run['run_dir'], src), os.path.join(out, dst))
            copied.append(dst)
    return copied


def plugin_plan(ctx):
    """Step 7's rows with the profile's numbers filled in: (name, args, stats, options)."""
    p = ctx.profile
    values = dict(regan_iters=p['regan_iters'], lottery_imp_kimg=p['lottery_imp_kimg'])
    rows = [r for r in PLUGIN_ROWS if not ctx.smoke or r[0] in SMOKE_PLUGIN_ROWS]
    return [(name, [a.format(**values) for a in args], stats, opts) for name, args, stats, opts in rows]


def depends_on(args):
    """Names of the rows whose run directory these arguments name ('@row')."""
    return [m for a in args for m in re.findall(r'@([\w-]+)', a)]


def step_plugins(ctx, deadline):
    p = ctx.profile
    ensure_data(ctx, deadline)
    plan = plugin_plan(ctx)
    chain = 1 + max(len(depends_on(args)) for _, args, _, _ in plan)     # rows that must run one after another
    waves = max(math.ceil(len(plan) / p['jobs']), chain + 1)
    seconds = max(p['plugin_train_s'] / 4, min(p['plugin_train_s'], deadline.left() / waves - p['startup_s']))
    pending, running, done = list(plan), [], {}
    while (pending or running) and deadline.left() > 0:
        for row in [r for r in pending if ready(r, done)][:p['jobs'] - len(running)]:
            pending.remove(row)
            running.append((row, start_plugin_row(ctx, row, done, seconds, deadline)))
        time.sleep(0.2)
        for item in [i for i in running if i[1].done()]:
            running.remove(item)
            done[item[0][0]] = plugin_row(item[0], item[1].finish(5), ctx)
        if pending and not running and not any(ready(r, done) for r in pending):
            break   # what is left waits for a row that failed
    for row, proc in running:       # out of time: kill what still runs and read what it wrote
        done[row[0]] = plugin_row(row, proc.finish(0), ctx)
    rows, problems = [], []
    for name, args, stats, opts in plan:
        r = done.get(name)
        if r is None:
            why = 'waits for a row that failed' if any(d not in done or done[d]['problems'] for d in depends_on(args)) else 'out of time'
            rows.append([name, 'not run', '-', '-', '-', '-', why])
            problems.append(f'{name}: not run ({why})')
            continue
        rows.append([name, 'pass' if not r['problems'] else 'FAIL', r['ticks'], fmt(r['kimg'], 2),
                     fmt(r['sec_per_kimg'], 2), stats_text(r), '; '.join(r['problems']) or shlex.join(args)])
        problems += [f'{name}: {x}' for x in r['problems']]
    table = (['row', 'status', 'ticks', 'kimg', 'sec/kimg', 'statistics (first -> last)', 'problems / arguments'], rows)
    notes = [f'Each row trains {seconds:.0f} s after its first tick, up to {p["jobs"]} rows at a time on one device, '
             f'so its sec/kimg is measured under that load (step 5 has the clean figures). '
             f'@row stands for that row\'s run directory.']
    return result('fail' if problems else 'pass', '; '.join(problems), dict(rows=done, train_seconds=seconds), table, notes)


def ready(row, done):
    return all(d in done and not done[d]['problems'] for d in depends_on(row[1]))


def start_plugin_row(ctx, row, done, seconds, deadline):
    name, args, stats, opts = row
    args = [re.sub(r'@([\w-]+)', lambda m: done[m.group(1)]['run_dir'], a) for a in args]
    outdir = os.path.join(ctx.work, 'plugins', name)
    cmd = train_cmd(ctx, outdir, args + [f'--tick={ctx.profile["plugin_tick"]}'], seconds, 2, opts.get('snapshot', False),
                    4, time.time() + deadline.left() - 3)
    return Running(ctx, cmd)


def plugin_row(row, child, ctx):
    name, args, stats, opts = row
    run = read_run(os.path.join(ctx.work, 'plugins', name))
    summary = run_summary(run, stats)
    summary['problems'] = run_problems(child, summary, stats, 2)
    if opts.get('snapshot') and not (run and run['snapshots']):
        summary['problems'].append('no snapshot for the rows that start from it')
    summary['run_dir'] = run['run_dir'] if run else None
    return summary

#----------------------------------------------------------------------------
# Step 8: torchrun, one rank per GPU (NCCL cannot place two ranks on one GPU), gloo on CPUs.

def step_dist(ctx, deadline):
    p = ctx.profile
    ensure_data(ctx, deadline)
    nproc = max(1, ctx.gpus) if ctx.cuda else 1
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={nproc}']
    coll = run_child(ctx, torchrun + [os.path.abspath(__file__), '_worker', 'dist', '{}'], min(60.0, deadline.left() * 0.4))
    found = coll.results()
    rows, problems = [], []
    r = found[-1] if found else None
    if r is None or not r.get('ok'):
        problems.append(f"collectives: {(r or {}).get('error') or coll.why() or 'no report'}")
    if r:
        rows.append(['collectives (all_reduce, broadcast, all_gather_object, DDP consistency)', r['world'], r['backend'],
                     'ok' if r.get('ok') else 'FAIL', fmt(r.get('seconds'), 2)])
    outdir = os.path.join(ctx.work, 'dist')
    cmd = torchrun + ['train.py', f'--outdir={outdir}', f'--data={ctx.data}', f'--cfg={p["cfg"]}', '--aug=ada',
                      f'--kimg={p["dist_kimg"]}', f'--tick={p["dist_tick"]}', '--snap=1000', '--metrics=none',
                      f'--workers={p["workers"]}']
    child = run_child(ctx, cmd, deadline.left())
    run = read_run(outdir)
    summary = run_summary(run, {})
    train_problems = run_problems(child, summary, {}, 2)
    if run and not run['snapshots']:
        train_problems.append('no snapshot')
    problems += [f'train.py under torchrun: {x}' for x in train_problems]
    rows.append([f'train.py under torchrun, {p["dist_kimg"]} kimg', nproc, 'nccl' if ctx.cuda and nproc > 1 else
                 ('none (one rank)' if nproc == 1 else 'gloo'), 'ok' if not train_problems else 'FAIL', fmt(child.sec, 1)])
    table = (['check', 'ranks', 'backend', 'result', 'seconds'], rows)
    figures = dict(collectives=r, train=dict(summary, problems=train_problems, snapshots=run['snapshots'] if run else []))
    return result('fail' if problems else 'pass', '; '.join(problems), figures, table)


def worker_dist(spec):
    """One torchrun rank: join the group the way train.py does, check the collectives training uses."""
    import torch
    import train
    from torch_utils import misc
    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local = int(os.environ.get('LOCAL_RANK', rank))
    cuda = torch.cuda.is_available()
    backend = 'nccl' if cuda else 'gloo'
    device = torch.device('cuda', local) if cuda else torch.device('cpu')
    out = dict(rank=rank, world=world, backend=backend, ok=False)
    t0 = time.time()
    try:
        if cuda:
            torch.cuda.set_device(local)
        train.init_distributed(rank, world, 'env://', backend, 60)
        x = torch.full([1000], float(rank + 1), device=device)
        torch.distributed.all_reduce(x)
        expect = world * (world + 1) / 2
        objs = [{'rank': rank}] if rank == 0 else [None]
        torch.distributed.broadcast_object_list(objs, src=0)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, rank)
        torch.manual_seed(0)    # every rank builds the same module, so DDP consistency must hold
        module = torch.nn.Linear(8, 8).to(device)
        misc.check_ddp_consistency(module)
        torch.distributed.barrier()
        out.update(ok=bool(torch.all(x == expect)) and objs[0] == {'rank': 0} and gathered == list(range(world)),
                   all_reduce_sum=float(x[0]), expected=expect, seconds=time.time() - t0)
        torch.distributed.destroy_process_group()
    except Exception as err:    # reported to the parent, which decides pass / fail
        out.update(error=f'{type(err).__name__}: {err}'[:2000], seconds=time.time() - t0)
    if rank == 0:
        emit(out)

#----------------------------------------------------------------------------
# The report.

STEPS = [
    ('env', '1. Environment', step_env),
    ('build', '2. Kernel builds (bias_act, upfirdn2d)', step_build),
    ('pytest', '3. pytest -m gpu', step_pytest),
    ('ops', '4. Custom ops against float64 references', step_ops),
    ('speed', '5. Training speed (bench/train_speed.py)', step_speed),
    ('real', '6. Real run: ADA on --data', step_real),
    ('plugins', '7. Method plugins and README combinations', step_plugins),
    ('dist', '8. torchrun', step_dist),
]


def md_cell(text):
    return str(text).replace('|', '\\|').replace('\n', ' ').strip()


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |']
    lines += ['| ' + ' | '.join(md_cell(fmt(c)) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def status_text(step):
    return step['status'] + (f": {step['reason']}" if step['reason'] else '')


def markdown(report):
    lines = [f"# GPU suite report ({report['mode']})", '',
             f"{report['started']} UTC, commit {report['commit']}, budget {report['budget_s']:.0f} s, "
             f"used {report['elapsed_s']:.0f} s. Logs of every command: gpu_suite.log.", '']
    for step in report['steps']:
        lines += [f"## {step['title']}: {step['status']}", '']
        if step['reason']:
            lines += [md_cell(step['reason']), '']
        if step.get('table'):
            lines += [md_table(*step['table']), '']
        for note in step.get('notes', []):
            lines += [note, '']
    lines += ['## Summary', '', md_table(['step', 'status', 'seconds', 'cap s'],
              [[s['title'], status_text(s)[:300], f"{s['seconds']:.1f}", f"{s['cap_s']:.0f}"] for s in report['steps']]),
              '', f"Result: {'PASS' if report['passed'] else 'FAIL'}", '']
    return '\n'.join(lines)


def git_commit():
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or 'unknown'
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown'

#----------------------------------------------------------------------------
# The command.

class Context:
    def __init__(self, smoke, data, out, work):
        self.smoke, self.data, self.out, self.work = smoke, data, out, work
        self.profile = PROFILES['cpu-smoke' if smoke else 'gpu']
        self.cuda, self.gpus = False, 0
        self.log, self.commands = Log(), 0
        self.env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p])
        if smoke:   # the CPU even where a GPU is visible; one thread per process on a small machine
            self.env.update(CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')


def ensure_data(ctx, deadline):
    """Steps 6 to 8 train on --data, or on the built-in labelled shapes made here once."""
    if ctx.data is None:
        ctx.data = make_shapes(ctx, deadline)


def make_shapes(ctx, deadline):
    dest = os.path.join(ctx.work, f'shapes-{ctx.profile["res"]}.zip')
    res = ctx.profile['res']
    count = 200 if ctx.smoke else 1000
    child = run_child(ctx, [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), '--source=builtin:shapes',
                            f'--dest={dest}', f'--resolution={res}x{res}', f'--max-images={count}'], min(120.0, deadline.left()))
    if child.rc != 0:
        raise RuntimeError(f'could not make the built-in dataset: {child.why()}')
    return dest


def run_suite(ctx, budget_s):
    budget = Deadline(budget_s - RESERVE_S)
    weights = ctx.profile['weights']
    steps = []
    for i, (key, title, fn) in enumerate(STEPS):
        share = weights[key] / sum(weights[k] for k, _, _ in STEPS[i:])
        cap = budget.left() * share
        t0 = time.monotonic()
        ctx.log.note(f'=== {title} (cap {cap:.0f} s) ===')
        try:
            r = fn(ctx, Deadline(cap)) if cap >= 1 else result('fail', 'no time left in the budget')
        except Exception as err:    # a bug in one step must not stop the others
            import traceback
            ctx.log.note(traceback.format_exc())
            r = result('fail', f'the suite itself failed: {type(err).__name__}: {err}')
        r.update(key=key, title=title, seconds=time.monotonic() - t0, cap_s=cap)
        steps.append(r)
        print(f'[gpu_suite] {title}: {status_text(r)[:200]} ({r["seconds"]:.1f} s of {cap:.0f} s)', flush=True)
    return steps


def check_out_dir(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise click.BadParameter(f'{out} is a file; give a folder (it is created if missing)', param_hint='--out')
    if os.path.isdir(out):
        extra = [f for f in os.listdir(out) if f not in REPORT_FILES]
        if extra:
            raise click.BadParameter(f'{out} holds other files ({", ".join(sorted(extra)[:3])}); give an empty or new '
                                     'folder (the report must stay within 8 files)', param_hint='--out')


@click.command()
@click.option('--out', 'out', required=True, metavar='DIR', help='Folder for gpu_report.json / .md, gpu_suite.log and the grids')
@click.option('--data', metavar='ZIP', type=click.Path(exists=True), default=None,
              help='Dataset for steps 6-8 (10% of CIFAR-10 from dataset_tool); default: the built-in shapes')
@click.option('--budget-s', 'budget_s', type=click.FloatRange(min=30), default=None,
              help='Seconds for the whole run [default: 360; --cpu-smoke: 300]')
@click.option('--cpu-smoke', 'smoke', is_flag=True, help='Every step on the CPU with the tiny preset and tiny budgets')
@click.option('--keep-work', is_flag=True, help='Keep the scratch folder (run directories) and print where it is')
def main(out, data, budget_s, smoke, keep_work):
    """Check the whole product on a CUDA machine (or, with --cpu-smoke, on the CPU) in one run."""
    check_out_dir(out)
    budget_s = budget_s or (300.0 if smoke else 360.0)
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
    t0 = time.monotonic()
    os.makedirs(out, exist_ok=True)
    for name in REPORT_FILES:   # a file left by an earlier run must not pass for this run's
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    work = tempfile.mkdtemp(prefix='gpu_suite-')
    ctx = Context(smoke, os.path.abspath(data) if data else None, os.path.abspath(out), work)
    try:
        steps = run_suite(ctx, budget_s)
    finally:
        if keep_work:
            print(f'[gpu_suite] scratch kept in {work}')
        else:
            shutil.rmtree(work, ignore_errors=True)
    ok = {'pass', 'skipped'} if smoke else {'pass'}
    report = dict(mode='cpu-smoke' if smoke else 'gpu', started=started, commit=git_commit(), budget_s=budget_s,
                  elapsed_s=time.monotonic() - t0, passed=all(s['status'] in ok for s in steps), steps=steps,
                  data=ctx.data, argv=sys.argv[1:])
    text = markdown(report)
    with open(os.path.join(out, 'gpu_report.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, 'gpu_report.md'), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(out, 'gpu_suite.log'), 'w', encoding='utf-8') as f:
        f.write(ctx.log.text())
    print(text, flush=True)
    sys.exit(0 if report['passed'] else 1)

#----------------------------------------------------------------------------
# Workers: `python bench/gpu_suite.py _worker KIND JSON` (the parent runs these in subprocesses).

def emit(obj):
    print(RESULT_TAG + json.dumps(obj, default=str), flush=True)


WORKERS = dict(env=worker_env, build=worker_build, ops=worker_ops, train=worker_train, dist=worker_dist)

if __name__ == '__main__':
    if len(sys.argv) >= 3 and sys.argv[1] == '_worker':
        sys.path.insert(0, ROOT)
        WORKERS[sys.argv[2]](json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    else:
        main()
