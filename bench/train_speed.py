"""Training speed of the real loop (train.py config -> training_loop) on a synthetic dataset.

Every iteration is one tick; a progress_fn records each iteration's wall time (without the
logging done between ticks) and its per-phase times (synchronised). The first iteration and
--warmup more are dropped. Prints sec/kimg, images/s, peak GPU memory and each phase's share
of the iteration time (the rest is data loading, latents, EMA and plugin hooks).

    python bench/train_speed.py --runs=cifar:32,auto:64,paper256:256 --augs=noaug,ada,fixed0.3
    python bench/train_speed.py --runs=tiny:16 --augs=noaug,ada --iters=3 --warmup=1 --workers=0   # CPU smoke test
"""

import json
import os
import sys
import tempfile
import zipfile

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402  (after the path fix above)

PHASES = ['Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth']

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

def run_one(cfg, res, aug, iters, warmup, batch, workers, workdir):
    """Train 1 + warmup + iters iterations and summarise the last iters. (The loop's first
    iteration runs both regularisers; Greg then runs every 4th and Dreg every 16th iteration.)"""
    data = os.path.join(workdir, f'synthetic-{res}.zip')
    if not os.path.exists(data):
        make_synthetic_zip(data, res, num_images=256)
    args = [f'--outdir={os.path.join(workdir, "runs")}', f'--data={data}', f'--cfg={cfg}', '--metrics=none',
            f'--workers={workers}', '--dry-run', *aug_args(aug)]
    if batch is not None:
        args.append(f'--batch={batch}')
    c = train.build_cli().main(args, standalone_mode=False)
    c.total_kimg = (1 + warmup + iters) * c.batch_size / 1000
    c.kimg_per_tick = c.batch_size / 1000 * 0.999   # one tick per iteration
    c.image_snapshot_ticks = c.network_snapshot_ticks = None
    c.sync_timing = True
    train.make_run_dir(c)
    recorder = TickRecorder()
    c.progress_fn = recorder
    train.run_worker(0, c, None)
    out = summarize(recorder.ticks, 1 + warmup)
    out.update(cfg=cfg, resolution=res, aug=aug, batch=c.batch_size, batch_gpu=c.batch_gpu)
    return out

@click.command()
@click.option('--runs', default='cifar:32,auto:64,paper256:256', show_default=True, help='Comma list of cfg:resolution')
@click.option('--augs', default='noaug,ada', show_default=True, help='Comma list of noaug / ada / fixedP (e.g. fixed0.3)')
@click.option('--iters', default=20, show_default=True, help='Measured iterations per run')
@click.option('--warmup', default=5, show_default=True, help='Iterations dropped before measuring')
@click.option('--batch', type=int, default=None, help='Override the preset batch')
@click.option('--workers', default=3, show_default=True, help='DataLoader workers')
@click.option('--json', 'as_json', is_flag=True, help='Print one JSON object per run instead of a table')
def main(runs, augs, iters, warmup, batch, workers, as_json):
    """Benchmark the training loop."""
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in train.parse_comma_list(runs):
            cfg, _, res = spec.partition(':')
            for aug in train.parse_comma_list(augs):
                import contextlib
                import io
                log = io.StringIO()
                with contextlib.redirect_stdout(log):
                    r = run_one(cfg, int(res or 32), aug, iters, warmup, batch, workers, workdir)
                results.append(r)
                if as_json:
                    print(json.dumps(r), flush=True)
                else:
                    shares = ' '.join(f'{k} {v * 100:.0f}%' for k, v in r['phase_share'].items())
                    print(f"{cfg:>9s} {r['resolution']:>4d}px {aug:>9s} batch {r['batch']:>3d}: "
                          f"{r['sec_per_kimg']:8.2f} sec/kimg {r['images_per_sec']:8.1f} img/s "
                          f"peak {r['peak_gpu_mem_gb']:.2f} GiB | {shares}", flush=True)
    return results

if __name__ == '__main__':
    main()
