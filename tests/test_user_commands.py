"""The commands users bring, run as they type them: those of stylegan2-ada-pytorch's README
(../shared/docs/upstream-commands.md), of the APA and UTLO READMEs (../shared/seeds/003, 004)
and of our README, each in a subprocess through bash.

A command is adapted only where it must be: paths (home is a scratch folder, so `~/...`
works as typed), sizes (16x16 images, a few iterations of --cfg=tiny, metric counts of 64
instead of 50k, fewer seeds), GPU counts (1), and URLs (the pretrained networks and the
Inception detector are served by a real HTTP server on 127.0.0.1). Each `Cmd` keeps the
original beside the adapted line, and test_documented_commands_are_the_ones_run checks
that every original is still printed in its document. The Inception and VGG16 detectors
behind the default URLs sit in the download cache (~/.cache/dnnlib), as a user without
network access puts them; one training run fetches its detector over HTTP instead.

Projector, style mixing, --wandb and --desc commands are tested with their own issue (17).
"""

import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
import train
from helpers import write_cifar_tarball
from local_http import LocalServer
from metrics import detectors

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['train.py', 'generate.py', 'calc_metrics.py', 'dataset_tool.py', 'legacy.py', 'lt_dataset.py']
RES = 16
UTLO_CLASSES, UTLO_PER_CLASS = 20, 25   # --dname animals expects 20 classes

class Cmd:
    """A documented command line (`original`, in document `doc`) and the line this test runs."""
    def __init__(self, doc, original, adapted=None):
        self.doc, self.original, self.adapted = doc, original, adapted if adapted is not None else original

UP, APA, UTLO, OURS = 'docs/upstream-commands.md', 'seeds/003_940fb216fb67b134.txt', 'seeds/004_7c205dc3779e6352.txt', 'README.md'

# Upstream: generating. `https://.../X.pkl` is served locally as {url}/X.pkl.
GEN_METFACES_1 = Cmd(UP, 'python generate.py --outdir=out --trunc=1 --seeds=85,265,297,849 --network=https://.../metfaces.pkl',
                     'python generate.py --outdir=out --trunc=1 --seeds=85,265,297,849 --network={url}/metfaces.pkl')
GEN_METFACES_2 = Cmd(UP, 'python generate.py --outdir=out --trunc=0.7 --seeds=600-605 --network=https://.../metfaces.pkl',
                     'python generate.py --outdir=out --trunc=0.7 --seeds=600-605 --network={url}/metfaces.pkl')
GEN_CIFAR = Cmd(UP, 'python generate.py --outdir=out --seeds=0-35 --class=1 --network=https://.../cifar10.pkl',
                'python generate.py --outdir=out --seeds=0-35 --class=1 --network={url}/cifar10.pkl')
LEGACY_TF = Cmd(UP, 'python legacy.py --source=https://.../stylegan2-cat-config-f.pkl --dest=stylegan2-cat-config-f.pkl',
                'python legacy.py --source={url}/stylegan2-cat-config-f.pkl --dest=stylegan2-cat-config-f.pkl')
