"""train.py options that restore the reference codes' settings (issue 14, items 5 and 6), run
as users run them: the low_shot preset and --map (DiffAugment), --reg-gain and --pl-weight (UTLO)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import train
from helpers import load_pickle
from test_train_cli import make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('fidelity') / 'ds16')

def train_py(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout

def dry_run_options(tmp_path, data, *args, in_process=True):
    """The training options of train.py --dry-run: in this process, or the JSON a subprocess prints."""
    argv = [f'--outdir={tmp_path}', f'--data={data}', '--metrics=none', '--aug=noaug', '--dry-run', *args]
    if in_process:
        return json.loads(json.dumps(train.build_cli().main(argv, standalone_mode=False)))
    text = train_py(*argv)
    return json.loads(text.split('Training options:')[1].split('Output directory:')[0])

def test_low_shot_preset_and_map(tmp_path, data):
    c = dry_run_options(tmp_path, data, '--cfg=low_shot', '--reg-gain=none', '--pl-weight=0.5', '--map=3', in_process=False)
    assert (c['loss_kwargs']['reg_gain'], c['loss_kwargs']['pl_weight']) == ('none', 0.5)
    assert c['G_kwargs']['mapping_kwargs']['num_layers'] == 3
    assert c['run_dir'].endswith('-low_shot-map3-pl0.5-reggain-none-noaug')
    c = dry_run_options(tmp_path, data, '--cfg=low_shot')
    assert (c['total_kimg'], c['batch_size'], c['batch_gpu']) == (300, 8, 8)
    assert c['G_kwargs']['synthesis_kwargs']['channel_base'] == c['D_kwargs']['channel_base'] == 32768   # fmaps 1
    assert c['G_opt_kwargs']['lr'] == c['D_opt_kwargs']['lr'] == 0.002
    assert (c['loss_kwargs']['r1_gamma'], c['loss_kwargs']['style_mixing_prob']) == (10, 0.9)
    assert (c['ema_kimg'], c['ema_rampup']) == (10, None)
    assert c['G_kwargs']['mapping_kwargs']['num_layers'] == 2
    assert c['D_kwargs']['epilogue_kwargs']['mbstd_group_size'] == 4
    assert c['image_snapshot_ticks'] == c['network_snapshot_ticks'] == 10
    assert c['run_dir'].endswith('-low_shot-noaug')
    # ref_gpus = gpus: the batch of 8 is split over the processes; --map overrides any preset.
    c = dry_run_options(tmp_path, data, '--cfg=low_shot', '--gpus=2', '--map=5')
    assert c['loss_kwargs']['pl_weight'] == 2 and c['loss_kwargs']['reg_gain'] == 'interval'
    assert (c['batch_size'], c['batch_gpu']) == (8, 4)
    assert c['G_kwargs']['mapping_kwargs']['num_layers'] == 5 and c['run_dir'].endswith('-low_shot-map5-noaug')
    c = dry_run_options(tmp_path, data, '--cfg=stylegan2', '--map=3')
    assert c['G_kwargs']['mapping_kwargs']['num_layers'] == 3

def test_reg_gain_and_pl_weight_defaults_and_overrides(tmp_path, data):
    c = dry_run_options(tmp_path, data, '--cfg=cifar')
    assert (c['loss_kwargs']['reg_gain'], c['loss_kwargs']['pl_weight']) == ('interval', 0)
    c = dry_run_options(tmp_path, data, '--cfg=cifar', '--pl-weight=2', '--reg-gain=none')
    assert (c['loss_kwargs']['reg_gain'], c['loss_kwargs']['pl_weight']) == ('none', 2)
    assert c['run_dir'].endswith('-cifar-pl2-reggain-none-noaug')
    # The lazy Adam scaling is the loop's, from the same optimizer settings either way.
    assert c['G_opt_kwargs'] == dry_run_options(tmp_path, data, '--cfg=cifar')['G_opt_kwargs']

@pytest.mark.slow
def test_reg_gain_none_pl_weight_map_train(tmp_path, data):
    """A few iterations with the three options: the path-length term is pl_weight x the penalty."""
    argv = [f'--outdir={tmp_path}', f'--data={data}', '--cfg=tiny', '--metrics=none', '--workers=0', '--kimg=0.04',
            '--tick=0.008', '--snap=5', '--reg-gain=none', '--pl-weight=0.5', '--map=1', '--aug=noaug', '--dry-run']
    c = train.build_cli().main(argv, standalone_mode=False)
    c.G_kwargs.update(z_dim=32, w_dim=32)                  # smaller than tiny, to keep the test fast
    c.G_kwargs.synthesis_kwargs.channel_max = c.D_kwargs.channel_max = 16
    result = train.run_training(c)
    for phase in result.phases:         # lazy Adam scaling kept: lr * k/(k+1), betas ** (k/(k+1))
        k = 4 if phase.name.startswith('G') else 16
        assert phase.opt.param_groups[0]['lr'] == pytest.approx(train.CFG_SPECS['tiny']['lrate'] * k / (k + 1))
        assert phase.opt.param_groups[0]['betas'][1] == pytest.approx(0.99 ** (k / (k + 1)))
    with open(os.path.join(c.run_dir, 'training_options.json')) as f:
        options = json.load(f)
    assert (options['loss_kwargs']['reg_gain'], options['loss_kwargs']['pl_weight']) == ('none', 0.5)
    with open(os.path.join(c.run_dir, 'stats.jsonl')) as f:
        reg = {(l['Loss/G/reg']['mean'], l['Loss/pl_penalty']['mean']) for l in map(json.loads, f)}
    assert len(reg) == 2                            # Greg at iterations 0 and 4
    for g_reg, penalty in reg:
        assert penalty > 0 and g_reg == pytest.approx(0.5 * penalty, rel=1e-6)
    snap = load_pickle(os.path.join(c.run_dir, 'network-snapshot-000000.pkl'))
    assert [n for n, _ in snap['G'].mapping.named_children() if n.startswith('fc')] == ['fc0']

def test_bad_values_give_one_error(tmp_path, data):
    for args, message in [(['--map=0'], '--map=0'), (['--pl-weight=-1'], '--pl-weight=-1 must be >= 0'),
                          (['--reg-gain=half'], "Invalid value for '--reg-gain'")]:
        result = CliRunner().invoke(train.build_cli(), [f'--outdir={tmp_path / "out"}', f'--data={data}', '--cfg=tiny',
                                                        '--metrics=none', *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / 'out').exists()

def test_help_lists_the_options():
    result = CliRunner().invoke(train.build_cli(), ['--help'])
    for text in ['--map', '--pl-weight', '--reg-gain', 'low_shot']:
        assert text in result.output

def test_differences_table_names_real_options():
    """docs/differences.md: every --option its table names exists in train.py or lt_dataset.py."""
    import re
    import lt_dataset
    text = open(os.path.join(ROOT, 'docs', 'differences.md'), encoding='utf-8').read()
    rows = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| ---')]
    assert len(rows) > 20
    known = {opt for cmd in (train.build_cli(), lt_dataset.main) for p in cmd.params for opt in p.opts}
    named = set(re.findall(r'(--[a-zA-Z][\w-]*)', '\n'.join(rows)))
    assert named and named <= known, named - known
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    assert '(docs/differences.md)' in readme
