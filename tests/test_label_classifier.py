"""The label-classifier metrics (metrics/label_classifier.py) on the embedded shapes: the
classifier's held-out accuracy, what it recognises (reals yes; noise, flat colours and an
untrained generator no), the asked-class share of a conditional generator (a stand-in G that
returns reals of the asked class, or of the wrong one), the FD against a direct computation,
the per-dataset cache, and the errors a user can cause."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib
from helpers import png_bytes, write_files
from metrics import label_classifier as lc
from metrics import metric_main
from metrics.frechet_inception_distance import frechet_distance

networks = pytest.importorskip('training.networks')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6

def make_shapes(path, count=1000, resolution=16):
    """The embedded dataset, built the way users build it."""
    subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), '--source=builtin:shapes', f'--dest={path}',
                    f'--max-images={count}', f'--resolution={resolution}x{resolution}'],
                   check=True, capture_output=True, cwd=ROOT)
    return str(path)

def dataset_kwargs(path, use_labels=False):
    return dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=str(path), use_labels=use_labels,
                           xflip=False, max_size=None)

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """Shapes dataset and a cache dir shared by the module: the classifier is trained once."""
    root = tmp_path_factory.mktemp('labelnet')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('DNNLIB_CACHE_DIR', str(root / 'cache'))
        data = make_shapes(root / 'shapes-16.zip')
        dataset = lc.open_labelled_dataset(dataset_kwargs(data), 'test')
        images, labels = lc.load_reals(dataset)
        yield dnnlib.EasyDict(root=root, data=data, images=images, labels=labels,
                              info=lc.get_classifier(metric_utils_opts(data), 'test'))

def metric_utils_opts(data, G=None, cache=True):
    from metrics import metric_utils
    return metric_utils.MetricOptions(G=G, dataset_kwargs=dataset_kwargs(data), device='cpu', cache=cache)

def untrained_G(c_dim=0):
    torch.manual_seed(0)
    return networks.Generator(z_dim=32, w_dim=32, c_dim=c_dim, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=1024, channel_max=32))

class RealsOfClass(torch.nn.Module):
    """A stand-in conditional G: for each asked class, a real image of class (asked + shift) % C."""
    def __init__(self, images, labels, shift=0):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = 4, NUM_CLASSES, 16, 3
        self.shift = shift
        self.register_buffer('images', images.to(torch.float32) / 127.5 - 1)
        self.labels = labels.clone()

    def forward(self, z, c, **kwargs):
        want = (c.argmax(dim=1).cpu() + self.shift) % self.c_dim
        pick = [int(torch.nonzero(self.labels == k)[int(abs(float(zi[0])) * 1000) % 100]) for k, zi in zip(want, z)]
        return self.images[pick]

#----------------------------------------------------------------------------

def test_classifier_recognises_reals_and_nothing_else(env):
    assert env.info.accuracy >= 0.98   # held-out reals, the recipe's promise on the shapes
    _, probs = lc.batched(env.info.net, env.images)
    assert lc.recognised_shares(probs)[0] >= 0.97
    assert float((probs.argmax(dim=1) == env.labels).to(torch.float64).mean()) >= 0.98
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, [200, 3, 16, 16], generator=gen).to(torch.uint8)
    flat = torch.randint(0, 256, [200, 3, 1, 1], generator=gen).to(torch.uint8).expand(-1, -1, 16, 16)
    for junk in (noise, flat):
        assert lc.recognised_shares(lc.batched(env.info.net, junk)[1])[0] <= 0.02

def test_untrained_generator_is_not_recognised(env, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(env.root / 'cache'))
    res = metric_main.calc_metric('labelnet_rr200', G=untrained_G(), dataset_kwargs=dataset_kwargs(env.data), device='cpu')
    assert set(res.results) == {'labelnet_rr200', 'labelnet_acc'}
    assert res.results.labelnet_rr200 <= 0.05
    assert res.results.labelnet_acc == env.info.accuracy   # the cached classifier, not a new one

def test_asked_class_share_of_a_conditional_generator(env, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(env.root / 'cache'))
    kwargs = dataset_kwargs(env.data, use_labels=True)
    right = metric_main.calc_metric('labelnet_rr300', G=RealsOfClass(env.images, env.labels), dataset_kwargs=kwargs,
                                    device='cpu').results
    wrong = metric_main.calc_metric('labelnet_rr300', G=RealsOfClass(env.images, env.labels, shift=1),
                                    dataset_kwargs=kwargs, device='cpu').results
    assert right.labelnet_rr300 >= 0.95 and right.labelnet_rr300_asked >= 0.95
    assert wrong.labelnet_rr300 >= 0.95 and wrong.labelnet_rr300_asked <= 0.03   # recognised, but not as asked

def test_recognised_shares_counts():
    probs = torch.tensor([[0.95, 0.05, 0], [0.5, 0.5, 0], [0, 0.1, 0.9], [0.05, 0.9, 0.05], [0.2, 0.8, 0]])
    asked = torch.tensor([0, 0, 1, 1, 1])
    share, asked_share = lc.recognised_shares(probs, asked)
    assert share == 3 / 5 and asked_share == 2 / 5
    assert lc.recognised_shares(probs) == (3 / 5, None)

def test_fd_against_direct_computation(env, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(env.root / 'cache'))
    G = untrained_G()
    fd = metric_main.calc_metric('labelnet_fd100', G=G, dataset_kwargs=dataset_kwargs(env.data), device='cpu').results.labelnet_fd100
    opts = metric_utils_opts(env.data, G=G)
    feats, _, _ = lc.score_generated(opts, lc.get_classifier(opts, 'x'), 100, 'x')
    feats = feats.to(torch.float64).numpy()
    real = lc.batched(env.info.net, env.images)[0].to(torch.float64).numpy()
    direct = frechet_distance(real.mean(axis=0), np.cov(real, rowvar=False, bias=True),
                              feats.mean(axis=0), np.cov(feats, rowvar=False, bias=True))
    assert fd == pytest.approx(direct, rel=1e-6)
    # Half of the reals against all of them: far closer than the untrained generator.
    half = real[::2]
    floor = frechet_distance(real.mean(axis=0), np.cov(real, rowvar=False, bias=True),
                             half.mean(axis=0), np.cov(half, rowvar=False, bias=True))
    assert floor < fd / 4, (floor, fd)

def test_cache_is_keyed_by_dataset_content(env, monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(env.root / 'cache'))
    path = lc.cache_file(dataset_kwargs(env.data))
    assert os.path.isfile(path) and path.startswith(str(env.root / 'cache' / 'gan-metrics'))
    copy = shutil.copy(env.data, tmp_path / 'renamed.zip')   # same bytes elsewhere: same classifier
    assert lc.dataset_fingerprint(dataset_kwargs(copy)) == lc.dataset_fingerprint(dataset_kwargs(env.data))
    other = make_shapes(tmp_path / 'other.zip', count=60)   # other images: another classifier
    assert lc.dataset_fingerprint(dataset_kwargs(other)) != lc.dataset_fingerprint(dataset_kwargs(env.data))
    assert lc.dataset_fingerprint(dict(dataset_kwargs(env.data), label_file='x.json')) != \
        lc.dataset_fingerprint(dataset_kwargs(env.data))
    def no_training(*args, **kwargs):
        raise AssertionError('the cached classifier should have been used')
    monkeypatch.setattr(lc, 'train_classifier', no_training)
    info = lc.load_classifier(path)
    for a, b in zip(info.net.state_dict().values(), env.info.net.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(info.real_mu, env.info.real_mu) and info.accuracy == env.info.accuracy
    metric_main.calc_metric('labelnet_rr10', G=untrained_G(), dataset_kwargs=dataset_kwargs(copy), device='cpu')

def test_unlabelled_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    rng = np.random.RandomState(0)
    data = write_files(tmp_path / 'nolabels.zip', {f'{i}.png': png_bytes(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8))
                                                  for i in range(8)})
    with pytest.raises(ValueError, match='no integer class labels.*dataset_tool.py'):
        metric_main.calc_metric('labelnet_fd', G=untrained_G(), dataset_kwargs=dataset_kwargs(data), device='cpu')
    assert not os.path.exists(tmp_path / 'cache' / 'gan-metrics')

def test_metric_names():
    assert metric_main.parse_metric('labelnet_rr').num_gen == 1000
    assert metric_main.parse_metric('labelnet_fd5k').num_gen == 5000
    assert metric_main.parse_metric('labelnet_rr1') is None and metric_main.parse_metric('labelnet_xx') is None
    assert {'labelnet_rr', 'labelnet_fd'} <= set(metric_main.list_valid_metrics())