# Upstream: datasets (the sources hold 16x16 images; 256 -> 8 where the command resizes).
DATASET_CMDS = [
    Cmd(UP, 'python dataset_tool.py --source=~/ffhq-unpacked --dest=~/datasets/ffhq.zip'),
    Cmd(UP, 'python dataset_tool.py --source=~/ffhq-unpacked --dest=~/datasets/ffhq256x256.zip --width=256 --height=256 --resize-filter=box',
        'python dataset_tool.py --source=~/ffhq-unpacked --dest=~/datasets/ffhq256x256.zip --width=8 --height=8 --resize-filter=box'),
    Cmd(UP, 'python dataset_tool.py --source=~/downloads/metfaces/images --dest=~/datasets/metfaces.zip'),
    Cmd(UP, 'python dataset_tool.py --source=~/downloads/afhq/train/cat --dest=~/datasets/afhqcat.zip'),
    Cmd(UP, 'python dataset_tool.py --source=~/downloads/cifar-10-python.tar.gz --dest=~/datasets/cifar10.zip'),
]
LMDB_CMDS = [
    Cmd(UP, 'python dataset_tool.py --source=~/downloads/lsun/raw/cat_lmdb --dest=~/datasets/lsuncat200k.zip --transform=center-crop --width=256 --height=256 --max_images=200000'),
    Cmd(UP, 'python dataset_tool.py --source=~/downloads/lsun/raw/car_lmdb --dest=~/datasets/lsuncar200k.zip --transform=center-crop-wide --width=512 --height=384 --max_images=200000'),
]
# Upstream: training. Runs that train add the tiny preset, a short duration and small metrics.
TINY = '--cfg=tiny --kimg=0.1'
TRAIN_DRY = Cmd(UP, 'python train.py --outdir=~/training-runs --data=~/mydataset.zip --gpus=1 --dry-run')
TRAIN = Cmd(UP, 'python train.py --outdir=~/training-runs --data=~/mydataset.zip --gpus=1',
            f'python train.py --outdir=~/training-runs --data=~/mydataset.zip --gpus=1 {TINY} --metrics=fid64_full '
            '--detector={url}/metrics/inception-2015-12-05.pt')
TRAIN_OPTION_SETS = [   # "with any of": several at once, with -n; --cond=1 needs a labelled set
    ('-n --aug=noaug --cond=1 --mirror=1 --gamma=10 --metrics=none', '~/datasets/cifar10.zip'),
    ('-n --aug=ada --target=0.7 --augpipe=blit', '~/mydataset.zip'),
    ('-n --augpipe=bgcfnc --resume=ffhq1024 --snap=10', '~/mydataset.zip'),
]
TRAIN_RESUME = Cmd(UP, '--resume=~/training-runs/<NAME>/network-snapshot-<INT>.pkl')
# Upstream: metrics (--num-gen=64 is the size adaptation: the result is named pr643_full / fid64_full).
METRICS_PR = Cmd(UP, 'python calc_metrics.py --metrics=pr50k3_full --network=~/training-runs/00000-ffhq10k-res64-auto1/network-snapshot-000000.pkl',
                 'python calc_metrics.py --metrics=pr50k3_full --network={snapshot} --num-gen=64')
METRICS_FID_URL = Cmd(UP, 'python calc_metrics.py --metrics=fid50k_full --data=~/datasets/ffhq.zip --mirror=1 --network=https://.../ffhq.pkl',
                      'python calc_metrics.py --metrics=fid50k_full --data=~/datasets/ffhq.zip --mirror=1 --network={url}/ffhq.pkl --num-gen=64')

# APA (seed 003).
APA_GEN = [
    Cmd(APA, 'python generate.py --outdir=out --trunc=0.7 --seeds=1000-1199 --network=/path/to/checkpoint/pkl',
        'python generate.py --outdir=apa-out --trunc=0.7 --seeds=1000-1007 --network={snapshot}'),
    Cmd(APA, 'python generate.py --outdir=out --trunc=1 --seeds=1000-1199 --network=/path/to/checkpoint/pkl',
        'python generate.py --outdir=apa-out1 --trunc=1 --seeds=1000-1007 --network={snapshot}'),
]
APA_DATASET = Cmd(APA, 'python dataset_tool.py --source=/path/to/image/folder --dest=/path/to/archive.zip --width=256 --height=256 --max-images=5000',
                  'python dataset_tool.py --source=~/ffhq-unpacked --dest=~/archive.zip --width=8 --height=8 --max-images=5000')
APA_TRAIN = Cmd(APA, 'python train.py --outdir=./experiments --gpus=8 --data=/path/to/mydataset.zip --metricdata=/path/to/mydatasetfull.zip --mirror=1 --cfg=auto --aug=apa --with-dataaug=true',
                'python train.py --outdir=./experiments --gpus=1 --data=~/mydataset.zip --metricdata=~/datasets/ffhq.zip --mirror=1 --cfg=auto --aug=apa --with-dataaug=true -n')
APA_METRICS = Cmd(APA, 'python calc_metrics.py --network=/path/to/checkpoint/pkl --gpus=8 --metrics=fid50k_full,is50k --metricdata=/path/to/mydatasetfull.zip --mirror=1',
                  'python calc_metrics.py --network={snapshot} --gpus=1 --metrics=fid50k_full,is50k --metricdata=~/datasets/ffhq.zip --mirror=1 --num-gen=64')

