"""calc_metrics.py and metric_main end to end on a tiny snapshot and dataset, with
random-weight / tiny TorchScript detectors: JSONL lines, folder mode against a direct
computation, the statistics cache, shot groups, IS and PPL."""

import copy
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
from metrics import detectors, metric_main, metric_utils
from metrics.frechet_inception_distance import frechet_distance
from metrics.kernel_inception_distance import kernel_distance
from metrics.precision_recall import precision_recall

networks = pytest.importorskip('training.networks')

G_KWARGS = dict(z_dim=8, w_dim=8, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
NUM_REAL = 12

TinyExtractor = detectors.StubDetector

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('calc')
    # Dataset: 12 images, 3 classes, with shot-group files like lt_dataset.py --shot-labels writes.
    data = root / 'data'
    rng = np.random.RandomState(0)
    labels = []
    for i in range(NUM_REAL):
        fname = f'00000/img{i:08d}.png'
        (data / '00000').mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / fname)
        labels.append([fname, i % 3])
    (data / 'dataset.json').write_text(json.dumps({'labels': labels}))
    for a in range(3):
        (data / f'class_{a}_{a + 1}.json').write_text(json.dumps({'labels': [l for l in labels if l[1] == a]}))
    tsk = dict(class_name='training.dataset.ImageFolderDataset', path=str(data), use_labels=True,
               max_size=None, xflip=False, resolution=16, random_seed=0)
    snaps = {}
    for c_dim in (0, 3):
        torch.manual_seed(c_dim)
        G = networks.Generator(c_dim=c_dim, **G_KWARGS).eval().requires_grad_(False)
        D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
        run = root / f'run{c_dim}'
        run.mkdir()
        path = run / 'network-snapshot-000004.pkl'
        with open(path, 'wb') as f:
            pickle.dump(dict(G=G, D=D.eval().requires_grad_(False), G_ema=copy.deepcopy(G), augment_pipe=None,
                             training_set_kwargs=dict(tsk)), f)
        snaps[c_dim] = (str(path), G)
    tiny = detectors.save_stub_detector(str(root / 'tiny.pt'))
    return dict(root=root, data=str(data), tsk=tsk, snaps=snaps, tiny=tiny)

@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    return tmp_path / 'cache'

def _cli(*args):
    return CliRunner().invoke(calc_metrics.calc_metrics, [str(a) for a in args])

def _real_images(data):
    return np.stack([np.array(PIL.Image.open(os.path.join(data, '00000', f'img{i:08d}.png'))) for i in range(NUM_REAL)])

def _features(net, hwc, **kwargs):
    with torch.no_grad():
        return net(torch.from_numpy(hwc).permute(0, 3, 1, 2), **kwargs).numpy().astype(np.float64)

#----------------------------------------------------------------------------

def _read_jsonl(run_dir, name):
    lines = open(os.path.join(run_dir, f'metric-{name}.jsonl')).read().splitlines()
    return [json.loads(line) for line in lines]

def test_cli_end_to_end_random_inception(env, tmp_path):
    """The real Inception architecture (random weights) through the CLI; kept to 16 images (CPU)."""
    det = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
    detectors.save_random_detector(det, 'inception', seed=0)
    snap, _ = env['snaps'][0]
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    r = _cli('--network', snap, '--metrics', 'fid4_full', '--detector', det, '--run-dir', run_dir, '--quiet')
    assert r.exit_code == 0, r.output
    fid = _read_jsonl(run_dir, 'fid4_full')[0]['results']['fid4_full']
    assert np.isfinite(fid) and fid > 0

