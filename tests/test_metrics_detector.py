"""Detectors: our Inception-v3 / VGG16 accept exactly the public weight layouts, map uint8
images of any size to features, and fail with clear messages (methods.md section 2)."""

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F

from metrics import detectors

@pytest.fixture(scope='module')
def inception_sd():
    return detectors.random_inception_state_dict(seed=1)

@pytest.fixture(scope='module')
def inception(inception_sd):
    return detectors.inception_from_state_dict(inception_sd)

#----------------------------------------------------------------------------
# Inception layout (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).

def test_inception_state_dict_layout(inception_sd):
    keys = [k for k in inception_sd if not k.endswith('num_batches_tracked')]
    assert len(keys) == 472  # 94 conv+BN units x 5 tensors + fc.weight + fc.bias
    shapes = {k: list(v.shape) for k, v in inception_sd.items()}
    assert shapes['Conv2d_1a_3x3.conv.weight'] == [32, 3, 3, 3]
    assert shapes['Conv2d_1a_3x3.bn.running_var'] == [32]
    assert shapes['Conv2d_4a_3x3.conv.weight'] == [192, 80, 3, 3]
    assert shapes['Mixed_5b.branch_pool.conv.weight'] == [32, 192, 1, 1]
    assert shapes['Mixed_6e.branch7x7dbl_5.conv.weight'] == [192, 192, 1, 7]
    assert shapes['Mixed_7a.branch3x3_2.conv.weight'] == [320, 192, 3, 3]
    assert shapes['Mixed_7c.branch3x3dbl_3b.conv.weight'] == [384, 384, 3, 1]
    assert shapes['fc.weight'] == [1008, 2048] and shapes['fc.bias'] == [1008]
    assert not any('AuxLogits' in k for k in keys)
    # torchvision's Inception3 without aux logits has 23,834,568 parameters at 1000 classes.
    n_params = sum(v.numel() for k, v in inception_sd.items() if 'running' not in k and 'num_batches' not in k)
    assert n_params == 23_834_568 + 8 * 2048 + 8

def test_inception_features_any_size(inception):
    g = torch.Generator().manual_seed(0)
    outs = {}
    for shape in [(2, 3, 32, 32), (1, 1, 16, 16), (1, 3, 37, 53)]:
        img = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        with torch.no_grad():
            f = inception(img, return_features=True)
        assert f.shape == (shape[0], 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
        assert (f >= 0).all() and f.abs().sum() > 0  # spatial mean of ReLU outputs
        outs[shape] = (img, f)
    grey, f_grey = outs[(1, 1, 16, 16)]
    with torch.no_grad():  # 1 channel is repeated to RGB
        torch.testing.assert_close(inception(grey.repeat(1, 3, 1, 1), return_features=True), f_grey)

def test_inception_probabilities_without_bias(inception):
    net = detectors.InceptionV3()
    net.load_state_dict(inception.state_dict())
    feats = torch.rand(3, 2048, generator=torch.Generator().manual_seed(1))
    net.features = lambda img: feats  # the head is what is under test; skip the convolutions
    with torch.no_grad():
        net.fc.bias.copy_(torch.linspace(-3, 3, 1008))
        p = net(None, no_output_bias=True)
        p_bias = net(None)
    assert p.shape == (3, 1008)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    torch.testing.assert_close(p, (feats @ net.fc.weight.T).softmax(1))
    torch.testing.assert_close(p_bias, (feats @ net.fc.weight.T + net.fc.bias).softmax(1))
    assert net(None, return_features=True) is feats

def test_resize_modes():
    x = torch.arange(4.).reshape(1, 1, 2, 2)
    tf = detectors.resize_bilinear(x, 4, 'tf_legacy')[0, 0]
    # TF1 resize_bilinear: source = dst * in / out, no half-pixel offset, edge clamped.
    assert tf.tolist() == [[0, .5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3], [2, 2.5, 3, 3]]
    y = torch.rand(1, 3, 13, 7)
    torch.testing.assert_close(detectors.resize_bilinear(y, 29, 'torch'),
                               F.interpolate(y, size=(29, 29), mode='bilinear', align_corners=False))
    assert detectors.resize_bilinear(y[:, :, :7], 7, 'torch') is not None
    with pytest.raises(ValueError, match='resize mode'):
        detectors.resize_bilinear(y, 5, 'cubic')

#----------------------------------------------------------------------------
# Loading from files, with clear errors.

def test_load_state_dict_file_and_identity(tmp_path, inception_sd, inception):
    path = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
    torch.save(inception_sd, path)
    net, ident = detectors.load_detector(path, kind='inception')
    with open(path, 'rb') as f:
        assert hashlib.md5(f.read()).hexdigest() in ident
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(img, return_features=True), inception(img, return_features=True), rtol=0, atol=0)