# UTLO (seed 004). Its calc_metrics lines are upstream's (above). --wandb_proj and --description are issue 17's.
UTLO_DATASET = Cmd(UTLO, 'python dataset_tool.py --source=Image/ --dest=datasets/af --transform=center-crop --width=64 --height=64',
                   'python dataset_tool.py --source=Image/ --dest=datasets/af --transform=center-crop --width=16 --height=16')
UTLO_LT = Cmd(UTLO, 'python lt_dataset.py --fn datasets/af/dataset.json --imf 25 --shot-labels --dname animals')
UTLO_TRAIN_AS_TYPED = ('python -W ignore train.py --outdir=training_runs_af --data=./datasets/af/ --fname=lt_25.json --snap=500 '
                       '--mirror=True --seed=69 --gpus=1 --batch=64 --metrics=fid_shots,kid_shots,fid50k_full,kid50k_full '
                       '--cond=True --add_uc=True --res_uc=8 --alpha=1.0')
UTLO_TRAIN = Cmd(UTLO, 'python -W ignore  train.py --outdir=training_runs_af --data=./datasets/af/ --fname=lt_25.json --snap=500 '
                       '--mirror=True --seed=69 --gpus=4 --batch=64 --wandb_proj=utlo_af '
                       '--metrics=fid_shots,kid_shots,fid50k_full,kid50k_full --description="example-run-af" '
                       '--cond=True --add_uc=True --res_uc=8 --alpha=1.0',
                 UTLO_TRAIN_AS_TYPED.replace('fid_shots,kid_shots,fid50k_full,kid50k_full', 'fid64_shots,kid64_shots,fid64_full,kid64_full')
                 + f' --method=utlo {TINY}')

# Ours (README.md); the README's short commands also run in tests/test_readme.py.
OURS_FOLDER_METRICS = Cmd(OURS, 'python calc_metrics.py --images=generated/ --data=data/c10.zip --metrics=fid10k_full',
                          'python calc_metrics.py --images=out/ --data=~/datasets/cifar10.zip --metrics=fid10k_full')
OURS_UTLO = Cmd(OURS, 'python train.py --outdir=runs --data=data/c10.zip --labels=lt_100.json --cond=1 --method=utlo --res-uc=8 --alpha=1 --mirror=1 --metric-labels=lt_100_full.json --metrics=fid_shots,kid_shots,fid10k_full',
                'python train.py --outdir=runs --data=datasets/af --labels=lt_25.json --cond=1 --method=utlo --res-uc=8 --alpha=1 --mirror=1 --metric-labels=lt_25_full.json --metrics=fid_shots,kid_shots,fid10k_full -n')

OURS_RECIPES = [   # dry runs on the CIFAR-like set (200 images): --subset 5000 -> 100, paths adapted
    Cmd(OURS, 'python train.py --outdir=runs --data=data/c10.zip --subset=5000 --cfg=cifar --cond=1 --aug=ada --diffaug-policy=color,translation,cutout --metricdata=data/c10.zip --metrics=fid10k_full',
        'python train.py --outdir=runs --data=~/datasets/cifar10.zip --subset=100 --cfg=cifar --cond=1 --aug=ada --diffaug-policy=color,translation,cutout --metricdata=~/datasets/cifar10.zip --metrics=fid10k_full -n'),
    Cmd(OURS, 'python train.py --outdir=runs --data=data/c10.zip --subset=5000 --cfg=cifar --aug=apa --with-dataaug=1 --method=regan --regan-sparsity=0.3 --regan-g=5000 --regan-warmup=10000',
        'python train.py --outdir=runs --data=~/datasets/cifar10.zip --subset=100 --cfg=cifar --aug=apa --with-dataaug=1 --method=regan --regan-sparsity=0.3 --regan-g=5000 --regan-warmup=10000 -n'),
    Cmd(OURS, 'python train.py --outdir=runs --data=data/c10.zip --subset=5000 --cfg=cifar --aug=diffaug --method=lottery --imp-rounds=3 --imp-kimg=200 --advaug-gamma=0.01',
        'python train.py --outdir=runs --data=~/datasets/cifar10.zip --subset=100 --cfg=cifar --aug=diffaug --method=lottery --imp-rounds=3 --imp-kimg=200 --advaug-gamma=0.01 -n'),
]

