"""What rank 0 logs once per tick: stats.jsonl, TensorBoard scalars and fakes grids, curves.png
redrawn at every snapshot, and Weights & Biases (only when a project is given; imported then).

New (or rewritten) fakes*.png and network-snapshot-*.pkl files are picked up from the run
directory at each tick's write, so the training loop only constructs this object and calls write() and close().
"""

import glob
import json
import os
import time

import numpy as np
import PIL.Image

from training import curves

class StatsWriter:
    def __init__(self, run_dir, start_time, log, wandb_project=None, options=None):
        self.run_dir = run_dir
        self.start_time = start_time
        self.log = log
        self.jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
        self.seen = self._outputs()   # a resumed run's earlier files are not new
        self.tfevents = None
        try:
            import torch.utils.tensorboard as tensorboard
            self.tfevents = tensorboard.SummaryWriter(run_dir)
        except ImportError as err:
            log(f'Skipping tfevents export: {err}')
        self.wandb = start_wandb(wandb_project, run_dir, options) if wandb_project else None

    def _outputs(self):
        """{(path, mtime)} of the grids and snapshots in the run directory."""
        found = set()
        for path in glob.glob(os.path.join(self.run_dir, 'fakes*.png')) + glob.glob(os.path.join(self.run_dir, 'network-snapshot-*.pkl')):
            try:
                found.add((path, os.stat(path).st_mtime_ns))
            except FileNotFoundError:   # pruned (--snapshot-keep) since the listing
                pass
        return found

    def write(self, stats_dict, metrics_dict, cur_nimg):
        timestamp = time.time()
        self.jsonl.write(json.dumps(dict(stats_dict, timestamp=timestamp)) + '\n')
        self.jsonl.flush()
        kimg = cur_nimg / 1e3
        scalars = {name: value.mean for name, value in stats_dict.items()}
        scalars.update({f'Metrics/{name}': value for name, value in metrics_dict.items()})
        outputs = self._outputs()
        new = sorted(path for path, _mtime in outputs - self.seen)
        self.seen = outputs
        grids = [path for path in new if path.endswith('.png')]
        curves_png = curves.save_curves(self.run_dir) if any(path.endswith('.pkl') for path in new) else None
        if self.tfevents is not None:
            step, walltime = int(kimg), timestamp - self.start_time
            for name, value in scalars.items():
                self.tfevents.add_scalar(name, value, global_step=step, walltime=walltime)
            for path in grids:
                self.tfevents.add_image('fakes', np.array(PIL.Image.open(path).convert('RGB')), global_step=step,
                                        walltime=walltime, dataformats='HWC')
            self.tfevents.flush()
        if self.wandb is not None:
            import wandb
            images = {'fakes': wandb.Image(path) for path in grids[-1:]}
            if curves_png is not None:
                images['curves'] = wandb.Image(curves_png)
            self.wandb.log(dict(scalars, kimg=kimg, **images))

    def close(self):
        self.jsonl.close()
        if self.tfevents is not None:
            self.tfevents.close()
        if self.wandb is not None:
            self.wandb.finish()

def start_wandb(project, run_dir, options):
    """A W&B run named after the run directory, holding the training options as its config.
    WANDB_MODE=offline (or `wandb offline`) keeps it on disk under <run_dir>/wandb."""
    import wandb
    config = json.loads(json.dumps(options or {}, default=str))
    return wandb.init(project=project, name=os.path.basename(os.path.normpath(run_dir)), dir=run_dir, config=config)