def test_state_dict_without_num_batches_tracked_loads(inception_sd):
    sd = {k: v for k, v in inception_sd.items() if not k.endswith('num_batches_tracked')}
    detectors.inception_from_state_dict(sd)

def test_wrong_or_missing_keys_are_reported(inception_sd):
    sd = dict(inception_sd)
    del sd['Mixed_6b.branch7x7_2.conv.weight']
    with pytest.raises(detectors.DetectorError, match=r'missing keys \(1\): Mixed_6b\.branch7x7_2\.conv\.weight'):
        detectors.inception_from_state_dict(sd)
    sd = dict(inception_sd, **{'AuxLogits.fc.weight': torch.zeros(1000, 768)})
    with pytest.raises(detectors.DetectorError, match=r'unexpected keys \(1\): AuxLogits\.fc\.weight'):
        detectors.inception_from_state_dict(sd)
    sd = dict(inception_sd, **{'fc.weight': torch.zeros(1000, 2048)})
    with pytest.raises(detectors.DetectorError, match=r'fc\.weight: expected \[1008, 2048\], got \[1000, 2048\]'):
        detectors.inception_from_state_dict(sd)

def test_missing_local_file_error(tmp_path):
    with pytest.raises(detectors.DetectorError, match='not found.*--detector'):
        detectors.load_detector(str(tmp_path / 'nope.pth'))

def test_missing_detector_offline_names_file_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('DNNLIB_DOWNLOAD_TIMEOUT', '0.2')  # short back-off between the retries
    url = 'http://127.0.0.1:9/metrics/inception-2015-12-05.pt'  # nothing listens on the discard port
    with pytest.raises(detectors.DetectorError) as e:
        detectors.load_detector(url, kind='inception')
    msg = str(e.value)
    assert 'inception-2015-12-05.pt' in msg and url in msg and '--detector' in msg
    assert str(tmp_path / 'cache' / 'downloads') in msg and 'DNNLIB_CACHE_DIR' in msg
    assert detectors.INCEPTION_PYTORCH_FID_URL in msg