ALL_CMDS = [*OURS_RECIPES, GEN_METFACES_1, GEN_METFACES_2, GEN_CIFAR, LEGACY_TF, *DATASET_CMDS, *LMDB_CMDS, TRAIN_DRY, TRAIN, TRAIN_RESUME,
            METRICS_PR, METRICS_FID_URL, *APA_GEN, APA_DATASET, APA_TRAIN, APA_METRICS, UTLO_DATASET, UTLO_LT, UTLO_TRAIN,
            OURS_FOLDER_METRICS, OURS_UTLO]

#----------------------------------------------------------------------------
# The scratch home: image folders, a CIFAR archive, cached detectors, served networks.

def _doc_text(rel):
    """A document's text with shell continuation lines joined and runs of spaces collapsed."""
    for base in (os.path.join(ROOT, '..', 'shared'), '/work/shared', ROOT):
        path = os.path.join(ROOT if rel == OURS else base, rel)
        if os.path.isfile(path):
            return re.sub(r'[ \t]+', ' ', open(path, encoding='utf-8').read().replace('\\\n', ' '))
    return None

def _save_images(folder, count, size, seed, value=None):
    os.makedirs(folder, exist_ok=True)
    rnd = np.random.RandomState(seed)
    for i in range(count):
        img = rnd.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        if value is not None:
            img[: size[1] // 2] = value   # a class-dependent band, so classes differ
        PIL.Image.fromarray(img).save(os.path.join(folder, f'img{i:04d}.png'))


def _network_pickle(c_dim, seed):
    """An upstream-style network pickle (G, D, G_ema; no training state) at 16x16."""
    from training import networks
    torch.manual_seed(seed)
    kw = dict(img_resolution=RES, img_channels=3)
    G = networks.Generator(z_dim=16, w_dim=16, c_dim=c_dim, mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=16), **kw)
    D = networks.Discriminator(c_dim=c_dim, channel_base=256, channel_max=16, **kw)
    return pickle.dumps(dict(G=G.eval(), D=D.eval(), G_ema=G.eval(), augment_pipe=None, training_set_kwargs=None))

