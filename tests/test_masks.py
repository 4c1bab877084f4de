"""plugins.masks.ParamMasks, the weight masks Re-GAN and the lottery share (True = kept): pruning
counts, what the masks zero, snapshot states, and snapshots of the code before the class (Re-GAN's
masks were True = pruned then) resumed through train.py."""

import gzip
import os
import pickle
import subprocess
import sys

import pytest
import torch

from helpers import load_pickle
from plugins import masks as masks_mod
from plugins.masks import ParamMasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_STATES = os.path.join(ROOT, 'tests', 'data', 'old_mask_states.pt.gz')

def _module(**tensors):
    module = torch.nn.Module()
    for name, value in tensors.items():
        module.register_parameter(name, torch.nn.Parameter(value.clone()))
    return module

def test_quantile_matches_torch():
    x = torch.randn(1000).abs()
    for q in [0.0, 0.1, 0.3, 0.77, 1.0]:
        assert float(masks_mod.linear_quantile(x, q)) == pytest.approx(float(torch.quantile(x, q)), rel=1e-6)

@pytest.mark.parametrize('n,s,expected', [(10, 0.3, 3), (100, 0.3, 30), (7, 0.5, 3), (1, 0.3, 0)])
def test_per_tensor_pruning_counts(n, s, expected):
    w = torch.randperm(n).float() + 1 - n / 2 + 0.5      # distinct magnitudes up to sign
    w = w[torch.randperm(n)] * torch.linspace(1, 1.01, n)
    masks = ParamMasks(_module(w=w), ['w'])
    masks.prune_per_tensor(s)
    assert masks.pruned_counts() == {'w': expected} and int((~masks['w']).sum()) == expected
    assert masks.any_pruned() == (expected > 0)
    # The pruned entries are the smallest magnitudes.
    order = w.abs().argsort()
    assert bool((~masks['w'][order[:expected]]).all()) and bool(masks['w'][order[expected:]].all())

def test_apply_zeroes_only_pruned_weights_and_grads():
    w = torch.tensor([[0.1, -2.0, 0.3], [4.0, -0.05, 6.0]])
    module, other = _module(w=w, b=torch.ones(2)), _module(w=w + 10, b=torch.ones(2))
    masks = ParamMasks(module, ['w'])
    masks.prune_per_tensor(0.5)             # |w| < 1.15 (the median of |w|): 0.1, 0.3, -0.05
    kept = torch.tensor([[False, True, False], [True, False, True]])
    assert torch.equal(masks['w'], kept) and list(masks) == ['w'] and len(masks) == 1
    module.w.grad = torch.full_like(w, 7.0)
    masks.apply_to_grads()
    masks.apply_to_weights()
    masks.apply_to_weights(other)           # another network of the same names (G_ema)
    assert torch.equal(module.w.detach(), torch.where(kept, w, torch.zeros([])))
    assert torch.equal(module.w.grad, torch.where(kept, 7.0, 0.0))
    assert torch.equal(other.w.detach(), torch.where(kept, w + 10, torch.zeros([])))
    assert torch.equal(module.b.detach(), torch.ones(2)) and module.b.grad is None
    assert masks.density() == (0.5, {'w': 0.5})

def test_global_pruning_removes_the_smallest_survivors_across_tensors():
    a, b = torch.tensor([5.0, -1.0, 3.0, 0.5]), torch.tensor([[-4.0, 2.0], [0.25, 6.0]])
    masks = ParamMasks(_module(a=a, b=b), ['a', 'b'])
    masks.prune_global(0.25)                # round(0.25 * 8) = 2: 0.25 (b) and 0.5 (a)
    assert torch.equal(masks['a'], torch.tensor([True, True, True, False]))
    assert torch.equal(masks['b'], torch.tensor([[True, True], [False, True]]))
    masks.prune_global(0.5)                 # round(0.5 * 6) = 3 of the survivors: 1, 2, 3
    assert torch.equal(masks['a'], torch.tensor([True, False, False, False]))
    assert torch.equal(masks['b'], torch.tensor([[True, False], [False, True]]))
    assert masks.density()[0] == 3 / 8 and masks.pruned_counts() == {'a': 3, 'b': 2}

