"""End-to-end CPU runs of the training loop with --cfg=tiny on a 16x16 folder dataset:
outputs, tick schedule, snapshot contents and reproducibility, exact full resume, and a
weights-only (transfer) resume."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
import train
from metrics import detectors
from training import snapshot, training_loop
from helpers import load_pickle

pytestmark = pytest.mark.slow

#----------------------------------------------------------------------------

def make_dataset(root, num=16, res=16, num_classes=3, labels=True):
    """A folder dataset of random-ish PNGs (left half bright for odd images) with class labels."""
    rnd = np.random.RandomState(0)
    os.makedirs(os.path.join(root, '00000'), exist_ok=True)
    entries = []
    for i in range(num):
        img = (rnd.rand(res, res, 3) * 255).astype(np.uint8)
        img[:, :res // 2] = 200 if i % 2 else 30
        fname = f'00000/img{i:08d}.png'
        PIL.Image.fromarray(img).save(os.path.join(root, fname))
        entries.append([fname, i % num_classes])
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': entries if labels else None}, f)
    return str(root)

def config(outdir, data, *args, shrink=True):
    """The training config train.py builds for these arguments (via --dry-run), with the
    tiny preset's networks shrunk further (32 channels, 64-d latents) to keep tests fast."""
    argv = [f'--outdir={outdir}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--workers=0', '--dry-run', *args]
    c = train.build_cli().main(argv, standalone_mode=False)
    if shrink:
        c.G_kwargs.update(z_dim=64, w_dim=64)
        c.G_kwargs.synthesis_kwargs.channel_max = c.D_kwargs.channel_max = 32
    if c.loss_kwargs.pl_weight == 0:   # tiny trains without path length; these tests cover the Greg phase too
        c.loss_kwargs.pl_weight = 2
    return c

def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('data') / 'ds16')

def all_tensors(result):
    out = {}
    for name in ['G', 'D', 'G_ema']:
        for key, t in result[name].state_dict().items():
            out[f'{name}.{key}'] = t
    return out

#----------------------------------------------------------------------------

