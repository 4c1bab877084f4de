"""Training curves and run logging: panels read back from a run directory, curves.png and the
TensorBoard fakes grids of a real (tiny) run, plugins' words on the tick line, plot_runs.py, and
W&B in offline mode (skipped when wandb is not installed)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import plugins
import train
from click.testing import CliRunner
from plugin_train_util import make_dataset, tiny_config
from plugin_train_util import train as run_loop
from training import curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip('matplotlib')

def _write_run(run_dir, offset=0.0, ticks=4):
    """A run directory with stats.jsonl (ticks every 0.5 kimg) and an FID at kimg 0 and 1."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'stats.jsonl'), 'w') as f:
        for t in range(ticks):
            line = {'Progress/kimg': dict(num=1, mean=0.5 * t), 'Loss/G/loss': dict(num=4, mean=1.0 + t + offset),
                    'Loss/D/loss': dict(num=4, mean=2.0 - t), 'Loss/scores/real': dict(num=4, mean=0.1 * t),
                    'ReGAN/sparsity': dict(num=1, mean=0.3), 'ReGAN/sparsity/synthesis.b8.conv0.weight': dict(num=1, mean=0.2),
                    'Lottery/advaug/scores_G': dict(num=2, mean=-t), 'Resources/cpu_mem_gb': dict(num=1, mean=0.4),
                    'APA/replaced_fraction': dict(num=0, mean=None), 'timestamp': 1.0}
            f.write(json.dumps(line) + '\n')
        f.write('{"Progress/kimg": {"num": 1, "me')   # a line cut short by a killed run
    with open(os.path.join(run_dir, 'metric-fid50k_full.jsonl'), 'w') as f:
        for kimg, fid in [(0, 80.0 + offset), (1, 60.0)]:
            f.write(json.dumps(dict(results=dict(fid50k_full=fid), metric='fid50k_full',
                                    snapshot_pkl=f'network-snapshot-{kimg:06d}.pkl')) + '\n')
    return str(run_dir)

def test_read_and_panels(tmp_path):
    run = _write_run(tmp_path / 'run')
    stats, metrics = curves.read_stats(run), curves.read_metrics(run)
    np.testing.assert_array_equal(stats['Loss/G/loss'][0], [0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(stats['Loss/G/loss'][1], [1, 2, 3, 4])
    assert 'APA/replaced_fraction' not in stats   # never reported: no points
    np.testing.assert_array_equal(metrics['fid50k_full'][0], [0, 1])
    np.testing.assert_array_equal(metrics['fid50k_full'][1], [80, 60])
    layout = {title: (names, source) for title, names, source in curves.panel_layout(set(stats), set(metrics))}
    assert list(layout) == ['G and D losses', "D's mean score (real / fake)", 'Lottery/advaug', 'ReGAN/sparsity',
                            'metric fid50k_full']
    assert layout['G and D losses'][0] == [('Loss/D/loss', False), ('Loss/G/loss', False)]
    # the per-layer sparsity is a thin line beside the overall one
    assert layout['ReGAN/sparsity'][0] == [('ReGAN/sparsity', False), ('ReGAN/sparsity/synthesis.b8.conv0.weight', True)]
    assert layout['metric fid50k_full'] == ([('fid50k_full', False)], 'metrics')
    out = curves.plot_runs([run], str(tmp_path / 'c.png'))
    assert PIL.Image.open(out).size == (1248, 2 * 256)   # 5 panels: 3 columns x 2 rows at 80 dpi

def test_plot_runs_command(tmp_path):
    a, b = _write_run(tmp_path / '00003-a'), _write_run(tmp_path / '00004-b', offset=0.5)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, 'plot_runs.py', a, b, f'--out={tmp_path / "cmp.png"}'], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    img = np.array(PIL.Image.open(tmp_path / 'cmp.png').convert('RGB'))
    assert img.shape == (512, 1248, 3)
    for color in [(31, 119, 180), (255, 127, 14)]:   # one colour per run (matplotlib's first two)
        assert (img == color).all(axis=2).sum() > 200, color
    r = CliRunner().invoke(__import__('plot_runs').plot_runs, [str(tmp_path), '--out', str(tmp_path / 'x.png')])
    assert r.exit_code == 2 and 'no stats.jsonl' in r.output and not (tmp_path / 'x.png').exists()

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('ds') / 'ds')