class World:
    """home: the scratch home and working directory; server: the local HTTP server."""
    def __init__(self, home, server):
        self.home, self.server = str(home), server
        self.url = server.url('')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith('DNNLIB_')}
        self.env.update(HOME=self.home, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                        DNNLIB_DOWNLOAD_TIMEOUT='10', PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
        self.snapshot = None

    def path(self, first, *rest):
        """A path as a command names it ('~/x' or relative to the working directory)."""
        return os.path.join(self.home, first[2:] if first.startswith('~/') else first, *rest)

    def run(self, command, **fmt):
        """Run one command line through bash in home; returns (exit code, stdout + stderr)."""
        line = command.adapted if isinstance(command, Cmd) else command
        line = line.format(url=self.url, snapshot=self.snapshot, **fmt)
        proc = subprocess.run(['bash', '-c', line], cwd=self.home, env=self.env, capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stdout + proc.stderr

    def ok(self, command, **fmt):
        code, out = self.run(command, **fmt)
        assert code == 0, f'{command.adapted if isinstance(command, Cmd) else command}\n{out}'
        assert 'Traceback' not in out, out
        return out

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp('home')
    for script in SCRIPTS:   # users run the scripts from the checkout; here the checkout is linked in
        os.symlink(os.path.join(ROOT, script), home / script)
    for folder, seed in [('ffhq-unpacked', 0), ('downloads/metfaces/images', 1), ('downloads/afhq/train/cat', 2)]:
        _save_images(home / folder, 12, (RES, RES), seed)
    # cifar-10-python.tar.gz: 40 images per train batch, 4 of each class
    write_cifar_tarball(home / 'downloads' / 'cifar-10-python.tar.gz', 'cifar-10-batches-py',
                        [f'data_batch_{b}' for b in range(1, 6)] + ['test_batch'], b'labels', b'label_names',
                        'batches.meta', 10, per_batch=40, balanced=True)
    for k in range(UTLO_CLASSES):   # non-square sources: the command centre-crops them
        _save_images(home / 'Image' / f'class{k:02d}', UTLO_PER_CLASS, (20, 24), 100 + k, value=12 * k)
    stub = detectors.save_stub_detector(str(home / 'stub-detector.pt'))
    cache = home / '.cache' / 'dnnlib' / 'downloads'   # the default cache under $HOME
    cache.mkdir(parents=True)
    for url in (detectors.INCEPTION_URL, detectors.VGG16_URL):
        shutil.copy(stub, dnnlib.util.cache_path_for_url(url, str(cache)))
    files = {'/metfaces.pkl': _network_pickle(0, 1), '/ffhq.pkl': _network_pickle(0, 2), '/cifar10.pkl': _network_pickle(10, 3),
             '/metrics/inception-2015-12-05.pt': open(stub, 'rb').read(),
             # What a TensorFlow network pickle refers to first: upstream's TF network class.
             '/stylegan2-cat-config-f.pkl': b'\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.'}
    with LocalServer(files) as server:
        yield World(home, server)

@pytest.fixture(scope='module')
def datasets(world):
    """Upstream's dataset commands, run once; later commands use what they write."""
    outputs = [world.ok(cmd) for cmd in DATASET_CMDS]
    shutil.copy(world.path('~/datasets/ffhq.zip'), world.path('~/mydataset.zip'))   # "~/mydataset.zip"
    return outputs

@pytest.fixture(scope='module')
def trained(world, datasets):
    """Upstream's plain training command (tiny, 0.1 kimg, fid64_full): the snapshot other commands use."""
    out = world.ok(TRAIN)
    run_dirs = sorted(glob.glob(world.path('~/training-runs/*')))
    assert len(run_dirs) == 1
    world.snapshot = sorted(glob.glob(os.path.join(run_dirs[0], 'network-snapshot-*.pkl')))[-1]
    return run_dirs[0], out

def _jsonl(run_dir, name):
    with open(os.path.join(run_dir, f'metric-{name}.jsonl')) as f:
        return [json.loads(line) for line in f]

def _training_options(out):
    """The JSON train.py prints between 'Training options:' and 'Output directory:'."""
    return json.loads(out.split('Training options:')[1].split('Output directory:')[0])

def _pngs(folder):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, '*.png')))

#----------------------------------------------------------------------------

def test_documented_commands_are_the_ones_run():
    for cmd in ALL_CMDS:
        text = _doc_text(cmd.doc)
        if text is None:
            pytest.skip(f'{cmd.doc} is not in this checkout')
        assert re.sub(r'[ \t]+', ' ', cmd.original) in text, f'{cmd.doc} no longer prints: {cmd.original}'

def test_upstream_dataset_commands(world, datasets):
    from training.dataset import ImageFolderDataset
    for name, res, count in [('ffhq', RES, 12), ('ffhq256x256', 8, 12), ('metfaces', RES, 12), ('afhqcat', RES, 12), ('cifar10', 32, 200)]:
        ds = ImageFolderDataset(world.path(f'~/datasets/{name}.zip'), use_labels=True)
        assert (len(ds), ds.resolution) == (count, res), name
    assert ImageFolderDataset(world.path('~/datasets/cifar10.zip'), use_labels=True).class_counts().tolist() == [20] * 10
    assert 'Wrote 200 images (32x32, 3 channels, 10 classes)' in datasets[4]
    for cmd in LMDB_CMDS:   # LSUN's LMDB: refused by name, nothing written
        code, out = world.run(cmd)
        assert code == 1 and 'LMDB databases (LSUN) are not supported' in out and 'Traceback' not in out
    assert not glob.glob(world.path('~/datasets/lsun*'))

