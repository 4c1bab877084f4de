"""Training as a whole learns: train.py with the demo's options (scripts/demo.sh: the tiny
preset, conditional, on the embedded shapes) for a fixed number of kimg, and labelnet_rr (a
classifier trained on the shapes' labels) at the first and the last snapshot. Unit tests hold
each part to its reference; this one fails when the parts do not add up (images and labels out
of step, a batch swapped, a schedule that never fires).

BREAK_TRAINING=1 also runs the check on deliberately broken data (every real the same image;
labels shuffled against the images) and expects it to fail there: how the check was validated.
"""

import json
import os
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import dnnlib
import legacy
from metrics import metric_main

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIMG = 16            # fixed training length (not a time limit): ~95 CPU-seconds in all, classifier included
NUM_IMAGES = 3000
MIN_RR = 0.10        # share recognised at the end; 0 at the start and for an untrained G
MIN_ASKED_OF_RR = 0.30   # share of the recognised ones that show the asked class; chance is 1/6
OWN_OPTIONS = ('outdir', 'data', 'kimg', 'tick', 'snap', 'metrics', 'seed')   # set by train() below

def demo_options():
    """The train.py options of scripts/demo.sh (those not built from its shell variables), so
    that this test trains what the demo trains."""
    with open(os.path.join(ROOT, 'scripts', 'demo.sh')) as f:
        text = f.read()
    start = text.index('python train.py ')
    end = text.index('\n', start)
    while text[end - 1] == '\\':          # backslash-continued lines
        end = text.index('\n', end + 1)
    words = shlex.split(text[start:end].replace('\\\n', ' '), posix=False)[2:]
    return [w for w in words if w.startswith('--') and '$' not in w and w[2:].split('=')[0] not in OWN_OPTIONS]

def make_shapes(path):
    subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), '--source=builtin:shapes', f'--dest={path}',
                    f'--max-images={NUM_IMAGES}', '--resolution=16x16'], check=True, capture_output=True, cwd=ROOT)
    return str(path)

def train(data, outdir, kimg=KIMG, metricdata=None):
    """train.py as the demo runs it, shorter: snapshots (and labelnet_rr) at kimg 0 and at the end."""
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data}', *demo_options(),
           f'--kimg={kimg}', f'--tick={kimg}', '--snap=1', '--metrics=labelnet_rr', '--seed=0'] + (
           [f'--metricdata={metricdata}'] if metricdata else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = os.path.join(outdir, sorted(os.listdir(outdir))[-1])
    with open(os.path.join(run_dir, 'metric-labelnet_rr.jsonl')) as f:
        lines = [json.loads(line) for line in f]
    return run_dir, proc.stdout, lines

def check_learned(lines):
    """The assertions of this test on the metric lines of a run (first snapshot = untrained G_ema)."""
    first, last = lines[0]['results'], lines[-1]['results']
    assert first['labelnet_rr'] <= 0.02, first
    assert last['labelnet_rr'] >= MIN_RR, last
    # Conditioning learnt: images and labels in step (one repeated image or shuffled labels stay near 1/6).
    assert last['labelnet_rr_asked'] >= MIN_ASKED_OF_RR * last['labelnet_rr'], last

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('learns')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('DNNLIB_CACHE_DIR', str(root / 'cache'))
        yield dnnlib.EasyDict(root=root, data=make_shapes(root / 'shapes-16.zip'))

def test_demo_options_are_read():
    options = demo_options()
    assert {'--cfg=tiny', '--cond=1', '--workers=0'} <= set(options), options   # first and continued line
    assert not any(o.startswith(('--kimg', '--outdir', '--snap')) for o in options), options

def test_tiny_preset_learns_the_shapes(env):
    run_dir, stdout, lines = train(env.data, str(env.root / 'runs'))
    assert [line['snapshot_pkl'] for line in lines] == ['network-snapshot-000000.pkl', f'network-snapshot-{KIMG:06d}.pkl']
    assert all(line['results']['labelnet_acc'] >= 0.98 for line in lines)
    check_learned(lines)
    assert 'as the class asked for' in stdout   # the readable line the demo's user watches

    # An untrained G of the same architecture, another seed: recognised as rarely as the start.
    G = legacy.load_network(os.path.join(run_dir, lines[-1]['snapshot_pkl']))['G_ema']
    torch.manual_seed(1)
    fresh = type(G)(**G.init_kwargs)
    kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=env.data, use_labels=True)
    res = metric_main.calc_metric('labelnet_rr', G=fresh, dataset_kwargs=kwargs, device='cpu').results
    assert res.labelnet_rr <= 0.02 and lines[-1]['results']['labelnet_rr'] >= res.labelnet_rr + MIN_RR - 0.02

    # calc_metrics.py on the last snapshot reproduces the number the training loop wrote.
    snapshot = os.path.join(run_dir, lines[-1]['snapshot_pkl'])
    r = CliRunner().invoke(calc_metrics.calc_metrics, ['--network', snapshot, '--metrics', 'labelnet_rr', '--quiet'])
    assert r.exit_code == 0, r.output
    with open(os.path.join(run_dir, 'metric-labelnet_rr.jsonl')) as f:
        again = json.loads(f.read().splitlines()[-1])
    assert again['snapshot_pkl'] == lines[-1]['snapshot_pkl'] and again['results'] == lines[-1]['results']

#----------------------------------------------------------------------------
# Validation of the check above: broken data that no unit test sees must make it fail.

def rewrite_dataset(src, dst, images=None, labels=None):
    """Copy a dataset ZIP, optionally mapping every image's bytes and the dataset.json labels."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        meta = json.loads(zin.read('dataset.json'))
        names = [name for name, _ in meta['labels']]
        for name in zin.namelist():
            if name != 'dataset.json':
                zout.writestr(name, images(zin, name, names) if images else zin.read(name))
        if labels:
            meta['labels'] = labels(meta['labels'])
        zout.writestr('dataset.json', json.dumps(meta))
    return str(dst)

def same_image(zin, name, names):
    return zin.read(names[0])

def shuffled_labels(pairs):
    perm = np.random.RandomState(0).permutation(len(pairs))
    return [[name, pairs[j][1]] for (name, _), j in zip(pairs, perm)]

@pytest.mark.skipif(not os.environ.get('BREAK_TRAINING'), reason='validation of the check; set BREAK_TRAINING=1')
@pytest.mark.parametrize('breakage', ['same_image', 'shuffled_labels'])
def test_check_fails_on_broken_data(env, breakage):
    edit = dict(same_image=dict(images=same_image), shuffled_labels=dict(labels=shuffled_labels))[breakage]
    data = rewrite_dataset(env.data, env.root / f'{breakage}.zip', **edit)
    # Scored by the classifier of the intact shapes: the check judges the generator, not the labels.
    _, _, lines = train(data, str(env.root / f'runs-{breakage}'), metricdata=env.data)
    print(breakage, [line['results'] for line in lines])
    with pytest.raises(AssertionError):
        check_learned(lines)