def test_state_roundtrip_and_the_formats_before_it():
    w = torch.arange(1.0, 7.0).view(2, 3)
    masks = ParamMasks(_module(w=w, v=torch.ones(4)), ['w', 'v'])
    masks.prune_per_tensor(0.5)
    state = masks.state_dict()
    assert state['format'] == masks_mod.STATE_FORMAT and set(state['kept']) == {'w', 'v'}
    fresh = ParamMasks(_module(w=w, v=torch.ones(4)), ['w', 'v'])
    assert not fresh.any_pruned()
    fresh.load_state_dict(state, old_polarity='pruned')     # a new state: the polarity is not used
    assert all(torch.equal(fresh[n], masks[n]) for n in masks) and fresh.any_pruned()
    # The older bare {name: mask}: Re-GAN's True = pruned is flipped, the lottery's True = kept is not.
    pruned = {'w': torch.tensor([[True, False, True], [False, False, False]])}
    for polarity, expected in [('pruned', ~pruned['w']), ('kept', pruned['w'])]:
        old = ParamMasks(_module(w=w, v=torch.ones(4)), ['w', 'v'])
        old.load_state_dict(pruned, old_polarity=polarity)
        assert torch.equal(old['w'], expected) and bool(old['v'].all())
    # Names not covered or of another shape are skipped (resume stays lenient, as before).
    old.load_state_dict({'w': torch.zeros(3, 2, dtype=torch.bool), 'x': torch.zeros(2, dtype=torch.bool)}, old_polarity='kept')
    assert torch.equal(old['w'], pruned['w']) and set(old) == {'w', 'v'}
    with pytest.raises(ValueError, match='newer than this code'):
        old.load_state_dict(dict(format=masks_mod.STATE_FORMAT + 1, kept={}), old_polarity='kept')

#----------------------------------------------------------------------------
# Snapshots of the code before the shared class, resumed by today's train.py.

# The options of the runs the fixture's states come from (tests/data/make_old_mask_states.py),
# their length in kimg, and the length of the resumed run (two more iterations of batch 8:
# Re-GAN's dense phase, the lottery ticket's training, neither of which changes the masks).
OLD_RUNS = {
    'regan': (['--method=regan', '--regan-warmup=1', '--regan-g=2', r'--regan-include=^mapping\.'], 0.024, 0.040),
    'lottery': (['--method=lottery', '--imp-rounds=1', '--imp-kimg=0.008'], 0.016, 0.032),
}

def _old_states():
    with gzip.open(OLD_STATES, 'rb') as f:
        return torch.load(f, weights_only=True)['states']

def _train(outdir, data, *args):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
           '--metrics=none', '--workers=0', '--cpu-threads=1', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = os.listdir(outdir)
    return os.path.join(outdir, run), proc.stdout

@pytest.fixture(scope='module')
def shapes16(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'shapes16.zip'
    subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), '--source=builtin:shapes', f'--dest={path}',
                    '--max-images=12', '--resolution=16x16'], cwd=ROOT, check=True, capture_output=True)
    return str(path)

@pytest.mark.slow
@pytest.mark.parametrize('method', list(OLD_RUNS))
def test_old_snapshot_masks_resume_converted(tmp_path, shapes16, method):
    """A snapshot whose plugin state is the old code's (no format key; Re-GAN True = pruned):
    train.py --resume loads it, converts the masks and trains on with the same pruned positions.

    The old state is put into a snapshot of today's code at the same point of the same run (a
    whole snapshot of the old code is ~6 MB; the plugin state is all that changed)."""
    args, kimg, resume_kimg = OLD_RUNS[method]
    old = _old_states()[method]
    assert 'format' not in old['masks']
    old_kept = {n: ~m if method == 'regan' else m for n, m in old['masks'].items()}
    base_dir, _ = _train(tmp_path / 'base', shapes16, *args, f'--kimg={kimg}')
    snap = load_pickle(os.path.join(base_dir, 'network-snapshot-000000.pkl'))
    snap['resume_state']['plugins'][method] = old
    old_pkl = tmp_path / 'old-snapshot.pkl'
    with open(old_pkl, 'wb') as f:
        pickle.dump(snap, f)

    run_dir, out = _train(tmp_path / 'resumed', shapes16, *args, f'--kimg={resume_kimg}', f'--resume={old_pkl}')
    assert f'Resume: continuing at kimg {kimg}' in out
    assert {'network-snapshot-000000.pkl', 'stats.jsonl', 'log.txt'} <= set(os.listdir(run_dir))
    final = load_pickle(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    assert final['resume_state']['batch_idx'] == round(resume_kimg * 1000 / 8)
    state = final['resume_state']['plugins'][method]
    kept = state['masks']['kept']
    assert state['masks']['format'] == masks_mod.STATE_FORMAT and set(kept) == set(old_kept)
    assert all(torch.equal(kept[n], old_kept[n]) for n in kept)
    pruned = sum(int((~m).sum()) for m in kept.values())
    total = sum(m.numel() for m in kept.values())
    if method == 'regan':
        # Old Re-GAN: 30% of each mapping tensor pruned (True = pruned); now dense, regrowing.
        assert pruned == sum(int(m.sum()) for m in old['masks'].values()) > 0.25 * total
        assert state['mode'] == 'dense'
    else:
        # One IMP round: 80% kept; the ticket's pruned weights are still zero in G and G_ema.
        assert 1 - pruned / total == pytest.approx(0.8, abs=1e-3) and state['round'] == 1
        for net in ('G', 'G_ema'):
            params = dict(final[net].named_parameters())
            assert all(bool((params[n][~m] == 0).all()) for n, m in kept.items())