def test_upstream_train_dry_runs(world, datasets):
    out = world.ok(TRAIN_DRY)
    assert 'Dry run; exiting.' in out and not os.path.exists(world.path('~/training-runs'))
    options = [_training_options(world.ok(TRAIN_DRY.adapted.replace(' --dry-run', '').replace('~/mydataset.zip', data) + ' ' + opts))
               for opts, data in TRAIN_OPTION_SETS]
    assert options[0]['plugin_names'] == ['noaug'] and options[0]['training_set_kwargs']['use_labels'] is True
    assert options[0]['training_set_kwargs']['xflip'] is True and options[0]['loss_kwargs']['r1_gamma'] == 10
    assert options[0]['metrics'] == []
    assert options[1]['plugin_names'] == ['ada'] and options[1]['plugin_opts']['target'] == 0.7
    assert options[1]['plugin_opts']['augpipe'] == 'blit'
    assert options[2]['resume_pkl'] == train.RESUME_SPECS['ffhq1024'] and options[2]['network_snapshot_ticks'] == 10
    assert options[2]['plugin_opts']['augpipe'] == 'bgcfnc'
    assert not os.path.exists(world.path('~/training-runs'))

def test_upstream_training_downloads_its_detector_and_resumes(world, trained):
    run_dir, out = trained
    # The first snapshot's FID needed the detector: fetched once over HTTP, with a progress line.
    assert world.server.requests.count('/metrics/inception-2015-12-05.pt') == 1
    assert 'Downloaded ' + world.url + '/metrics/inception-2015-12-05.pt' in out
    fid = _jsonl(run_dir, 'fid64_full')[-1]['results']['fid64_full']
    assert np.isfinite(fid) and fid > 0
    assert os.path.basename(world.snapshot) == 'network-snapshot-000000.pkl'
    assert 'DataLoader will create' not in out   # --workers defaults to at most the core count (item 7)
    with open(world.snapshot, 'rb') as f:
        first = pickle.load(f)['resume_state']['cur_nimg']
    # --resume=~/training-runs/<NAME>/network-snapshot-<INT>.pkl: a full resume continues the counters.
    resume = os.path.relpath(world.snapshot, world.home)
    out = world.ok(f'python train.py --outdir=~/training-runs --data=~/mydataset.zip --gpus=1 --resume=~/{resume} '
                   '--cfg=tiny --kimg=0.2 --metrics=none')
    second = sorted(glob.glob(world.path('~/training-runs/00001-*/network-snapshot-*.pkl')))[-1]
    with open(second, 'rb') as f:
        assert pickle.load(f)['resume_state']['cur_nimg'] > first
    assert world.server.requests.count('/metrics/inception-2015-12-05.pt') == 1   # the cache served it

def test_upstream_generate_from_urls(world):
    world.ok(GEN_METFACES_1)
    out = world.ok(GEN_METFACES_2)
    assert world.server.requests.count('/metfaces.pkl') == 1   # the second command read the cache
    assert 'Downloading' not in out
    assert _pngs(world.path('out')) == [f'seed{s:04d}.png' for s in (85, 265, 297, 600, 601, 602, 603, 604, 605, 849)]
    world.ok(GEN_CIFAR)
    assert len(_pngs(world.path('out'))) == 10 + 36   # seeds 0-35 added to the 10 above
    img = np.array(PIL.Image.open(world.path('out', 'seed0035.png')))
    assert img.shape == (RES, RES, 3) and img.std() > 0
    code, out = world.run(GEN_CIFAR.adapted.replace(' --class=1', ''))   # a conditional network needs --class
    assert code == 2 and '--class' in out and 'Traceback' not in out

def test_upstream_legacy_refuses_a_tensorflow_pickle(world):
    code, out = world.run(LEGACY_TF)
    assert code == 1 and 'TensorFlow network pickle' in out and 'Traceback' not in out
    assert not os.path.exists(world.path('stylegan2-cat-config-f.pkl'))

