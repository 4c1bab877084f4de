"""Training speed of the real loop (train.py config -> training_loop) on a synthetic dataset.

Throughput: 1 + --warmup iterations, then --iters measured iterations timed as one block
(one device synchronisation at each end, none in between, so the host queues work ahead as
in a real run; there are no ticks inside the block). Prints sec/kimg, images/s and the peak
GPU memory of the whole run. Phase shares come from a second, shorter run that synchronises
around every phase (Gmain, Greg, Dmain, Dreg), which costs time of its own, so its
shares are reported but not its speed; --no-phases skips it.

    python bench/train_speed.py --runs=cifar:32,auto:64,paper256:256 --augs=noaug,ada,fixed0.3
    python bench/train_speed.py --runs=cifar:32 --augs=fixed0.3 --sync-free=off       # one lever off
    python bench/train_speed.py --runs=paper256:256 --train-args="--batch-gpu=32"     # any train.py option
    python bench/train_speed.py --runs=tiny:16 --augs=noaug,ada --iters=3 --warmup=1 --workers=0   # CPU smoke test
"""

import json
import os
import shlex
import sys
import tempfile
import time
import zipfile

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402  (after the path fix above)

PHASES = ['Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth']

# Every speed lever as the train.py arguments that switch it on (training/speed.py), one row
# each in --levers and in the GPU suite. 'default' is the run without extra arguments, the
# yardstick of the ratios. Keep the shape {name: [train.py args]}: other tools read it.
SPEED_LEVERS = {
    'default': [],
    'loop-adam': ['--optim-impl=loop'],          # the previous default on the CPU (foreach is bitwise the same)
    'fused-adam': ['--optim-impl=fused'],
    'channels-last': ['--channels-last=1'],
    'bf16': ['--bf16=1'],
    'compile': ['--compile=1'],
    'cuda-graphs': ['--cuda-graphs=1'],
    'one-round': ['--batch-gpu=all'],
    'cpu-threads-1': ['--cpu-threads=1'],
    'cpu-threads-auto': ['--cpu-threads=auto'],
    # Combinations: the fastest set measured on a CPU, and every GPU lever except compile.
    'cpu-fast': ['--cpu-threads=auto', '--channels-last=1', '--bf16=1'],
    'gpu-fast': ['--bf16=1', '--channels-last=1', '--optim-impl=fused', '--batch-gpu=all', '--cuda-graphs=1'],
}
GPU_ONLY_LEVERS = {'cuda-graphs', 'gpu-fast'}
CPU_ONLY_LEVERS = {'cpu-threads-1', 'cpu-threads-auto', 'cpu-fast'}

def make_synthetic_zip(path, resolution, num_images, seed=0):
    """Random RGB images as an uncompressed ZIP in the dataset layout (no labels)."""
    import io
    import PIL.Image
    rnd = np.random.RandomState(seed)
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as zf:
        for i in range(num_images):
            img = rnd.randint(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format='png', compress_level=0)
            zf.writestr(f'{i // 1000:05d}/img{i:08d}.png', buf.getvalue())
        zf.writestr('dataset.json', json.dumps({'labels': None}))
    return path

def aug_args(aug):
    """'noaug' | 'ada' | 'fixed0.3' -> train.py arguments."""
    if aug.startswith('fixed'):
        return ['--aug=fixed', f'--p={float(aug[5:] or 0.3)}']
    return [f'--aug={aug}']

class TickRecorder:
    """progress_fn for training_loop: after each tick (= one iteration here) records its wall
    time, kimg, peak GPU memory and the time of each phase that ran in it."""
    def __init__(self):
        from torch_utils import training_stats
        self.collector = training_stats.Collector(regex='Timing/.*|Progress/kimg|Resources/peak_gpu_mem_gb', keep_previous=False)
        self.ticks = []

    def __call__(self, cur_nimg, total_nimg):
        self.collector.update()
        if self.collector.num('Timing/sec_per_tick') == 0:
            return      # the call before the first iteration
        tick = dict(sec=self.collector.mean('Timing/sec_per_tick'), kimg=self.collector.mean('Progress/kimg'),
                    peak_gpu_mem_gb=self.collector.mean('Resources/peak_gpu_mem_gb'), phases={})
        for name in PHASES:
            num = self.collector.num(f'Timing/{name}')
            if num > 0:
                tick['phases'][name] = num * self.collector.mean(f'Timing/{name}')
        self.ticks.append(tick)

def summarize(ticks, warmup):
    """Per-iteration records -> timing summary over the iterations after warm-up."""
    measured = ticks[warmup:]
    if not measured:
        raise click.ClickException('no iterations left after warm-up; raise --iters')
    sec = sum(t['sec'] for t in measured)
    kimg = measured[-1]['kimg'] - ticks[warmup - 1]['kimg'] if warmup > 0 else measured[-1]['kimg']
    phase_sec = {}
    for t in measured:
        for name, value in t['phases'].items():
            phase_sec[name] = phase_sec.get(name, 0.0) + value
    return dict(iterations=len(measured), sec_per_kimg=sec / kimg, images_per_sec=kimg * 1000 / sec,
                peak_gpu_mem_gb=max(t['peak_gpu_mem_gb'] for t in measured),
                phase_share={k: v / sec for k, v in phase_sec.items()},
                phase_sec_per_iter={k: v / len(measured) for k, v in phase_sec.items()})

