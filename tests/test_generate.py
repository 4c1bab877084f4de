"""generate.py: files and sizes, grid layout, determinism per seed, pixels equal to G's
quantised output, --class handling for conditional networks, video frames."""

import copy
import os
import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate

networks = pytest.importorskip('training.networks')

G_KWARGS = dict(z_dim=8, w_dim=8, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))

def _write_snapshot(path, c_dim=0, seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(c_dim=c_dim, **G_KWARGS).eval().requires_grad_(False)
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    with open(path, 'wb') as f:
        pickle.dump(dict(G=G, D=D.eval().requires_grad_(False), G_ema=copy.deepcopy(G), augment_pipe=None,
                         training_set_kwargs=None), f)
    return G

@pytest.fixture(scope='module')
def uncond(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('uncond') / 'network-snapshot-000000.pkl')
    return path, _write_snapshot(path, c_dim=0)

@pytest.fixture(scope='module')
def cond(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('cond') / 'network-snapshot-000000.pkl')
    return path, _write_snapshot(path, c_dim=3, seed=1)

def _run(*args):
    result = CliRunner().invoke(generate.generate_images, [str(a) for a in args])
    return result

def _png(path):
    return np.array(PIL.Image.open(path))

def test_parse_seeds():
    assert generate.parse_seeds('0-3,10') == [0, 1, 2, 3, 10]
    assert generate.parse_seeds('7') == [7]
    for bad in ['a', '5-2', '']:
        with pytest.raises(Exception):
            generate.parse_seeds(bad)

def test_writes_seed_pngs_and_grid(tmp_path, uncond):
    path, G = uncond
    out = tmp_path / 'out'
    r = _run('--network', path, '--seeds', '0-2,5,9', '--outdir', out, '--grid')
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ['grid.png', 'seed0000.png', 'seed0001.png', 'seed0002.png', 'seed0005.png', 'seed0009.png']
    img = _png(out / 'seed0005.png')
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    # Pixels are G's output for the seed's z, quantised like the metrics (noise_mode=const).
    z = torch.from_numpy(np.random.RandomState(5).randn(1, 8).astype(np.float32))
    with torch.no_grad():
        ref = (G(z, torch.zeros(1, 0), noise_mode='const') * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(img, ref[0].permute(1, 2, 0).numpy())
    # 5 images -> 3 columns x 2 rows, row-major, the empty cell black.
    grid = _png(out / 'grid.png')
    assert grid.shape == (32, 48, 3)
    np.testing.assert_array_equal(grid[16:32, 0:16], _png(out / 'seed0005.png'))
    np.testing.assert_array_equal(grid[0:16, 32:48], _png(out / 'seed0002.png'))
    assert grid[16:32, 32:48].max() == 0

def test_same_seed_same_png(tmp_path, uncond):
    path, _ = uncond
    for d in ('a', 'b'):
        assert _run('--network', path, '--seeds', '3-4', '--outdir', tmp_path / d, '--noise-mode', 'random').exit_code == 0
    assert (tmp_path / 'a' / 'seed0003.png').read_bytes() == (tmp_path / 'b' / 'seed0003.png').read_bytes()
    assert not np.array_equal(_png(tmp_path / 'a' / 'seed0003.png'), _png(tmp_path / 'a' / 'seed0004.png'))

def test_class_required_for_conditional(tmp_path, cond):
    path, G = cond
    r = _run('--network', path, '--seeds', '0', '--outdir', tmp_path / 'x')
    assert r.exit_code != 0 and '--class is required' in r.output and '0..2' in r.output
    r = _run('--network', path, '--seeds', '0', '--outdir', tmp_path / 'x', '--class', '3')
    assert r.exit_code != 0 and 'out of range' in r.output
    for k in (0, 2):
        r = _run('--network', path, '--seeds', '0', '--outdir', tmp_path / f'c{k}', '--class', k)
        assert r.exit_code == 0, r.output
    assert not np.array_equal(_png(tmp_path / 'c0' / 'seed0000.png'), _png(tmp_path / 'c2' / 'seed0000.png'))

def test_video_frames(tmp_path, uncond):
    imageio = pytest.importorskip('imageio')
    pytest.importorskip('imageio_ffmpeg')
    path, _ = uncond
    r = _run('--network', path, '--seeds', '0,1', '--outdir', tmp_path, '--video', '--frames', 3, '--fps', 10)
    assert r.exit_code == 0, r.output
    with imageio.get_reader(str(tmp_path / 'interp.mp4')) as reader:
        frames = [f for f in reader]
    assert len(frames) == 6 and frames[0].shape == (16, 16, 3)  # 2 transitions (looping) x 3 frames

def test_video_without_ffmpeg_is_a_clear_error(tmp_path, uncond, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', None)  # makes the import fail
    r = _run('--network', uncond[0], '--seeds', '0', '--outdir', tmp_path, '--video')
    assert r.exit_code != 0 and 'imageio-ffmpeg' in r.output

def test_safe_export_gives_identical_images(tmp_path, uncond):
    legacy = pytest.importorskip('legacy')
    path, _ = uncond
    with open(path, 'rb') as f:
        data = pickle.load(f)
    st_path, _ = legacy.export_safe(data, str(tmp_path / 'net'))
    assert _run('--network', path, '--seeds', '6', '--outdir', tmp_path / 'pkl').exit_code == 0
    r = _run('--network', st_path, '--seeds', '6', '--outdir', tmp_path / 'safe', '--safe')
    assert r.exit_code == 0, r.output
    assert (tmp_path / 'pkl' / 'seed0006.png').read_bytes() == (tmp_path / 'safe' / 'seed0006.png').read_bytes()
    r = _run('--network', path, '--seeds', '6', '--outdir', tmp_path / 'x', '--safe')
    assert r.exit_code != 0 and 'pickle' in r.output

def test_all_classes_grid_one_row_per_class_zoomed(tmp_path, cond):
    path, G = cond
    out = tmp_path / 'out'
    r = _run('--network', path, '--seeds', '4-5', '--all-classes', '--grid', '--zoom', '3', '--outdir', out)
    assert r.exit_code == 0, r.output
    names = [f'class{k:02d}-seed{s:04d}.png' for k in range(3) for s in (4, 5)]
    assert sorted(os.listdir(out)) == sorted(names + ['grid.png'])
    grid = _png(out / 'grid.png')
    assert grid.shape == (3 * 16 * 3, 2 * 16 * 3, 3)   # rows = classes, columns = seeds, 3x nearest neighbour
    for k in range(3):
        for j, s in enumerate((4, 5)):
            cell = grid[k * 48:(k + 1) * 48, j * 48:(j + 1) * 48]
            np.testing.assert_array_equal(cell, _png(out / f'class{k:02d}-seed{s:04d}.png').repeat(3, 0).repeat(3, 1))
    assert not np.array_equal(_png(out / 'class00-seed0004.png'), _png(out / 'class01-seed0004.png'))
    r = _run('--network', path, '--seeds', '0', '--all-classes', '--class', '1', '--outdir', tmp_path / 'x')
    assert r.exit_code != 0 and '--all-classes replaces --class' in r.output

def test_all_classes_needs_a_conditional_network(tmp_path, uncond):
    r = _run('--network', uncond[0], '--seeds', '0', '--all-classes', '--outdir', tmp_path / 'out')
    assert r.exit_code != 0 and 'needs a conditional network' in r.output
    assert not (tmp_path / 'out').exists()