def test_upstream_metrics(world, trained):
    run_dir, _ = trained
    world.ok(METRICS_PR)   # looks up the training set in the snapshot
    rec = _jsonl(run_dir, 'pr643_full')[-1]['results']
    assert 0 <= rec['pr643_full_precision'] <= 1 and 0 <= rec['pr643_full_recall'] <= 1
    assert not os.path.exists(os.path.join(run_dir, 'metric-pr50k3_full.jsonl'))
    out = world.ok(METRICS_FID_URL)   # a URL: --data and --mirror given, the result printed
    line = json.loads(next(l for l in out.splitlines() if l.startswith('{"results"')))
    assert line['metric'] == 'fid64_full' and line['results']['fid64_full'] > 0

def test_apa_commands(world, trained):
    run_dir, _ = trained
    for cmd, folder in zip(APA_GEN, ['apa-out', 'apa-out1']):
        world.ok(cmd)
        assert _pngs(world.path(folder)) == [f'seed{s:04d}.png' for s in range(1000, 1008)]
    world.ok(APA_DATASET)
    from training.dataset import ImageFolderDataset
    ds = ImageFolderDataset(world.path('~/archive.zip'))
    assert (len(ds), ds.resolution) == (12, 8)
    c = _training_options(world.ok(APA_TRAIN))
    assert c['plugin_names'] == ['apa'] and c['plugin_opts']['with_dataaug'] is True
    assert c['metric_set_kwargs']['path'] == world.path('~/datasets/ffhq.zip') and c['training_set_kwargs']['xflip'] is True
    world.ok(APA_METRICS)   # --metricdata is APA's --data
    assert _jsonl(run_dir, 'fid64_full')[-1]['results']['fid64_full'] > 0
    rec = _jsonl(run_dir, 'is64')[-1]['results']
    assert 1 <= rec['is64_mean'] <= 6   # the stub detector's 6 classes bound the score

def test_utlo_commands(world):
    world.ok(UTLO_DATASET)
    with open(world.path('datasets', 'af', 'dataset.json')) as f:
        assert len(json.load(f)['labels']) == UTLO_CLASSES * UTLO_PER_CLASS
    out = world.ok(UTLO_LT)
    assert {'lt_25.json', 'lt_25_full.json'} <= set(os.listdir(world.path('datasets', 'af')))
    assert len(glob.glob(world.path('datasets', 'af', 'class_*.json'))) == 3   # many / medium / few shots
    # As typed, the fork's options turn nothing on here: refused, naming our switch.
    code, out = world.run(UTLO_TRAIN_AS_TYPED)
    assert code == 2 and 'is an option of utlo, which is not on: add --method=utlo' in out
    assert not os.path.exists(world.path('training_runs_af'))
    world.ok(UTLO_TRAIN)
    run_dir, = glob.glob(world.path('training_runs_af', '*'))
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = json.load(f)
    assert c['plugin_names'] == ['ada', 'utlo'] and c['plugin_opts']['res_uc'] == 8 and c['random_seed'] == 69
    assert c['training_set_kwargs']['label_file'] == 'lt_25.json' and c['batch_size'] == 64
    for name in ['fid64_full', 'kid64_full']:
        assert np.isfinite(_jsonl(run_dir, name)[-1]['results'][name])
    shots = _jsonl(run_dir, 'fid64_shots')[-1]['results']
    assert {'fid_many', 'fid_medium', 'fid_few'} <= set(shots)
    assert all(np.isfinite(v) for v in shots.values())
    c = _training_options(world.ok(OURS_UTLO))   # our README's UTLO recipe on the same data
    assert c['metric_set_kwargs']['label_file'] == 'lt_25_full.json'

def test_our_folder_metrics(world, datasets):
    if not os.path.isdir(world.path('out')):
        world.ok(GEN_METFACES_1)
    out = world.ok(OURS_FOLDER_METRICS)
    line = json.loads(next(l for l in out.splitlines() if l.startswith('{"results"')))
    assert line['metric'] == 'fid10k_full' and line['results']['fid10k_full'] > 0

def test_our_readme_recipes(world, datasets):
    """Our README's recipes on CIFAR-like data, as dry runs: every check, nothing written."""
    names = [_training_options(world.ok(cmd))['plugin_names'] for cmd in OURS_RECIPES]
    assert names == [['ada', 'diffaug'], ['apa', 'regan'], ['diffaug', 'lottery']]
    assert not os.path.exists(world.path('runs'))