def build_config(cfg, res, aug, batch, workers, workdir, train_args, iterations):
    data = os.path.join(workdir, f'synthetic-{res}.zip')
    if not os.path.exists(data):
        make_synthetic_zip(data, res, num_images=256)
    args = [f'--outdir={os.path.join(workdir, "runs")}', f'--data={data}', f'--cfg={cfg}', '--metrics=none',
            f'--workers={workers}', '--dry-run', *aug_args(aug), *train_args]
    if batch is not None:
        args.append(f'--batch={batch}')
    c = train.build_cli().main(args, standalone_mode=False)
    c.total_kimg = iterations * c.batch_size / 1000
    c.image_snapshot_ticks = c.network_snapshot_ticks = None
    return c

def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)

class BlockTimer:
    """iteration_fn for training_loop: wall time from the start of iteration `first` to the
    start of iteration `first + count`, with a device synchronisation only at those two points."""
    def __init__(self, first, count):
        import torch
        self.first, self.count = first, count
        self.device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
        self.start = self.sec = self.cpu_start = self.cpu_sec = None

    def __call__(self, batch_idx):
        if batch_idx == self.first:
            _sync(self.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        elif batch_idx == self.first + self.count:
            _sync(self.device)
            self.sec, self.cpu_sec = time.perf_counter() - self.start, time.process_time() - self.cpu_start

def peak_gpu_mem_gb():
    import torch
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0

def run_one(cfg, res, aug, iters, warmup, batch, workers, workdir, train_args, phases):
    """Time `iters` iterations after 1 + warmup (the first runs both regularisers; Greg then runs
    every 4th and Dreg every 16th iteration), then optionally measure the phase shares."""
    import gc
    import torch
    first = 1 + warmup
    gc.collect()
    c = build_config(cfg, res, aug, batch, workers, workdir, train_args, first + iters + 1)
    c.kimg_per_tick = 1e9                  # ticks only after the first and the last iteration
    train.make_run_dir(c)
    timer = BlockTimer(first, iters)
    c.iteration_fn = timer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    train.run_worker(0, c, None)
    out = dict(cfg=cfg, resolution=res, aug=aug, batch=c.batch_size, batch_gpu=c.batch_gpu, iterations=iters,
               sec_per_kimg=timer.sec / (iters * c.batch_size / 1000), cpu_sec_per_kimg=timer.cpu_sec / (iters * c.batch_size / 1000),
               images_per_sec=iters * c.batch_size / timer.sec, peak_gpu_mem_gb=peak_gpu_mem_gb(), peak_rss_gb=peak_rss_gb())
    if phases:
        c = build_config(cfg, res, aug, batch, workers, workdir, train_args, first + iters)
        c.kimg_per_tick = c.batch_size / 1000 * 0.999   # one tick per iteration
        c.sync_timing = True
        train.make_run_dir(c)
        recorder = TickRecorder()
        c.progress_fn = recorder
        train.run_worker(0, c, None)
        shares = summarize(recorder.ticks, first)
        out.update(phase_share=shares['phase_share'], phase_sec_per_iter=shares['phase_sec_per_iter'])
    return out

def run_isolated(argv):
    """This script with `argv` in a fresh process (its JSON rows): levers that set process
    state (threads, compile caches, the allocator) cannot leak into the next run, and the
    peak resident memory it reports is that run's own."""
    import subprocess
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f'run {" ".join(argv)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}')
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]

def peak_rss_gb():
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

def median(values):
    return float(np.median(values))

def compare_levers(spec, aug, levers, repeats, child_args):
    """Each lever in turn (A B C A B C ...), `repeats` rounds, each run in its own process.
    Returns one summary row per lever: medians, and the median per-round speed-up against
    the first lever (its time / this lever's time)."""
    runs = {name: [] for name in levers}
    for _ in range(repeats):
        for name in levers:
            args = child_args + [f'--runs={spec}', f'--augs={aug}', f'--levers={name}', '--repeats=1', '--json', '--no-isolate']
            runs[name] += run_isolated(args)
    first = runs[levers[0]]
    rows = []
    for name in levers:
        r = runs[name]
        rows.append(dict(r[0], lever=name, repeats=len(r),
            sec_per_kimg=median([x['sec_per_kimg'] for x in r]), cpu_sec_per_kimg=median([x['cpu_sec_per_kimg'] for x in r]),
            images_per_sec=median([x['images_per_sec'] for x in r]),
            speedup=median([a['sec_per_kimg'] / b['sec_per_kimg'] for a, b in zip(first, r)]),
            cpu_speedup=median([a['cpu_sec_per_kimg'] / b['cpu_sec_per_kimg'] for a, b in zip(first, r)]),
            peak_rss_gb=max(x['peak_rss_gb'] for x in r), peak_gpu_mem_gb=max(x['peak_gpu_mem_gb'] for x in r)))
    return rows

