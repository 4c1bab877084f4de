"""projector.py: its schedules and noise penalty against hand-computed values, a projection that
recovers the w a network made its target from (random-weight VGG16), the command's files, the
VGG16 coming from a URL (local HTTP server) or failing with the offline message, and
generate.py rendering projected_w.npz under both spellings."""

import copy
import functools
import http.server
import math
import os
import pickle
import shutil
import subprocess
import sys
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
import projector
from metrics import detectors
from training import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G_KWARGS = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))

def _generator(seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(**G_KWARGS).eval().requires_grad_(False)
    with torch.no_grad():   # noise on, so the noise maps matter to the image
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.02)
    return G

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('projector')
    G = _generator()
    with open(d / 'snap.pkl', 'wb') as f:
        pickle.dump(dict(G=G, D=None, G_ema=copy.deepcopy(G), augment_pipe=None, training_set_kwargs=None), f)
    vgg = detectors.save_random_detector(str(d / 'vgg16.pt'), kind='vgg16')
    return dict(dir=d, G=G, pkl=str(d / 'snap.pkl'), vgg=vgg)

def _target_from_w(G, w):
    with torch.no_grad():
        return generate.to_uint8(G.synthesis(w, noise_mode='const'))[0]

#----------------------------------------------------------------------------

def test_learning_rate_schedule():
    lr = functools.partial(projector.learning_rate, num_steps=1000, initial_lr=0.1)
    assert lr(0) == 0.0
    assert lr(25) == pytest.approx(0.05)          # halfway up the 50-step ramp
    assert lr(500) == pytest.approx(0.1)          # flat in the middle
    assert lr(875) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))   # halfway down the cosine
    assert projector.w_noise_scale(0, 1000, 2.0) == pytest.approx(0.1)
    assert projector.w_noise_scale(375, 1000, 2.0) == pytest.approx(0.1 * 0.25)
    assert projector.w_noise_scale(750, 1000, 2.0) == 0.0

def test_noise_autocorrelation_values():
    # A constant map correlates fully with its shift at every scale: 32, 16, 8 -> 3 scales x 2 axes.
    assert float(projector.noise_autocorrelation([torch.ones(32, 32)])) == pytest.approx(6.0)
    # A checkerboard is anti-correlated by one pixel (-1 each axis) and constant 0 once halved.
    checker = torch.tensor([[(-1.0) ** (x + y) for x in range(16)] for y in range(16)])
    assert float(projector.noise_autocorrelation([checker])) == pytest.approx(2.0)
    # Against float64 by hand on a random map of side 8 (one scale).
    x = torch.randn(8, 8, dtype=torch.float64)
    ref = (x * x.roll(1, 1)).mean() ** 2 + (x * x.roll(1, 0)).mean() ** 2
    assert float(projector.noise_autocorrelation([x])) == pytest.approx(float(ref), rel=1e-12)

def test_projection_recovers_known_w(files):
    """The target is the network's own image of a known w. From the mean w, 40 steps bring w to
    within 1/8 of its starting error (measured 1.745 -> 0.127) and the LPIPS distance of the
    image of w (G's own noise) down 8x (measured 0.0691 -> 0.0058)."""
    G = files['G']
    vgg, _ = detectors.load_detector(files['vgg'], kind='vgg16')
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 8).astype(np.float32))
    w_true = G.mapping(z, torch.zeros(1, 0))
    target = torch.from_numpy(_target_from_w(G, w_true)).permute(2, 0, 1)
    noise_before = [n.clone() for n in projector.noise_maps_of(G)]
    ws, dists = projector.project(G, target, vgg, num_steps=40, w_avg_samples=1000, seed=1, log=lambda *a: None)
    assert ws.shape == (40, 8) and dists.shape == (40,)
    w_mean, _ = projector.w_statistics(G, torch.zeros(1, 0), 1000, seed=1)
    start_err = float((w_mean[0, 0] - w_true[0, 0]).norm())
    end_err = float((ws[-1] - w_true[0, 0]).norm())
    assert end_err < start_err / 8, (start_err, end_err)
    target_features = projector.lpips_features(vgg, target[None].float())
    def dist(w):
        img = projector.render(G, w[None, None].expand(-1, G.num_ws, -1))
        return float((projector.lpips_features(vgg, (img + 1) * 127.5) - target_features).square().sum())
    assert dist(ws[-1]) < dist(w_mean[0, 0]) / 8
    assert dists[-1] < dists[0] / 6   # as measured inside the loop (perturbed w, optimised noise): 9x
    # project() optimises noise maps in a copy: G's own buffers are untouched.
    assert all(torch.equal(a, b) for a, b in zip(noise_before, projector.noise_maps_of(G)))

#----------------------------------------------------------------------------

def _cli(*args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)