def test_default_url_uses_the_cache(tmp_path, monkeypatch, inception_sd):
    """A file put where the message says is used without any network access."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(detectors, '_cache', {})
    cached = detectors._cached_download_path(detectors.INCEPTION_URL)
    os.makedirs(os.path.dirname(cached))
    torch.save(inception_sd, cached)
    net, _ = detectors.load_detector(None, kind='inception')
    assert isinstance(net, detectors.InceptionV3)

def test_detector_downloads_from_a_url_once(tmp_path, monkeypatch, capsys):
    """What train.py does at its first snapshot with the default metrics: fetch the detector
    over HTTP (a real server on 127.0.0.1), with a progress line, into the cache."""
    from local_http import LocalServer
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(detectors, '_cache', {})
    stub = detectors.save_stub_detector(str(tmp_path / 'stub.pt'))
    with LocalServer({'/metrics/inception-2015-12-05.pt': open(stub, 'rb').read()}) as srv:
        url = srv.url('/metrics/inception-2015-12-05.pt')
        net, ident = detectors.load_detector(url, kind='inception')
        assert srv.requests == ['/metrics/inception-2015-12-05.pt']
        monkeypatch.setattr(detectors, '_cache', {})
        assert detectors.load_detector(url, kind='inception')[1] == ident  # from the cache
        assert srv.requests == ['/metrics/inception-2015-12-05.pt']
    assert f'Downloaded {url}' in capsys.readouterr().err
    assert os.path.isfile(detectors._cached_download_path(url))
    assert net(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), return_features=True).shape[0] == 2

class _TinyExtractor(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        x = x.float()
        return torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3])], dim=1)

def test_torchscript_detector(tmp_path):
    path = str(tmp_path / 'custom.pt')
    torch.jit.save(torch.jit.script(_TinyExtractor()), path)
    net, ident = detectors.load_detector(path, kind='inception')
    assert isinstance(net, torch.jit.ScriptModule)
    img = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(net(img, return_features=True), _TinyExtractor()(img))

def test_detector_spec_parsing():
    assert detectors.detector_spec_for(None, 'inception') is None
    assert detectors.detector_spec_for('a.pt', 'inception') == 'a.pt'
    assert detectors.detector_spec_for('a.pt', 'vgg16') is None
    assert detectors.detector_spec_for('https://x/y.pt', 'inception') == 'https://x/y.pt'
    assert detectors.detector_spec_for('inception=a.pt,vgg16=b.pt', 'vgg16') == 'b.pt'
    with pytest.raises(detectors.DetectorError, match='unknown detector kind'):
        detectors.detector_spec_for('clip=a.pt', 'inception')

#----------------------------------------------------------------------------
# VGG16 + LPIPS.

def test_vgg16_lpips_embedding_matches_lpips_formula():
    sd = detectors.random_vgg16_state_dict(seed=3)
    assert sd['features.28.weight'].shape == (512, 512, 3, 3) and sd['lin4.model.1.weight'].shape == (1, 512, 1, 1)
    vgg = detectors.vgg16_from_state_dict(sd)
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, 3, 16, 16, generator=g) * 255, torch.rand(2, 3, 16, 16, generator=g) * 255
    with torch.no_grad():
        got = (vgg(a, resize_images=False, return_lpips=True) - vgg(b, resize_images=False, return_lpips=True)).square().sum(1)
        # LPIPS: sum over layers of the spatial mean of sum_c w_c (unit(f1) - unit(f2))^2.
        shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
        scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
        xa, xb = (a / 127.5 - 1 - shift) / scale, (b / 127.5 - 1 - shift) / scale
        expected = torch.zeros(2)
        k = 0
        for i, layer in enumerate(vgg.features[:30]):
            xa, xb = layer(xa), layer(xb)
            if i in (3, 8, 15, 22, 29):
                na = xa / (xa.norm(dim=1, keepdim=True) + 1e-10)
                nb = xb / (xb.norm(dim=1, keepdim=True) + 1e-10)
                w = sd[f'lin{k}.model.1.weight'].view(1, -1, 1, 1)
                expected += (w * (na - nb) ** 2).sum(1).mean(dim=[1, 2])
                k += 1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(detectors.DetectorError, match='classifier'):
        vgg(a, return_features=True)

#----------------------------------------------------------------------------
# Equivalence with pytorch-fid's FID Inception (only where pytorch_fid + torchvision import).

def _import_pytorch_fid():
    try:
        import pytorch_fid.inception as pfi
        return pfi
    except Exception:
        return None

@pytest.mark.skipif(_import_pytorch_fid() is None, reason='pytorch_fid / torchvision not installed')
def test_matches_pytorch_fid_inception(monkeypatch, inception_sd, inception):
    pfi = _import_pytorch_fid()
    monkeypatch.setattr(pfi, 'load_state_dict_from_url', lambda *a, **k: inception_sd)
    ref = pfi.InceptionV3([3]).eval()
    img = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        # pytorch-fid scales [0, 1] input by 2x - 1; img / 256 makes that (img - 128) / 128 like ours.
        r = ref(img.float() / 256)[0].flatten(1)
        torch.testing.assert_close(inception(img, return_features=True), r, rtol=1e-5, atol=1e-5)

class _PickledExtractor(torch.nn.Module):
    def forward(self, x, return_features=False):
        return x.float().mean(dim=[2, 3])

def test_pickled_module_detector(tmp_path):
    """Whole pickled modules load too (NVIDIA's .pkl detectors), plain pickle or torch.save."""
    import pickle
    img = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    for name, write in (('a.pkl', lambda p: open(p, 'wb').write(pickle.dumps(_PickledExtractor()))),
                        ('b.pt', lambda p: torch.save(_PickledExtractor(), p))):
        path = str(tmp_path / name)
        write(path)
        net, _ = detectors.load_detector(path, kind='inception')
        torch.testing.assert_close(net(img, return_features=True), img.float().mean(dim=[2, 3]))
    (tmp_path / 'junk.bin').write_bytes(b'not a detector')
    with pytest.raises(detectors.DetectorError, match='not a TorchScript module'):
        detectors.load_detector(str(tmp_path / 'junk.bin'))
