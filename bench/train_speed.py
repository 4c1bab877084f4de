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
}
GPU_ONLY_LEVERS = {'cuda-graphs'}
CPU_ONLY_LEVERS = {'cpu-threads-1', 'cpu-threads-auto'}

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
        self.start = self.sec = None

    def __call__(self, batch_idx):
        if batch_idx == self.first:
            _sync(self.device)
            self.start = time.perf_counter()
        elif batch_idx == self.first + self.count:
            _sync(self.device)
            self.sec = time.perf_counter() - self.start

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
               sec_per_kimg=timer.sec / (iters * c.batch_size / 1000),
               images_per_sec=iters * c.batch_size / timer.sec, peak_gpu_mem_gb=peak_gpu_mem_gb())
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

@click.command()
@click.option('--runs', default='cifar:32,auto:64,paper256:256', show_default=True, help='Comma list of cfg:resolution')
@click.option('--augs', default='noaug,fixed0.3', show_default=True, help='Comma list of noaug / ada / fixedP (e.g. fixed0.3)')
@click.option('--iters', default=20, show_default=True, help='Measured iterations per run')
@click.option('--warmup', default=5, show_default=True, help='Iterations dropped before measuring')
@click.option('--batch', type=int, default=None, help='Override the preset batch')
@click.option('--workers', default=3, show_default=True, help='DataLoader workers')
@click.option('--train-args', default='', help='Extra train.py options for every run, e.g. "--fp32=1 --batch-gpu=64"')
@click.option('--sync-free', type=click.Choice(['auto', 'on', 'off']), default='auto', show_default=True,
              help='AugmentPipe.sync_free: the geometric warp without host reads (auto = on for CUDA)')
@click.option('--phases/--no-phases', default=True, show_default=True, help='Also measure the phase shares (second run)')
@click.option('--json', 'as_json', is_flag=True, help='Print one JSON object per run instead of a table')
def main(runs, augs, iters, warmup, batch, workers, train_args, sync_free, phases, as_json):
    """Benchmark the training loop."""
    from training.augment import AugmentPipe
    AugmentPipe.sync_free = dict(auto=None, on=True, off=False)[sync_free]
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in train.parse_comma_list(runs):
            cfg, _, res = spec.partition(':')
            for aug in train.parse_comma_list(augs):
                import contextlib
                import io
                log = io.StringIO()
                with contextlib.redirect_stdout(log):
                    r = run_one(cfg, int(res or 32), aug, iters, warmup, batch, workers, workdir, shlex.split(train_args), phases)
                results.append(r)
                if as_json:
                    print(json.dumps(r), flush=True)
                else:
                    shares = ' '.join(f'{k} {v * 100:.0f}%' for k, v in r.get('phase_share', {}).items())
                    print(f"{cfg:>9s} {r['resolution']:>4d}px {aug:>9s} batch {r['batch']:>3d}/{r['batch_gpu']:<3d}: "
                          f"{r['sec_per_kimg']:8.2f} sec/kimg {r['images_per_sec']:8.1f} img/s "
                          f"peak {r['peak_gpu_mem_gb']:.2f} GiB | {shares}", flush=True)
    return results

if __name__ == '__main__':
    main()