def test_cli_jsonl_lines_beside_snapshot(env):
    snap, _ = env['snaps'][0]
    run_dir = os.path.dirname(snap)
    for _ in range(2):
        r = _cli('--network', snap, '--metrics', 'fid8_full,kid8_full', '--detector', env['tiny'], '--quiet')
        assert r.exit_code == 0, r.output
    for name in ('fid8_full', 'kid8_full'):
        recs = _read_jsonl(run_dir, name)
        assert len(recs) == 2  # appended, not overwritten
        rec = recs[0]
        assert set(rec) == {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl', 'timestamp'}
        assert rec['metric'] == name and rec['num_gpus'] == 1 and rec['snapshot_pkl'] == 'network-snapshot-000004.pkl'
        assert list(rec['results']) == [name] and np.isfinite(rec['results'][name])
        assert recs[1]['results'] == rec['results']  # deterministic
    assert _read_jsonl(run_dir, 'fid8_full')[0]['results']['fid8_full'] > 0

def test_num_gen_writes_under_the_name_of_its_count(env, tmp_path):
    """--num-gen=8 --metrics=fid50k_full is fid8_full, written as such, never as fid50k_full (item 5)."""
    snap, _ = env['snaps'][0]
    (tmp_path / 'run').mkdir()
    (tmp_path / 'd').mkdir()
    r = _cli('--network', snap, '--metrics', 'fid50k_full,kid50k_full', '--num-gen', 8, '--detector', env['tiny'],
             '--run-dir', tmp_path / 'run', '--verbose=false')
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / 'run')) == ['metric-fid8_full.jsonl', 'metric-kid8_full.jsonl']
    assert r.output.count('"metric": "fid8_full"') == 1 and 'fid50k' not in r.output
    assert 'Metric dataset' not in r.output   # --verbose=false (upstream's BOOL spelling) is quiet
    direct = _cli('--network', snap, '--metrics', 'fid8_full', '--detector', env['tiny'], '--run-dir', tmp_path / 'd', '--quiet')
    assert direct.exit_code == 0
    assert _read_jsonl(tmp_path / 'run', 'fid8_full')[0]['results'] == _read_jsonl(tmp_path / 'd', 'fid8_full')[0]['results']

@pytest.mark.parametrize('name, renamed', [('fid50k_full', 'fid32_full'), ('kid50k', 'kid32'), ('pr50k3_full', 'pr323_full'),
                                           ('is50k', 'is32'), ('fid_shots', 'fid32_shots'), ('kid5k_shots_few', 'kid32_shots_few')])
def test_metric_for_count(name, renamed):
    assert calc_metrics.metric_for_count(name, 32) == renamed
    assert metric_main.parse_metric(renamed).num_gen == 32

def test_num_gen_with_ppl_is_refused(env):
    r = _cli('--network', env['snaps'][0][0], '--metrics', 'ppl2_wend', '--num-gen', 8)
    assert r.exit_code == 2 and '--num-gen does not apply to ppl2_wend' in r.output

