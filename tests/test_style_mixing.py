"""style_mixing.py: the grid's size and layout, and each mixed image equal to the one rendered from
hand-built ws (row seed's w with the column seed's w in the --styles layers)."""

import copy
import http.server
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import style_mixing
from training import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

G_KWARGS = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))

@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    torch.manual_seed(2)
    G = networks.Generator(**G_KWARGS).eval().requires_grad_(False)
    path = tmp_path_factory.mktemp('mix') / 'snap.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(G=G, D=None, G_ema=copy.deepcopy(G), augment_pipe=None, training_set_kwargs=None), f)
    return str(path), G

def _png(path):
    return np.array(PIL.Image.open(path))

def _w(G, seed, psi):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, 8).astype(np.float32))
    return G.mapping(z, torch.zeros(1, 0), truncation_psi=psi)[0]

def test_grid_and_images_match_hand_built_ws(snapshot, tmp_path):
    path, G = snapshot
    assert G.num_ws == 6   # 16x16: 4, 8, 16 -> layers 0..5
    out = tmp_path / 'out'
    # upstream README's command, with our network and 3 rows x 2 columns
    r = CliRunner().invoke(style_mixing.generate_style_mix, [f'--outdir={out}', '--rows=85,100,75', '--cols=55,821',
                                                             '--styles=0-2', '--trunc=0.7', f'--network={path}'])
    assert r.exit_code == 0, r.output
    names = sorted(os.listdir(out))
    assert names == sorted(['grid.png'] + [f'{s}-{s}.png' for s in (85, 100, 75, 55, 821)]
                           + [f'{r}-{c}.png' for r in (85, 100, 75) for c in (55, 821)])
    grid = _png(out / 'grid.png')
    assert grid.shape == (4 * 16, 3 * 16, 3)
    assert grid[:16, :16].max() == 0                                     # empty corner
    np.testing.assert_array_equal(grid[:16, 32:48], _png(out / '821-821.png'))   # top row: column seeds
    np.testing.assert_array_equal(grid[48:64, :16], _png(out / '75-75.png'))     # left column: row seeds
    np.testing.assert_array_equal(grid[32:48, 16:32], _png(out / '100-55.png'))
    # 100-55: seed 100's w with seed 55's w in layers 0, 1, 2, rendered by hand.
    w_row, w_col = _w(G, 100, 0.7), _w(G, 55, 0.7)
    ws = torch.cat([w_col[:3], w_row[3:]])[None]
    with torch.no_grad():
        ref = (G.synthesis(ws, noise_mode='const') * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(_png(out / '100-55.png'), ref)
    assert not np.array_equal(ref, _png(out / '100-100.png'))   # the mix changed the image

def test_styles_out_of_range(snapshot, tmp_path):
    path, _ = snapshot
    r = CliRunner().invoke(style_mixing.generate_style_mix, ['--network', path, '--rows=1', '--cols=2', '--styles=0-6',
                                                             '--outdir', str(tmp_path / 'o')])
    assert r.exit_code == 2 and 'layers 0..5' in r.output and '6 is out of range' in r.output
    assert not (tmp_path / 'o').exists()

def test_upstream_command_with_a_network_url(tmp_path):
    """upstream-commands.md's style_mixing line as typed, the network (32x32: 8 ws, so the default
    --styles=0-6 fits) served on 127.0.0.1."""
    torch.manual_seed(3)
    G = networks.Generator(**dict(G_KWARGS, img_resolution=32)).eval().requires_grad_(False)
    path = str(tmp_path / 'metfaces.pkl')
    with open(path, 'wb') as f:
        pickle.dump(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), f)
    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = open(path, 'rb').read()
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Serve)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{httpd.server_address[1]}/metfaces.pkl'
        env = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=str(tmp_path / 'cache'))
        r = subprocess.run([sys.executable, 'style_mixing.py', f'--outdir={tmp_path / "out"}', '--rows=85,100,75,458,1500',
                            '--cols=55,821,1789,293', f'--network={url}'], cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        httpd.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(os.listdir(tmp_path / 'out')) == 1 + 9 + 5 * 4
    assert _png(tmp_path / 'out' / 'grid.png').shape == (6 * 32, 5 * 32, 3)