def test_upstream_commands_project_then_generate(files, server, tmp_path, monkeypatch):
    """upstream-commands.md's projector and generate --projected_w lines: the network from a URL,
    the target under ~, the VGG16 from its default URL's cache entry; only --num-steps is added."""
    G = files['G']
    home, cache = tmp_path / 'home', tmp_path / 'cache'
    w_true = G.mapping(torch.from_numpy(np.random.RandomState(3).randn(1, 8).astype(np.float32)), torch.zeros(1, 0))
    home.mkdir()
    PIL.Image.fromarray(np.repeat(np.repeat(_target_from_w(G, w_true), 4, 0), 4, 1)).save(home / 'mytargetimg.png')   # 64x64
    env = dict(HOME=str(home), DNNLIB_CACHE_DIR=str(cache))
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(cache))
    vgg_cached = detectors._cached_download_path(detectors.VGG16_URL)
    os.makedirs(os.path.dirname(vgg_cached))
    shutil.copyfile(files['vgg'], vgg_cached)
    out = tmp_path / 'out'
    network = server + '/ffhq.pkl'
    r = _cli('projector.py', f'--outdir={out}', '--target=~/mytargetimg.png', f'--network={network}',
             '--num-steps=6', '--w-avg-samples=500', env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(out)) == ['proj.mp4', 'proj.png', 'projected_w.npz', 'target.png']
    target = np.array(PIL.Image.open(out / 'target.png'))
    assert target.shape == (16, 16, 3)   # resized to the network's resolution
    w = np.load(out / 'projected_w.npz')['w']
    assert w.shape == (1, G.num_ws, 8) and np.all(w == w[:, :1])   # one w for every layer
    import imageio
    frames = imageio.mimread(out / 'proj.mp4')
    assert len(frames) == 6 and frames[0].shape == (16, 32, 3)   # target | projection, one frame per step
    r = _cli('generate.py', f'--outdir={out}', f'--projected_w={out / "projected_w.npz"}', f'--network={network}', env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    # The image equals proj.png (G's constant noise).
    np.testing.assert_array_equal(np.array(PIL.Image.open(out / 'proj00.png')), np.array(PIL.Image.open(out / 'proj.png')))

def test_save_video_false_and_bad_inputs(files, tmp_path):
    G = files['G']
    PIL.Image.fromarray(_target_from_w(G, G.mapping(torch.zeros(1, 8), torch.zeros(1, 0)))).save(tmp_path / 't.png')
    run = lambda *a: CliRunner().invoke(projector.run_projection, [str(x) for x in a])
    r = run('--network', files['pkl'], '--target', tmp_path / 't.png', '--vgg16', files['vgg'], '--num-steps', 2,
            '--w-avg-samples', 100, '--save-video', 'false', '--outdir', tmp_path / 'o')
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / 'o')) == ['proj.png', 'projected_w.npz', 'target.png']
    r = run('--network', files['pkl'], '--target', tmp_path / 'nope.png', '--outdir', tmp_path / 'o2')
    assert r.exit_code == 2 and '--target' in r.output and 'no such file' in r.output
    assert not (tmp_path / 'o2').exists()
    # A projected_w of another network's shape.
    np.savez(tmp_path / 'bad.npz', w=np.zeros([1, 3, 8], np.float32))
    r = CliRunner().invoke(generate.generate_images, ['--network', files['pkl'], '--projected-w', str(tmp_path / 'bad.npz'),
                                                      '--outdir', str(tmp_path / 'g')])
    assert r.exit_code == 2 and f'[{G.num_ws}, 8]' in r.output and 'same network' in r.output

#----------------------------------------------------------------------------
# The VGG16 from a URL: downloaded into the cache, or the offline message.

class _Files(http.server.BaseHTTPRequestHandler):
    served = {}
    def do_GET(self):
        data = self.served.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header('Content-Length', str(len(data or b'')))
        self.end_headers()
        self.wfile.write(data or b'')
    def log_message(self, *args):
        pass

@pytest.fixture
def server(files):
    _Files.served = {'/vgg16.pt': open(files['vgg'], 'rb').read(), '/ffhq.pkl': open(files['pkl'], 'rb').read()}
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()

def test_vgg16_from_url_into_cache_or_offline_message(files, server, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    vgg = projector.load_vgg16(server + '/vgg16.pt', 'cpu')
    assert isinstance(vgg, detectors.VGG16)
    assert len(os.listdir(tmp_path / 'cache' / 'downloads')) == 1
    with pytest.raises(Exception) as err:
        projector.load_vgg16(server + '/missing/vgg16.pt', 'cpu')
    msg = str(err.value)
    assert 'Without network access' in msg and '--vgg16=PATH' in msg and str(tmp_path / 'cache') in msg