def test_folder_mode_matches_direct_computation(env, tmp_path):
    """FID / KID / PR of a folder (and the same images zipped) equal the formulas on directly extracted features."""
    rng = np.random.RandomState(1)
    fakes = rng.randint(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    fakes[:5] = _real_images(env['data'])[:5]  # partial overlap, so PR is not trivial
    folder = tmp_path / 'fakes'
    (folder / 'sub').mkdir(parents=True)
    for i, img in enumerate(fakes):
        PIL.Image.fromarray(img).save(folder / 'sub' / f'{i:03d}.png')
    with zipfile.ZipFile(tmp_path / 'fakes.zip', 'w') as z:
        for i in range(len(fakes)):
            z.write(folder / 'sub' / f'{i:03d}.png', f'x/{i:03d}.png')
    metrics = 'fid10_full,kid10_full,pr103_full'  # pr{N}{k}: 10 samples, k = 3
    results = {}
    for src in (folder, tmp_path / 'fakes.zip'):
        run_dir = tmp_path / ('run_' + src.name)
        run_dir.mkdir()
        r = _cli('--images', src, '--data', env['data'], '--metrics', metrics, '--detector', env['tiny'],
                 '--vgg16', env['tiny'], '--run-dir', run_dir, '--quiet')
        assert r.exit_code == 0, r.output
        results[src.name] = {k: v for m in metrics.split(',')
                             for k, v in json.loads((run_dir / f'metric-{m}.jsonl').read_text())['results'].items()}
    assert results['fakes'] == results['fakes.zip']
    net = TinyExtractor()
    real_f = _features(net, _real_images(env['data']), return_features=True)
    fake_f = _features(net, fakes, return_features=True)
    cov = lambda x: np.cov(x, rowvar=False, bias=True)
    got = results['fakes']
    assert got['fid10_full'] == pytest.approx(frechet_distance(real_f.mean(0), cov(real_f), fake_f.mean(0), cov(fake_f)), rel=1e-5)
    assert got['kid10_full'] == pytest.approx(kernel_distance(real_f, fake_f), rel=1e-5)
    p, rec = precision_recall(torch.from_numpy(real_f).float(), torch.from_numpy(fake_f).float(), k=3)
    assert (got['pr103_full_precision'], got['pr103_full_recall']) == (pytest.approx(p), pytest.approx(rec))
    assert 0 < p < 1

def test_api_statistics_cache(env, cache_dir):
    snap, G = env['snaps'][0]
    kw = dict(G=G, dataset_kwargs=env['tsk'], detector=env['tiny'])
    first = metric_main.calc_metric('fid6_full', **kw)
    files = os.listdir(cache_dir / 'gan-metrics')
    assert len(files) == 1 and files[0].startswith('data-inception-') and files[0].endswith('.npz')
    second = metric_main.calc_metric('fid6_full', **kw)
    uncached = metric_main.calc_metric('fid6_full', cache=False, **kw)
    assert first.results.fid6_full == second.results.fid6_full == uncached.results.fid6_full
    assert set(first) == {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus'}
    # Another dataset path -> another cache entry.
    metric_main.calc_metric('fid6_full', G=G, dataset_kwargs=dict(env['tsk'], path=env['data'] + '/'), detector=env['tiny'])
    assert len(os.listdir(cache_dir / 'gan-metrics')) == 2
    # num_gen overrides the sample count; the result is deterministic for a given seed.
    a = metric_main.calc_metric('kid50k_full', num_gen=5, **kw).results.kid50k_full
    assert a == metric_main.calc_metric('kid50k_full', num_gen=5, **kw).results.kid50k_full

def test_shot_metrics_and_conditional_labels(env):
    snap, G = env['snaps'][3]
    res = metric_main.calc_metric('fid6_shots', G=G, dataset_kwargs=env['tsk'], detector=env['tiny']).results
    assert sorted(res) == ['fid_few', 'fid_many', 'fid_medium'] and all(np.isfinite(v) for v in res.values())
    res = metric_main.calc_metric('kid6_shots_few', G=G, dataset_kwargs=env['tsk'], detector=env['tiny']).results
    assert list(res) == ['kid_few']
    # Conditional G through the CLI: labels drawn from the dataset.
    r = _cli('--network', snap, '--metrics', 'fid6_full', '--detector', env['tiny'], '--quiet')
    assert r.exit_code == 0, r.output

def test_inception_score_and_ppl(env, tmp_path):
    snap, G = env['snaps'][0]
    res = metric_main.calc_metric('is10', G=G, dataset_kwargs=env['tsk'], detector=env['tiny']).results
    assert 1.0 <= res.is10_mean <= 6.0 and res.is10_std >= 0  # 6 'classes' in the tiny extractor
    vgg = str(tmp_path / 'vgg16_lpips.pth')
    detectors.save_random_detector(vgg, 'vgg16', seed=0)
    kw = dict(G=G, dataset_kwargs=env['tsk'], detector=dict(vgg16=vgg), num_gen=6)
    a = metric_main.calc_metric('ppl2_wend', **kw).results.ppl2_wend
    b = metric_main.calc_metric('ppl2_wend', **kw).results.ppl2_wend
    assert np.isfinite(a) and a > 0 and a == b
    z = metric_main.calc_metric('ppl2_wend', G=G, dataset_kwargs=env['tsk'], detector=dict(vgg16=vgg), num_gen=6, seed=1)
    assert z.results.ppl2_wend != a
    with pytest.raises(ValueError, match='ppl2_wend'):  # the crop of a 16x16 image is too small for VGG16
        metric_main.calc_metric('ppl_zfull', **kw)
    from metrics.perceptual_path_length import compute_ppl
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=env['tsk'], detector=dict(vgg16=vgg), device='cpu')
    zfull = compute_ppl(opts, num_samples=6, space='z', sampling='full', crop=False)
    assert np.isfinite(zfull) and zfull > 0

def test_cli_errors(env, tmp_path):
    snap, _ = env['snaps'][0]
    r = _cli('--network', snap, '--metrics', 'fid50k_ful')
    assert r.exit_code != 0 and 'unknown metric' in r.output and 'fid50k_full' in r.output and 'kid50k_full' in r.output
    r = _cli('--network', snap, '--metrics', 'fid8_full', '--detector', str(tmp_path / 'missing.pth'), '--quiet')
    assert r.exit_code != 0 and 'missing.pth' in r.output and '--detector' in r.output
    r = _cli('--images', tmp_path, '--data', env['data'], '--metrics', 'ppl_zfull')
    assert r.exit_code != 0 and 'folder mode' in r.output
    r = _cli('--metrics', 'fid50k_full')
    assert r.exit_code != 0 and '--network' in r.output and '--images' in r.output
    r = _cli('--network', str(tmp_path / 'nope.pkl'))
    assert r.exit_code != 0 and 'nope.pkl' in r.output

@pytest.mark.slow
def test_two_processes_match_one(env, tmp_path):
    """--gpus=2 (gloo on CPU): round-robin split + all_gather give the same order-free results."""
    rng = np.random.RandomState(2)
    folder = tmp_path / 'fakes'
    folder.mkdir()
    for i in range(9):  # odd count: the ranks hold different numbers of items (rank 1 none in the last step)
        PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    out = {}
    for gpus in (1, 2):
        run_dir = tmp_path / f'run{gpus}'
        run_dir.mkdir()
        r = _cli('--images', folder, '--data', env['data'], '--metrics', 'fid9_full,pr93_full', '--detector', env['tiny'],
                 '--vgg16', env['tiny'], '--run-dir', run_dir, '--gpus', gpus, '--quiet')
        assert r.exit_code == 0, r.output
        out[gpus] = {**_read_jsonl(run_dir, 'fid9_full')[0]['results'], **_read_jsonl(run_dir, 'pr93_full')[0]['results']}
    assert out[2]['fid9_full'] == pytest.approx(out[1]['fid9_full'], rel=1e-6)
    assert out[2]['pr93_full_precision'] == out[1]['pr93_full_precision']
    assert out[2]['pr93_full_recall'] == out[1]['pr93_full_recall']

def test_metric_dataset_kwargs_and_progress(env, tmp_path):
    _, G = env['snaps'][3]
    tsk = dict(env['tsk'], label_file='lt_25.json', xflip=False, max_size=7)
    kw = calc_metrics.metric_dataset_kwargs(None, tsk, G, mirror=True, labels=None)
    assert (kw.path, kw.label_file, kw.xflip, kw.max_size, kw.resolution, kw.use_labels) == \
           (env['data'], 'lt_25.json', True, None, 16, True)
    other = tmp_path / 'other'
    other.mkdir()
    kw = calc_metrics.metric_dataset_kwargs(str(other), tsk, G, mirror=None, labels='dataset.json')
    assert kw.path == str(other) and kw.label_file == 'dataset.json' and kw.xflip is False
    assert 'label_file' not in calc_metrics.metric_dataset_kwargs(str(other), tsk, G, None, None)
    calls = []
    metric_main.calc_metric('fid5_full', G=G, dataset_kwargs=env['tsk'], detector=env['tiny'], cache=False,
                            progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls[-1][1:] == (5, 5) and any(c[1:] == (NUM_REAL, NUM_REAL) for c in calls)

def test_full_versus_legacy_real_counts(env):
    """*_full: every real image, flips off; legacy: at most N reals, the dataset's xflip kept."""
    _, G = env['snaps'][0]
    def real_total(metric, **tsk):
        calls = []
        metric_main.calc_metric(metric, G=G, dataset_kwargs=dict(env['tsk'], **tsk), detector=env['tiny'], cache=False,
                                progress=lambda stage, done, total: calls.append((stage, total)))
        return {total for stage, total in calls if 'generated' not in stage}
    assert real_total('fid5_full', xflip=True, max_size=4) == {NUM_REAL}
    assert real_total('fid20', xflip=True) == {20}   # 24 flipped items available, 20 used
    assert real_total('fid30', xflip=True) == {2 * NUM_REAL}
    assert real_total('fid30', xflip=False) == {NUM_REAL}
