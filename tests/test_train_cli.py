"""train.py as users run it: one clear error per bad input (before anything is trained), a
run killed with SIGKILL and resumed with --resume=latest, and a 2-process gloo run on CPU."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import train
from helpers import load_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def make_dataset(root, num=12, size=(16, 16), labels=True):
    """PNG folder dataset; size = (width, height)."""
    rnd = np.random.RandomState(0)
    os.makedirs(os.path.join(root, '00000'), exist_ok=True)
    entries = []
    for i in range(num):
        img = (rnd.rand(size[1], size[0], 3) * 255).astype(np.uint8)
        fname = f'00000/img{i:08d}.png'
        PIL.Image.fromarray(img).save(os.path.join(root, fname))
        entries.append([fname, i % 2])
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': entries if labels else None}, f)
    return str(root)

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('cli') / 'ds16')

#----------------------------------------------------------------------------

def bad_input_cases(tmp_path, data):
    nonsquare = make_dataset(tmp_path / 'nonsquare', size=(16, 8))
    odd = make_dataset(tmp_path / 'odd', size=(12, 12))
    unlabelled = make_dataset(tmp_path / 'nolabels', labels=False)
    corrupt = tmp_path / 'corrupt.zip'
    corrupt.write_bytes(b'PK\x03\x04 this is not a zip archive')
    return [
        ([], '--data is required'),
        ([f'--data={tmp_path}/missing.zip'], 'no such file or directory'),
        ([f'--data={corrupt}'], 'cannot read the dataset'),
        ([f'--data={nonsquare}'], 'square'),
        ([f'--data={odd}'], 'power of two'),
        ([f'--data={unlabelled}', '--cond=1'], '--cond=True needs labels'),
        ([f'--data={data}', '--gpus=2', '--batch=7'], '--batch=7 must be a positive multiple of --gpus=2'),
        ([f'--data={data}', '--gpus=3'], '--gpus=3 must be a power of two'),
        ([f'--data={data}', '--batch=8', '--batch-gpu=3'], '--batch-gpu=3 must divide the per-GPU batch 8'),
        ([f'--data={data}', '--cfg=huge'], "Invalid value for '--cfg'"),
        ([f'--data={data}', '--aug=magic'], 'unknown --aug "magic"'),
        ([f'--data={data}', '--method=magic'], 'unknown --method "magic"'),
        ([f'--data={data}', '--aug=fixed'], '--aug=fixed needs --p'),
        ([f'--data={data}', f'--resume={tmp_path}/nothing.pkl'], 'no such file'),
        ([f'--data={data}', '--resume=latest'], '--resume=latest: no network-snapshot'),
        ([f'--data={data}', '--metrics=fid_magic'], 'unknown --metrics fid_magic'),
        ([f'--data={data}', '--metric-labels=lt_5_full.json'], "label file 'lt_5_full.json' not found"),
        ([f'--data={data}', '--gamma=-1'], '--gamma=-1: the R1 weight must be 0 or more'),
        ([f'--data={data}', '--workers=-2'], '--workers=-2 must be 0'),
        # Options of a plugin that is off: refused, naming the switch (issue 13 item 2).
        ([f'--data={data}', '--cond=1', '--res-uc=8', '--alpha=1'], '--alpha is an option of utlo, which is not on: add --method=utlo'),
        ([f'--data={data}', '--cond=1', '--res_uc=8'], '--res-uc is an option of utlo, which is not on: add --method=utlo'),
        ([f'--data={data}', '--regan-sparsity=0.5'], '--regan-sparsity is an option of regan, which is not on: add --method=regan'),
        ([f'--data={data}', '--imp-rounds=2'], '--imp-rounds is an option of lottery, which is not on: add --method=lottery'),
        ([f'--data={data}', '--advaug-gamma=0.1'], '--advaug-gamma is an option of lottery'),
        ([f'--data={data}', '--transfer-stage=ft'], '--transfer-stage is an option of transfer, which is not on: add --method=transfer'),
        ([f'--data={data}', '--with-dataaug=true'], '--with-dataaug is an option of apa, which is not on: add --aug=apa'),
        ([f'--data={data}', '--apa-fixed-p=0.3'], '--apa-fixed-p is an option of apa, which is not on: add --aug=apa'),
        ([f'--data={data}', '--method=lottery', '--advaug-G-target=xx'], '--advaug-G-target must be b4 or ws, got xx'),
        # The base family's options (plugin options shared by the plugins that read them).
        ([f'--data={data}', '--aug=fixed', '--p=0.2', '--target=0.7'],
         '--target is an option of ada / apa, which is not on: add --aug=ada or --aug=apa, or drop --target'),
        ([f'--data={data}', '--aug=ada', '--p=0.3'],
         '--p is an option of fixed, which is not on: add --aug=fixed, or drop --p (ada adapts p itself; use --target to steer it)'),
        ([f'--data={data}', '--aug=noaug', '--augpipe=bgc'], '--augpipe is an option of ada / apa / fixed, which is not on'),
        ([f'--data={data}', '--target=1.5'], '--target must be between 0 and 1, got 1.5'),
        # Every check runs before the run directory exists, --dry-run included (item 4).
        ([f'--data={data}', '--cond=1', '--method=transfer', '--dry-run'], '--method=transfer starts from a pretrained network'),
    ]

def test_bad_inputs_give_one_clear_error(tmp_path, data):
    runner = CliRunner()
    outdir = tmp_path / 'out'
    for args, message in bad_input_cases(tmp_path, data):
        result = runner.invoke(train.build_cli(), [f'--outdir={outdir}', '--cfg=tiny', '--metrics=none', *args]
                               if not any(a.startswith('--cfg') or a.startswith('--metrics') for a in args)
                               else [f'--outdir={outdir}', *args])
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert message in result.output, (args, result.output)
        assert 'Traceback' not in result.output
        assert result.output.count('Error:') == 1
    assert not outdir.exists()      # nothing was created before the error

def test_base_family_options_as_users_type_them(tmp_path, data):
    """python train.py with --aug=ada --target --augpipe, then a full resume with --aug=fixed --p: what
    lands in training_options.json; a refused --target with --aug=fixed writes nothing."""
    def train_py(outdir, *args):
        return subprocess.run([sys.executable, 'train.py', f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
                               '--metrics=none', '--workers=0', '--kimg=0.008', '--snap=1', *args],
                              cwd=ROOT, capture_output=True, text=True)
    def options(run_dir):
        with open(os.path.join(run_dir, 'training_options.json')) as f:
            return json.load(f)
    runs = tmp_path / 'runs'
    proc = train_py(runs, '--aug=ada', '--target=0.7', '--augpipe=bgc')
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = train.list_snapshots(str(runs))[-1]
    o = options(os.path.dirname(first))
    assert o['plugin_names'] == ['ada'] and (o['plugin_opts']['target'], o['plugin_opts']['augpipe']) == (0.7, 'bgc')
    assert o['plugin_opts']['typed'] == ['augpipe', 'target'] and o['plugin_opts']['ada_kimg'] == 500
    assert o['resume_pkl'] is None and o['ema_rampup'] == 0.05 and 'ada-target0.7' in first
    proc = train_py(runs, '--aug=fixed', '--p=0.2', f'--resume={first}', '--kimg=0.016')
    assert proc.returncode == 0, proc.stderr[-2000:]
    o = options(os.path.dirname(train.list_snapshots(str(runs))[-1]))
    assert o['plugin_names'] == ['fixed'] and o['plugin_opts']['p'] == 0.2 and o['plugin_opts']['target'] == 0.6
    assert (o['resume_mode'], o['ema_rampup'], o['plugin_opts']['ada_kimg']) == ('full', 0.05, 100)
    refused = train_py(tmp_path / 'never', '--aug=fixed', '--p=0.2', '--target=0.7')
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr
    assert ('--target is an option of ada / apa, which is not on: add --aug=ada or --aug=apa, or drop --target'
            in refused.stderr)
    assert not (tmp_path / 'never').exists()

def test_a_broken_resume_file_is_refused_before_anything_is_written(tmp_path, data):
    """train.py reads the --resume file while it builds the config (it decides the resume mode)."""
    broken = tmp_path / 'notes.pkl'
    broken.write_bytes(b'not a pickle')
    outdir = tmp_path / 'out'
    result = CliRunner().invoke(train.build_cli(), [f'--outdir={outdir}', f'--data={data}', '--cfg=tiny', '--metrics=none',
                                                    f'--resume={broken}'])
    assert result.exit_code == 2 and 'Traceback' not in result.output
    assert f'Error: --resume: {broken} is not a valid network snapshot (truncated or corrupted)' in result.output
    assert not outdir.exists()

def test_metric_labels_select_the_metric_label_file(tmp_path, data):
    with open(os.path.join(data, 'lt_full.json'), 'w') as f:
        json.dump({'labels': [[f'00000/img{i:08d}.png', 1 - i % 2] for i in range(12)]}, f)
    base = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--cond=1', '--dry-run']
    c = train.build_cli().main(base + ['--metric-labels=lt_full.json'], standalone_mode=False)
    assert c.metric_set_kwargs.label_file == 'lt_full.json' and c.metric_set_kwargs.path == data
    assert c.training_set_kwargs.get('label_file') is None       # training labels unchanged
    c = train.build_cli().main(base, standalone_mode=False)
    assert c.metric_set_kwargs is None                            # metrics use the training set

def test_batch_gpu_sets_the_accumulation_round(tmp_path, data):
    base = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=cifar', '--metrics=none', '--dry-run']
    c = train.build_cli().main(base, standalone_mode=False)
    assert (c.batch_size, c.batch_gpu) == (64, 32)                # the preset: two rounds of 32 on one GPU
    c = train.build_cli().main(base + ['--batch-gpu=64'], standalone_mode=False)
    assert (c.batch_size, c.batch_gpu) == (64, 64)                # one round
    c = train.build_cli().main(base + ['--batch-gpu=16'], standalone_mode=False)
    assert (c.batch_size, c.batch_gpu) == (64, 16)

def test_options_of_active_plugins_and_their_default_values_pass(tmp_path, data):
    base = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none', '-n']
    c = train.build_cli().main(base + ['--cond=1', '--method=utlo', '--res_uc=4', '--add_uc=True', '--alpha=1.0'],
                               standalone_mode=False)
    assert c.plugin_names == ['ada', 'utlo'] and c.plugin_opts['res_uc'] == 4
    c = train.build_cli().main(base + ['--aug=apa', '--with-dataaug=true', '--apa-fixed-p=0.3'], standalone_mode=False)
    assert c.plugin_opts['apa_fixed_p'] == 0.3 and c.plugin_opts['with_dataaug'] is True
    c = train.build_cli().main(base + ['--diffaug-policy=color'], standalone_mode=False)   # this option turns its plugin on
    assert 'diffaug' in c.plugin_names
    assert not any(os.scandir(tmp_path))   # -n is upstream's short --dry-run: nothing written

def test_workers_default_follows_the_cores(tmp_path, data, monkeypatch):
    base = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--dry-run']
    for cores, workers in [(1, 1), (2, 2), (4, 3), (64, 3)]:
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid, n=cores: set(range(n)))
        assert train.build_cli().main(base, standalone_mode=False).data_loader_kwargs.num_workers == workers
    assert train.build_cli().main(base + ['--workers=2'], standalone_mode=False).data_loader_kwargs.num_workers == 2

def test_help_groups_plugin_options():
    result = CliRunner().invoke(train.build_cli(), ['--help'])
    assert result.exit_code == 0
    for option in ['--outdir', '--resume', '--freezed', '--snapshot-keep', '--tick', '--method', '--labels', '--detector']:
        assert option in result.output
    import plugins
    for readers, _opt in plugins.all_options():
        assert f'Options of {" / ".join(readers)}:' in result.output
    # The base family's options are plugin options, listed once under the plugins that read them.
    section = result.output.split('Options of ada / apa:')[1]
    assert '--target' in section.split('Options of')[0] and result.output.count('--target FLOAT') == 1

#----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_latest_continues(tmp_path, data):
    outdir = tmp_path / 'runs'
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
           '--metrics=none', '--workers=0', '--kimg=50', '--tick=0.016', '--snap=1', '--aug=ada', '--cond=1']
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        snaps = []
        while time.time() < deadline and not snaps and proc.poll() is None:
            time.sleep(0.2)
            snaps = train.list_snapshots(str(outdir))
        assert snaps, 'the run wrote no snapshot'
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    snap_path = train.list_snapshots(str(outdir))[-1]
    snap = load_pickle(snap_path)
    rs = snap['resume_state']
    nimg, batch_idx = rs['cur_nimg'], rs['batch_idx']
    assert nimg == 8 * batch_idx and nimg > 0

    def resume(kimg):
        argv = [f'--outdir={outdir}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--workers=0', f'--kimg={kimg}',
                '--tick=0.016', '--snap=1', '--aug=ada', '--cond=1', '--resume=latest']
        c = train.build_cli().main(argv + ['--dry-run'], standalone_mode=False)
        assert c.resume_pkl == snap_path
        return train.run_training(c)

    # Resume without training: everything is exactly the snapshot's state.
    same = resume(nimg / 1000)
    assert (same.cur_nimg, same.batch_idx, same.cur_tick) == (nimg, batch_idx, rs['cur_tick'])
    assert float(same.plugins['ada'].augment_pipe.p) == rs['plugins']['ada']['p'] == float(snap['augment_pipe'].p)
    for phase, key in [(same.phases[0], 'G_opt'), (same.phases[-1], 'D_opt')]:
        live, saved = phase.opt.state_dict(), rs[key]
        assert live['param_groups'] == saved['param_groups']
        for idx in saved['state']:
            for k, v in saved['state'][idx].items():
                assert torch.equal(torch.as_tensor(live['state'][idx][k]), torch.as_tensor(v))
    for name in ['G', 'D', 'G_ema']:
        for (ka, a), (kb, b) in zip(snap[name].state_dict().items(), same[name].state_dict().items()):
            assert ka == kb and torch.equal(a, b.cpu())

    # Resume and train 2 iterations: the counters and Adam step counts continue.
    more = resume((nimg + 16) / 1000)
    assert (more.cur_nimg, more.batch_idx) == (nimg + 16, batch_idx + 2)
    g_steps = sum(1 + (i % 4 == 0) for i in (batch_idx, batch_idx + 1))    # Gmain + Greg every 4
    d_steps = sum(1 + (i % 16 == 0) for i in (batch_idx, batch_idx + 1))   # Dmain + Dreg every 16
    for phase, key, steps in [(more.phases[0], 'G_opt', g_steps), (more.phases[-1], 'D_opt', d_steps)]:
        assert float(phase.opt.state_dict()['state'][0]['step']) == float(rs[key]['state'][0]['step']) + steps
    runs = sorted(os.listdir(outdir))
    assert runs[0].startswith('00000-') and runs[-1].startswith('00002-') and runs[-1].endswith('-resumelatest')
    stats = [json.loads(line) for line in open(os.path.join(outdir, runs[-1], 'stats.jsonl'))]
    assert stats[-1]['Progress/kimg']['mean'] == pytest.approx((nimg + 16) / 1000)

@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path, data):
    argv = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--workers=0', '--gpus=2',
            '--batch=8', '--kimg=0.024', '--tick=0.008', '--snap=1', '--aug=ada', '--cond=1']
    c = train.build_cli().main(argv + ['--dry-run'], standalone_mode=False)
    assert (c.num_gpus, c.batch_size, c.batch_gpu) == (2, 8, 4)
    assert train.run_training(c) is None           # trained in two spawned processes
    snap = load_pickle(os.path.join(c.run_dir, 'network-snapshot-000000.pkl'))
    rank_states = snap['resume_state']['rank_states']
    assert len(rank_states) == 2
    assert rank_states[0]['param_digest'] == rank_states[1]['param_digest']        # identical G, D, G_ema
    assert not torch.equal(rank_states[0]['rng']['torch'], rank_states[1]['rng']['torch'])  # own RNG streams
    assert snap['resume_state']['cur_nimg'] == 24 and snap['resume_state']['batch_idx'] == 3
    stats = [json.loads(line) for line in open(os.path.join(c.run_dir, 'stats.jsonl'))]
    # Iteration 0: Dmain + Dreg each report 4 real signs per rank, summed over both ranks.
    assert stats[0]['Loss/signs/real']['num'] == 16
    log = open(os.path.join(c.run_dir, 'log.txt')).read()
    assert 'tick 2' in log

#----------------------------------------------------------------------------

def test_resume_latest_and_run_dir_numbering(tmp_path):
    for run, kimg in [('00000-a', 4), ('00000-a', 12), ('00003-b', 0), ('00003-b', 8), ('00002-c', 40)]:
        os.makedirs(tmp_path / run, exist_ok=True)
        (tmp_path / run / f'network-snapshot-{kimg:06d}.pkl').write_bytes(b'x')
    os.makedirs(tmp_path / '00004-no-snapshots')
    assert train.resolve_resume('latest', str(tmp_path)) == str(tmp_path / '00003-b' / 'network-snapshot-000008.pkl')
    assert train.resolve_resume(str(tmp_path / '00000-a'), str(tmp_path)) == str(tmp_path / '00000-a' / 'network-snapshot-000012.pkl')
    assert train.resolve_resume('noresume', str(tmp_path)) is None
    assert train.resolve_resume('ffhq256', str(tmp_path)).startswith('https://')
    assert train.next_run_dir(str(tmp_path), 'x') == str(tmp_path / '00005-x')
    assert train.next_run_dir(str(tmp_path / 'new'), 'x') == str(tmp_path / 'new' / '00000-x')

def test_snapshot_keep_prunes_oldest(tmp_path):
    from training.snapshot import prune_snapshots
    for kimg in [0, 4, 8, 12]:
        (tmp_path / f'network-snapshot-{kimg:06d}.pkl').write_bytes(b'x')
    prune_snapshots(str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ['network-snapshot-000008.pkl', 'network-snapshot-000012.pkl']

def test_lazy_regularisation_adam_settings_and_ema_beta():
    from training.training_loop import make_optimizer_phases, update_ema
    G, D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    kw = dict(class_name='torch.optim.Adam', lr=0.002, betas=[0, 0.99], eps=1e-8)
    phases = make_optimizer_phases(G, D, kw, kw, G_reg_interval=4, D_reg_interval=None)
    assert [(p.name, p.interval) for p in phases] == [('Gmain', 1), ('Greg', 4), ('Dboth', 1)]
    group = phases[0].opt.param_groups[0]
    assert group['lr'] == pytest.approx(0.002 * 4 / 5) and group['betas'][1] == pytest.approx(0.99 ** (4 / 5))
    assert phases[0].opt is phases[1].opt and phases[2].opt.param_groups[0]['lr'] == 0.002
    G_ema = torch.nn.Linear(2, 2)
    with torch.no_grad():
        G.weight.fill_(1.0); G_ema.weight.fill_(0.0)
    beta = update_ema(G, G_ema, cur_nimg=10_000, batch_size=32, ema_kimg=10, ema_rampup=0.05)
    assert beta == pytest.approx(0.5 ** (32 / 500))          # ramp: ema_nimg = min(10000, 10000 * 0.05)
    assert torch.allclose(G_ema.weight, torch.full_like(G_ema.weight, 1 - beta))
    assert update_ema(G, G_ema, cur_nimg=10_000, batch_size=32, ema_kimg=10, ema_rampup=None) == pytest.approx(0.5 ** (32 / 10_000))

# Run under torchrun by the next test: joins the group the way train.py does, builds an optimizer
# (whose first construction imports torch._dynamo), leaves the group and prints the thread counts.
_GROUP_RELEASE_SCRIPT = """
import gc, os, sys, torch
sys.path.insert(0, sys.argv[1])
import dnnlib, train
threads = lambda: len(os.listdir('/proc/self/task'))
before = threads()
rank = int(os.environ['RANK'])
train.join_process_group(dnnlib.EasyDict(num_gpus=2, device='cpu'), rank, rank, 'env://')
torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
x = torch.ones(2); torch.distributed.all_reduce(x)
joined = threads()
torch.distributed.destroy_process_group(); gc.collect()
print(f'rank {rank} threads before {before} joined {joined} after {threads()}', flush=True)
"""

@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='counts threads through /proc')
def test_left_process_group_stops_its_threads(tmp_path):
    # A group that outlives destroy_process_group() keeps gloo threads running into interpreter
    # shutdown, where they abort the process now and then (1 run in ~8 of the torchrun test below).
    script = tmp_path / 'group.py'
    script.write_text(_GROUP_RELEASE_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script), ROOT]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = re.findall(r'rank (\d) threads before (\d+) joined (\d+) after (\d+)', proc.stdout)
    assert sorted(rank for rank, *_ in lines) == ['0', '1'], proc.stdout
    for _rank, before, joined, after in lines:
        assert int(joined) > int(before)    # the group's threads ran
        assert int(after) == int(before)    # and are gone once the group is left

@pytest.mark.slow
def test_torchrun_two_workers_share_one_run_dir(tmp_path, data):
    # --standalone: torchrun picks a free port itself (no race between choosing one and binding it).
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'train.py'), f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none',
           '--workers=0', '--kimg=0.016', '--tick=0.008', '--snap=1', '--batch=8']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = os.listdir(tmp_path)
    assert len(runs) == 1 and proc.stdout.count('Training options:') == 1
    rs = load_pickle(os.path.join(tmp_path, runs[0], 'network-snapshot-000000.pkl'))['resume_state']
    assert len(rs['rank_states']) == 2 and rs['rank_states'][0]['param_digest'] == rs['rank_states'][1]['param_digest']
    assert rs['options']['num_gpus'] == 2 and rs['options']['batch_gpu'] == 4
