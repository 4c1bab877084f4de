"""Writes tests/data/old_mask_states.pt.gz (test_masks.py): the Re-GAN and lottery plugin states
of two snapshots written by the code before the shared mask class (commit ccefc1e), when Re-GAN
saved {name: True = pruned} and the lottery {name: True = kept}, with no format key.

A whole tiny snapshot is ~6 MB, so only the plugin states are kept; the test puts them into a
fresh snapshot of the same networks. Made with, in a checkout of ccefc1e:

    python dataset_tool.py --source=builtin:shapes --dest=shapes16.zip --max-images=12 --resolution=16x16
    python train.py --outdir=old-regan --data=shapes16.zip --cfg=tiny --method=regan --regan-warmup=1 \\
        --regan-g=2 --regan-include='^mapping\\.' --kimg=0.024 --metrics=none --cpu-threads=1 --workers=0
    python train.py --outdir=old-lottery --data=shapes16.zip --cfg=tiny --method=lottery --imp-rounds=1 \\
        --imp-kimg=0.008 --kimg=0.016 --metrics=none --cpu-threads=1 --workers=0
    python tests/data/make_old_mask_states.py old-regan/*/network-snapshot-000000.pkl \\
        old-lottery/*/network-snapshot-000000.pkl tests/data/old_mask_states.pt.gz

(--regan-include keeps the Re-GAN masks to the mapping network: a few KB instead of 30.)
"""
import gzip
import pickle
import sys

import torch

sys.path.insert(0, '.')      # run from the checkout's root: unpickling imports its torch_utils

def plugin_state(snapshot_path, name):
    with open(snapshot_path, 'rb') as f:
        return pickle.load(f)['resume_state']['plugins'][name]

if __name__ == '__main__':
    regan_pkl, lottery_pkl, out = sys.argv[1:4]
    states = dict(regan=plugin_state(regan_pkl, 'regan'), lottery=plugin_state(lottery_pkl, 'lottery'))
    with gzip.open(out, 'wb', compresslevel=9) as f:
        torch.save(dict(commit='ccefc1e', states=states), f)