def test_tiny_run_curves_tensorboard_grids_and_status(tmp_path, data, capsys):
    c = tiny_config(data, tmp_path / 'run', aug='ada', methods=['regan'], kimg=0.012, regan_warmup=100)
    c.update(network_snapshot_ticks=2, image_snapshot_ticks=1)   # ticks at 4, 8, 12 images: snapshots at the 1st and last
    run_loop(c)
    out = capsys.readouterr().out
    ticks = [line for line in out.splitlines() if line.startswith('tick ')]
    assert len(ticks) == 3 and all('augment 0.000 regan warmup' in line for line in ticks)
    assert os.path.isfile(os.path.join(c.run_dir, 'curves.png'))
    assert PIL.Image.open(os.path.join(c.run_dir, 'curves.png')).size[0] == 1248
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(c.run_dir, size_guidance={'images': 0}).Reload()
    images = events.Images('fakes')
    assert len(images) == 3   # fakes000000.png at every tick (same kimg, three grids)
    grid = np.array(PIL.Image.open(os.path.join(c.run_dir, 'fakes000000.png')))
    assert (images[0].height, images[0].width) == grid.shape[:2]

def test_status_text_of_apa_and_lottery():
    opts = dict(plugins.default_opts(), imp_rounds=3, imp_kimg=1, apa_fixed_p=0.25, target=0.6, augpipe='bgc', ada_kimg=500)
    reg = plugins.registry()
    pset = plugins.PluginSet([reg['apa'], reg['lottery']], opts, 'cpu')
    assert pset.status_text() == ['apa-p 0.250', 'lottery round 0/3']
    assert plugins.PluginSet([reg['noaug']], opts, 'cpu').status_text() == []

#----------------------------------------------------------------------------
# W&B, --desc and UTLO's spellings.

def wandb_records(path, block=32768):
    """The protobuf records of an offline run's .wandb file: a 7-byte file header, then records
    in 32 KiB blocks, each piece behind a (crc32, length, type) header; type 1 = whole record,
    2 / 3 / 4 = first / middle / last piece."""
    import struct
    from wandb.proto import wandb_internal_pb2
    data = open(path, 'rb').read()
    pos, pieces = 7, b''
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0:
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b''
            yield record

def test_wandb_offline_logs_scalars_grids_and_config(tmp_path, data, monkeypatch):
    pytest.importorskip('wandb', reason='wandb is not installed (pip install wandb)')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    c = tiny_config(data, tmp_path / 'run', aug='noaug', kimg=0.008)
    c.update(image_snapshot_ticks=1, network_snapshot_ticks=1, wandb_project='ldgan-test', options=dict(batch_size=4, note='x'))
    run_loop(c)
    (path,) = glob.glob(os.path.join(c.run_dir, 'wandb', 'offline-run-*', 'run-*.wandb'))
    records = list(wandb_records(path))
    (run,) = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    assert run.project == 'ldgan-test' and run.display_name == 'run'
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config['batch_size'] == 4 and config['note'] == 'x'
    history = [{(i.key or '/'.join(i.nested_key)): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof('record_type') == 'history']
    ticks = [json.loads(line) for line in open(os.path.join(c.run_dir, 'stats.jsonl'))]
    assert len(history) == len(ticks) == 2
    for logged, tick in zip(history, ticks):
        assert json.loads(logged['Loss/G/loss']) == pytest.approx(tick['Loss/G/loss']['mean'])
        assert json.loads(logged['kimg']) == pytest.approx(tick['Progress/kimg']['mean'])
        assert json.loads(logged['fakes/_type']) == 'image-file' and json.loads(logged['curves/_type']) == 'image-file'

def test_utlo_spellings_desc_and_wandb_import(tmp_path, data):
    """The UTLO seed's --wandb_proj and --description (paths, sizes and GPU count adapted; the
    UTLO options in this project's spelling)."""
    args = [f'--outdir={tmp_path}', f'--data={data}', '--fname=dataset.json', '--snap=500', '--mirror=True', '--seed=69',
            '--gpus=1', '--batch=4', '--wandb_proj=utlo_af', '--metrics=none', '--description=example-run-af',
            '--cond=True', '--method=utlo', '--add-uc=True', '--res-uc=8', '--alpha=1.0', '--dry-run']
    c = train.build_cli().main(args, standalone_mode=False)
    assert c.wandb_project == 'utlo_af' and c.run_dir.endswith('-example-run-af')
    r = CliRunner().invoke(train.build_cli(), [f'--outdir={tmp_path}', f'--data={data}', '--desc=a b', '--dry-run'])
    assert r.exit_code == 2 and '--desc' in r.output and 'letters, digits' in r.output
    # wandb is imported only when asked for
    code = 'import sys, train, training.training_loop; sys.exit("wandb" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 0