def test_tiny_run_writes_outputs_and_reproducible_snapshot(tmp_path, data):
    c = config(tmp_path, data, '--cond=1', '--aug=ada', '--kimg=0.064', '--tick=0.032', '--snap=1')
    assert c.batch_size == 8 and c.batch_gpu == 8 and c.plugin_names == ['ada']
    result = train.run_training(c)
    run = c.run_dir
    assert os.path.basename(run) == '00000-ds16-cond-tiny-kimg0.064-ada'
    for name in ['reals.png', 'fakes_init.png', 'fakes000000.png', 'network-snapshot-000000.pkl',
                 'stats.jsonl', 'training_options.json', 'log.txt']:
        assert os.path.isfile(os.path.join(run, name)), name
    assert any(n.startswith('events.out.tfevents') for n in os.listdir(run))
    assert not any(n.endswith('.tmp') for n in os.listdir(run))
    # Grid: 8 images per row (tiny), one row per class cycling through the 3 labels.
    assert PIL.Image.open(os.path.join(run, 'reals.png')).size == (8 * 16, 8 * 16)

    # Ticks: after the first iteration, then every 0.032 kimg (4 iterations of 8), then at the end.
    stats = read_stats(run)
    assert [s['Progress/kimg']['mean'] for s in stats] == pytest.approx([0.008, 0.040, 0.064])
    assert stats[-1]['Progress/tick']['mean'] == 2
    for s in stats:
        for key in ['Loss/G/loss', 'Loss/D/loss', 'Loss/scores/real', 'Loss/signs/real', 'Progress/augment']:
            assert np.isfinite(s[key]['mean']), key
    assert stats[0]['Loss/r1_penalty']['num'] == 8 and stats[0]['Loss/pl_penalty']['num'] == 4   # iteration 0 runs both regs
    log = open(os.path.join(run, 'log.txt')).read()
    assert 'tick 2' in log and 'augment' in log and 'sec/kimg' in log

    assert result.cur_nimg == 64 and result.batch_idx == 8
    assert all(torch.isfinite(t).all() for t in all_tensors(result).values() if t.is_floating_point())

    snap = load_pickle(os.path.join(run, 'network-snapshot-000000.pkl'))
    assert set(snap) >= {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs', 'resume_state'}
    rs = snap['resume_state']
    assert (rs['cur_nimg'], rs['batch_idx'], rs['cur_tick']) == (64, 8, 3)
    assert set(rs['rng']) == {'torch', 'numpy', 'python', 'cuda'} and rs['options']['batch_size'] == 8
    assert rs['plugins']['ada']['p'] == float(snap['augment_pipe'].p)
    assert snap['training_set_kwargs']['path'] == data and snap['training_set_kwargs']['use_labels']
    assert not any(p.requires_grad for p in snap['G_ema'].parameters())

    z = torch.randn([4, snap['G_ema'].z_dim], generator=torch.Generator().manual_seed(1))
    cc = torch.eye(3)[[0, 1, 2, 0]]
    img_snap = snap['G_ema'](z, cc, noise_mode='const')
    img_again = load_pickle(os.path.join(run, 'network-snapshot-000000.pkl'))['G_ema'](z, cc, noise_mode='const')
    with torch.no_grad():
        img_live = result.G_ema(z, cc, noise_mode='const')
    assert img_snap.shape == (4, 3, 16, 16)
    assert torch.equal(img_snap, img_again) and torch.equal(img_snap, img_live)

def _p(result, aug):
    return float(result.plugins['ada'].augment_pipe.p if aug == 'ada' else result.plugins['apa'].p)

@pytest.mark.parametrize('aug', ['ada', 'apa'])
def test_full_resume_continues_exactly(tmp_path, data, aug):
    """Train 5 iterations straight; or 3, snapshot, resume and train 2: identical networks,
    optimizer states, augment p, the p controller's pending statistics and counters (CPU, so
    bitwise). ADA and APA share the controller, so both resume the same way."""
    common = [f'--aug={aug}', '--tick=0.016', '--snap=1', '--cond=1']
    def fast_p(c):   # force the controller up with a huge step, so p = 0.32 from iteration 5 on
        c.plugin_opts.update(target=-2, ada_kimg=0.1)
        return c
    straight = train.run_training(fast_p(config(tmp_path / 'a', data, '--kimg=0.040', *common)))
    assert _p(straight, aug) == pytest.approx(8 * 4 / 100)

    first = fast_p(config(tmp_path / 'b', data, '--kimg=0.024', *common))
    train.run_training(first)
    snap_path = os.path.join(first.run_dir, 'network-snapshot-000000.pkl')
    rs = load_pickle(snap_path)['resume_state']
    assert rs['cur_nimg'] == 24 and rs['batch_idx'] == 3
    # D(real) signs of 3 Dmain + 1 Dreg, not yet used by the controller
    assert rs['plugins'][aug]['controller']['pending'][0] == 4 * 8
    resumed_c = config(tmp_path / 'b', data, '--kimg=0.040', f'--resume={snap_path}', *common)
    assert resumed_c.plugin_opts['ada_kimg'] == 100            # upstream rule for resumes ...
    if aug == 'ada':
        resumed = train.run_training(resumed_c)
        assert resumed.plugins['ada'].controller.speed_kimg == 0.1  # ... but ADA's full resume keeps the run's own speed
    else:
        resumed = train.run_training(fast_p(resumed_c))             # APA takes its speed from this run's options

    assert (resumed.cur_nimg, resumed.batch_idx, resumed.cur_tick) == (straight.cur_nimg, straight.batch_idx, straight.cur_tick)
    a, b = all_tensors(straight), all_tensors(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _p(straight, aug) == _p(resumed, aug)
    for pa, pb in zip(straight.phases, resumed.phases):
        sa, sb = pa.opt.state_dict()['state'], pb.opt.state_dict()['state']
        assert sa.keys() == sb.keys() and len(sa) > 0
        for idx in sa:
            for k in sa[idx]:
                assert torch.equal(torch.as_tensor(sa[idx][k]), torch.as_tensor(sb[idx][k]))
    assert float(straight.loss.pl_mean) == float(resumed.loss.pl_mean) != 0
    stats = read_stats(resumed_c.run_dir)
    assert [s['Progress/kimg']['mean'] for s in stats] == pytest.approx([0.040])
    assert 'Resume: continuing at kimg 0.024' in open(os.path.join(resumed_c.run_dir, 'log.txt')).read()

def test_weights_only_resume_reports_skipped_tensors(tmp_path, data):
    """Transfer: an unconditional run starts from a conditional network pickle without resume_state."""
    src = train.run_training(config(tmp_path / 'src', data, '--cond=1', '--aug=noaug', '--kimg=0.008', '--snap=1'))
    weights = tmp_path / 'weights.pkl'
    with open(weights, 'wb') as f:
        pickle.dump(dict(G=src.G, D=src.D, G_ema=src.G_ema, augment_pipe=None, training_set_kwargs=None), f)
    c = config(tmp_path / 'dst', data, '--cond=0', '--aug=noaug', '--kimg=0.008', '--snap=1', f'--resume={weights}')
    assert c.resume_mode == 'weights' and c.ema_rampup is None     # decided by train.py with the config
    result = train.run_training(c)
    log = open(os.path.join(c.run_dir, 'log.txt')).read()
    assert 'tensors of G not in the pickle or shaped differently' in log and 'mapping.fc0.weight' in log
    assert load_pickle(os.path.join(c.run_dir, 'network-snapshot-000000.pkl'))['resume_state']['cur_nimg'] == 8   # counts from zero
    # One step of EMA from the pickle's G_ema with the full 1-kimg half-life (the ramp is off
    # on transfer; with it on, beta would be 0 at cur_nimg=0 and G_ema would equal G).
    beta = 0.5 ** (8 / 1000)
    const_src = src.G_ema.synthesis.b4.const.detach()
    const_G = result.G.synthesis.b4.const.detach()
    assert not torch.equal(const_G, const_src)
    torch.testing.assert_close(result.G_ema.synthesis.b4.const.detach(), const_G.lerp(const_src, beta), rtol=0, atol=1e-6)

def test_metrics_at_snapshots_with_metricdata(tmp_path, data, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    detector = detectors.save_stub_detector(str(tmp_path / 'stub.pt'))
    full = make_dataset(tmp_path / 'full', num=20)
    c = config(tmp_path / 'out', data, '--aug=noaug', '--kimg=0.016', '--snap=1', '--tick=0.008',
               '--metrics=fid8_full,kid8_full', f'--detector={detector}', f'--metricdata={full}', '--subset=10')
    assert c.metric_set_kwargs.path == full and c.metric_set_kwargs.max_size is None and not c.metric_set_kwargs.xflip
    assert c.training_set_kwargs.path == data and c.training_set_kwargs.max_size == 10
    train.run_training(c)
    for name in ['fid8_full', 'kid8_full']:
        with open(os.path.join(c.run_dir, f'metric-{name}.jsonl')) as f:
            lines = [json.loads(line) for line in f]
        assert len(lines) == 2                   # snapshots at ticks 0 and 1 (8 and 16 images)
        assert all(np.isfinite(line['results'][name]) for line in lines)
        assert lines[-1]['snapshot_pkl'] == 'network-snapshot-000000.pkl'

def test_freeze_d_and_r1_through_fixed_augmentation(tmp_path, data):
    """--freezed=2: D's first two layers (b16.fromrgb, b16.conv0) become buffers that never change;
    17 iterations with p=0.5 include a Dreg step differentiating R1 through the augmentation."""
    c = config(tmp_path, data, '--aug=fixed', '--p=0.5', '--freezed=2', '--kimg=0.136', '--tick=1', '--snap=100')
    result = train.run_training(c)
    trainable = dict(result.D.named_parameters())
    frozen = dict(result.D.named_buffers())
    assert 'b16.fromrgb.weight' in frozen and 'b16.conv0.weight' in frozen
    assert 'b16.conv1.weight' in trainable and 'b16.fromrgb.weight' not in trainable
    torch.manual_seed(0)   # rebuild G then D as the loop did: frozen weights are still the initial ones
    common = dict(c_dim=0, img_resolution=16, img_channels=3)
    train.dnnlib.util.construct_class_by_name(**c.G_kwargs, **common)
    D0 = train.dnnlib.util.construct_class_by_name(**{**c.D_kwargs, 'block_kwargs': {'freeze_layers': 2}}, **common)
    assert torch.equal(frozen['b16.conv0.weight'], D0.b16.conv0.weight)
    assert not torch.equal(trainable['b16.conv1.weight'], D0.b16.conv1.weight)
    stats = read_stats(c.run_dir)
    assert stats[-1]['Progress/augment']['mean'] == pytest.approx(0.5)
    assert np.isfinite(stats[-1]['Loss/r1_penalty']['mean']) and stats[-1]['Loss/r1_penalty']['num'] == 8

def test_tensors_to_cpu_keeps_the_structure():
    state = dict(opt=dict(state={0: dict(step=torch.tensor(3.0), exp_avg=torch.ones(2, requires_grad=True))},
                          param_groups=[dict(params=[0], betas=(0.0, 0.99))]),
                 rng=(3, (1, 2), None), n=7)
    out = snapshot.tensors_to_cpu(state)
    assert out['opt']['param_groups'] == [dict(params=[0], betas=(0.0, 0.99))] and out['rng'] == (3, (1, 2), None)
    assert out['n'] == 7 and not out['opt']['state'][0]['exp_avg'].requires_grad
    assert torch.equal(out['opt']['state'][0]['exp_avg'], torch.ones(2))

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_snapshot_loads_without_a_gpu(tmp_path, data):
    """A run on the GPU writes optimizer moments as CPU tensors: the snapshot unpickles where CUDA is absent."""
    c = config(tmp_path, data, '--aug=ada', '--kimg=0.016', '--tick=0.008', '--snap=1')
    train.run_training(c)
    snap = os.path.join(c.run_dir, 'network-snapshot-000000.pkl')
    code = ('import pickle, sys; d = pickle.load(open(sys.argv[1], "rb")); '
            'assert all(t.device.type == "cpu" for t in d["resume_state"]["G_opt"]["state"][0].values())')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-c', code, snap], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 0, proc.stderr[-2000:]

@pytest.mark.parametrize('aug_args, p_max', [(['--aug=fixed', '--p=0.2'], 0.2), (['--aug=ada'], 0.001)])
def test_weights_only_start_takes_p_from_the_command_line(tmp_path, data, aug_args, p_max):
    """An upstream-style pickle (networks, no resume_state) whose augment pipe has p = 1:
    --aug=fixed trains at --p, ADA starts from 0 (issue 13 item 3)."""
    from plugins.ada import build_augment_pipe
    c = config(tmp_path / 'dst', data, '--aug=noaug', '--kimg=0.008', '--snap=1')
    net = lambda kw: dnnlib.util.construct_class_by_name(**kw, c_dim=0, img_resolution=16, img_channels=3)
    pipe = build_augment_pipe('bgc', 'cpu')
    pipe.p.fill_(1.0)
    weights = tmp_path / 'upstream-like.pkl'
    with open(weights, 'wb') as f:
        pickle.dump(dict(G=net(c.G_kwargs), D=net(c.D_kwargs), G_ema=net(c.G_kwargs), augment_pipe=pipe), f)
    c = config(tmp_path / 'dst', data, *aug_args, '--kimg=0.008', '--snap=1', f'--resume={weights}')
    train.run_training(c)
    p = float(load_pickle(os.path.join(c.run_dir, 'network-snapshot-000000.pkl'))['augment_pipe'].p)
    assert p == pytest.approx(p_max) if aug_args[0] == '--aug=fixed' else 0 <= p <= p_max
