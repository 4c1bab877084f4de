"""Training digest: six iterations of every plugin configuration, from a fixed seed on the CPU.

Refactors (the architecture step, the provenance rewrite, speed levers that keep the
arithmetic) must leave these numbers alone; a change that alters training on purpose
updates the stored values in a commit of its own that says why.

Stored per configuration: the per-iteration G and D losses and a SHA-256 of the final G, D
and G_ema state dicts. On the torch version and machine the values were recorded on, both
must match bitwise; elsewhere the losses must match to 1e-5 (kernels may round differently).

To record new values after an intended change:
    UPDATE_TRAINING_DIGEST=1 python -m pytest tests/test_training_digest.py
"""

import hashlib
import json
import os
import pickle
import platform

import numpy as np
import pytest
import torch

import dnnlib
from plugin_train_util import make_dataset, read_stats, tiny_config, train

DIGEST_FILE = os.path.join(os.path.dirname(__file__), 'data', 'training_digest.json')
ITERATIONS = 6

# The configurations of test_sync_free.py, plus conditional transfer from a fixed source network,
# each set so that its plugin acts within the six iterations: the adaptive p controllers move p
# at iteration 4 (target 0, fast speed), Re-GAN prunes from iteration 3 and regrows at 5.
FAST_P = dict(target=0.0, ada_kimg=0.05)
CONFIGS = {
    'fixed': ('fixed', [], dict(p=0.5)),
    'ada': ('ada', [], FAST_P),
    'apa': ('apa', [], FAST_P),
    'diffaug': ('diffaug', [], {}),
    'ada-utlo': ('ada', ['utlo'], FAST_P),
    'ada-regan': ('ada', ['regan'], dict(FAST_P, regan_warmup=2, regan_g=2)),
    'ada-lottery': ('ada', ['lottery'], FAST_P),
    'noaug-transfer': ('noaug', ['transfer'], {}),
}

def platform_key():
    return f'torch {torch.__version__} / {platform.system()} {platform.machine()}'

def state_digest(module):
    """SHA-256 over a module's state dict: names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()

def write_transfer_source(path):
    """A 3-class 'pretrained' network from a fixed seed, in the tiny config's shapes."""
    c = tiny_config(path, path, cond=True)
    nets = {}
    for name, kwargs, seed in [('G', c.G_kwargs, 11), ('D', c.D_kwargs, 12)]:
        torch.manual_seed(seed)
        nets[name] = dnnlib.util.construct_class_by_name(**kwargs, c_dim=3, img_resolution=16, img_channels=3).eval()
    nets['G_ema'] = pickle.loads(pickle.dumps(nets['G']))
    with open(path, 'wb') as f:
        pickle.dump(nets, f)
    return path

def run_config(name, tmp_path):
    aug, methods, opts = CONFIGS[name]
    resume = None
    if 'transfer' in methods:
        data = make_dataset(tmp_path / 'data', classes=2)
        resume = write_transfer_source(str(tmp_path / 'source.pkl'))
    else:
        data = make_dataset(tmp_path / 'data')
    opts = dict(opts)
    ada_kimg = opts.pop('ada_kimg', None)
    c = tiny_config(data, tmp_path / 'run', aug=aug, methods=methods, cond=True, kimg=0.004 * ITERATIONS,
                    resume=resume, **opts)
    if ada_kimg is not None:                 # tiny_config pins the controller speed; speed it up
        c.plugin_opts['ada_kimg'] = ada_kimg
    c.kimg_per_tick = 0.004                  # one stats line per iteration
    c.network_snapshot_ticks = ITERATIONS    # one snapshot, at the end
    _result, snapshot = train(c)
    stats = read_stats(c.run_dir)
    if name in ('ada', 'apa'):               # the controller did act: p left 0
        p = stats['Progress/augment']
        assert p[0] == 0 and p[-1] > 0, p
    return dict(
        loss_G=[float(v) for v in stats['Loss/G/loss']],
        loss_D=[float(v) for v in stats['Loss/D/loss']],
        **{key: state_digest(snapshot[key]) for key in ['G', 'D', 'G_ema']})

def load_digests():
    if not os.path.exists(DIGEST_FILE):
        return {}
    with open(DIGEST_FILE) as f:
        return json.load(f)

@pytest.fixture
def one_thread():
    """Bitwise results need a fixed thread count (CPU reductions split by thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

@pytest.mark.slow
@pytest.mark.parametrize('name', list(CONFIGS))
def test_training_digest(name, tmp_path, one_thread):
    got = run_config(name, tmp_path)
    assert len(got['loss_G']) == ITERATIONS and len(got['loss_D']) == ITERATIONS
    assert all(np.isfinite(got['loss_G'])) and all(np.isfinite(got['loss_D']))
    stored = load_digests()
    if os.environ.get('UPDATE_TRAINING_DIGEST'):
        stored['platform'] = platform_key()
        stored.setdefault('configs', {})[name] = got
        os.makedirs(os.path.dirname(DIGEST_FILE), exist_ok=True)
        with open(DIGEST_FILE, 'w') as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        return
    want = stored.get('configs', {}).get(name)
    assert want is not None, f'no stored digest for {name}: run with UPDATE_TRAINING_DIGEST=1'
    if stored.get('platform') == platform_key():
        assert got == want, f'{name}: training changed (losses or weights); see the module docstring'
    else:
        for key in ['loss_G', 'loss_D']:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5, err_msg=f'{name} {key}')

def test_state_digest_sees_a_single_bit():
    m = torch.nn.Linear(3, 2)
    before = state_digest(m)
    with torch.no_grad():
        w = m.weight.view(-1)
        w[0] = torch.from_numpy(np.frombuffer((np.float32(w[0].item()).view(np.uint32) ^ 1).tobytes(), np.float32).copy())[0]
    assert state_digest(m) != before