def print_row(r, as_json):
    if as_json:
        print(json.dumps(r), flush=True)
        return
    shares = ' '.join(f'{k} {v * 100:.0f}%' for k, v in r.get('phase_share', {}).items())
    lever = f"{r.get('lever', ''):>16s} " if 'lever' in r else ''
    extra = ''
    if 'speedup' in r:
        extra = f"x{r['speedup']:.2f} (cpu x{r['cpu_speedup']:.2f}, {r['repeats']} runs) rss {r['peak_rss_gb']:.2f} GiB "
    print(f"{lever}{r['cfg']:>9s} {r['resolution']:>4d}px {r['aug']:>9s} batch {r['batch']:>3d}/{r['batch_gpu']:<3d}: "
          f"{r['sec_per_kimg']:8.2f} sec/kimg (cpu {r['cpu_sec_per_kimg']:.2f}) {r['images_per_sec']:8.1f} img/s {extra}"
          f"peak {r['peak_gpu_mem_gb']:.2f} GiB | {shares}", flush=True)

@click.command()
@click.option('--runs', default='cifar:32,auto:64,paper256:256', show_default=True, help='Comma list of cfg:resolution')
@click.option('--augs', default='noaug,fixed0.3', show_default=True, help='Comma list of noaug / ada / fixedP (e.g. fixed0.3)')
@click.option('--levers', default='default', show_default=True, help=f'Comma list of SPEED_LEVERS names: {",".join(SPEED_LEVERS)}')
@click.option('--repeats', default=1, show_default=True, help='Rounds over the levers (A B A B ...); medians are reported')
@click.option('--isolate/--no-isolate', default=True, show_default=True, help='Each run in a fresh process (peak RSS per run)')
@click.option('--iters', default=20, show_default=True, help='Measured iterations per run')
@click.option('--warmup', default=5, show_default=True, help='Iterations dropped before measuring')
@click.option('--batch', type=int, default=None, help='Override the preset batch')
@click.option('--workers', default=3, show_default=True, help='DataLoader workers')
@click.option('--train-args', default='', help='Extra train.py options for every run, e.g. "--fp32=1 --batch-gpu=64"')
@click.option('--sync-free', type=click.Choice(['auto', 'on', 'off']), default='auto', show_default=True,
              help='AugmentPipe.sync_free: the geometric warp without host reads (auto = on for CUDA)')
@click.option('--phases/--no-phases', default=True, show_default=True, help='Also measure the phase shares (second run)')
@click.option('--json', 'as_json', is_flag=True, help='Print one JSON object per run instead of a table')
def main(runs, augs, levers, repeats, isolate, iters, warmup, batch, workers, train_args, sync_free, phases, as_json):
    """Benchmark the training loop."""
    levers = train.parse_comma_list(levers)
    unknown = [name for name in levers if name not in SPEED_LEVERS]
    if unknown or not levers:
        raise click.UsageError(f'--levers: unknown {", ".join(unknown) or "(none given)"}; choose from {", ".join(SPEED_LEVERS)}')
    if isolate:
        child_args = [f'--iters={iters}', f'--warmup={warmup}', f'--workers={workers}', f'--train-args={train_args}',
                      f'--sync-free={sync_free}', '--phases' if phases else '--no-phases'] + ([f'--batch={batch}'] if batch else [])
        results = []
        for spec in train.parse_comma_list(runs):
            for aug in train.parse_comma_list(augs):
                for r in compare_levers(spec, aug, levers, repeats, child_args):
                    print_row(r, as_json)
                    results.append(r)
        return results
    from training.augment import AugmentPipe
    AugmentPipe.sync_free = dict(auto=None, on=True, off=False)[sync_free]
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):
            for spec in train.parse_comma_list(runs):
                cfg, _, res = spec.partition(':')
                for aug in train.parse_comma_list(augs):
                    for name in levers:
                        import contextlib
                        import io
                        log = io.StringIO()
                        try:   # train.py's Logger takes over both streams: both are restored on leaving
                            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                                r = run_one(cfg, int(res or 32), aug, iters, warmup, batch, workers, workdir,
                                            shlex.split(train_args) + SPEED_LEVERS[name], phases)
                        except Exception as err:
                            raise click.ClickException(f'{spec} {aug} {name}: {type(err).__name__}: {err}\n'
                                                       f'{log.getvalue()[-2000:]}') from err
                        r['lever'] = name
                        results.append(r)
                        print_row(r, as_json)
    return results

if __name__ == '__main__':
    main()
