"""Metrics computed the way the reference computes them (issue 14, items 3 and 4): PPL's
box-downsampling factor at 512 and 1024, and the legacy metrics keeping the training set's
x-flips when they run during training."""

import json
import os

import numpy as np
import pytest
import torch

from metrics import detectors, metric_main, metric_utils
from metrics import perceptual_path_length as ppl

networks = pytest.importorskip('training.networks')

#----------------------------------------------------------------------------
# Item 3: PPL at 512 / 1024.

class PixelLPIPS(torch.nn.Module):
    """Stand-in for the LPIPS network: its 'features' are the pixels it is given (recorded)."""
    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, img, resize_images=True, return_lpips=False):
        self.inputs.append(img.detach().double())
        return img.flatten(1)

def tiny_generator(res):
    torch.manual_seed(0)
    return networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=1),
                              synthesis_kwargs=dict(channel_base=1024, channel_max=2)).eval().requires_grad_(False)

@pytest.mark.parametrize('res, vgg_size', [(512, 128), (256, 128)])
def test_ppl_crop_is_box_downsampled_by_resolution_over_256(res, vgg_size, monkeypatch):
    G = tiny_generator(res)
    images = []
    G.synthesis.register_forward_hook(lambda module, args, out: images.append(out.detach().double()))
    lpips = PixelLPIPS()
    monkeypatch.setattr(metric_utils, 'get_detector', lambda opts, kind: (lpips, 'pixels'))
    monkeypatch.setattr(metric_utils, '_generator_on_device', lambda opts: G)
    opts = metric_utils.MetricOptions(G=G, device='cpu')
    epsilon = 0.1       # large enough for float32 differences to stay accurate
    got = ppl.compute_ppl(opts, num_samples=4, epsilon=epsilon, space='w', sampling='full', crop=True)

    # float64 reference: crop rows [3/8, 7/8), columns [2/8, 6/8), then mean over f x f boxes, f = res // 256.
    f = max(res // 256, 1)
    dists = []
    for img, seen in zip(images, lpips.inputs):
        crop = img[:, :, res * 3 // 8: res * 7 // 8, res * 2 // 8: res * 6 // 8]
        n, c, h, w = crop.shape
        want = crop.reshape(n, c, h // f, f, w // f, f).mean(dim=(3, 5))
        want = (want + 1) * (255 / 2)
        assert want.shape[-1] == vgg_size
        torch.testing.assert_close(seen, want, rtol=1e-6, atol=1e-4)
        e0, e1 = want.flatten(1).chunk(2)
        dists.append(((e0 - e1) ** 2).sum(1) / epsilon ** 2)
    assert got == pytest.approx(ppl.filtered_mean(torch.cat(dists).numpy()), rel=1e-4)

def test_vgg_factor():
    assert [ppl.vgg_factor(r) for r in (64, 256, 512, 1024)] == [0, 1, 2, 4]

#----------------------------------------------------------------------------
# Item 4: legacy metrics during training keep the x-flips (--mirror=1).

@pytest.mark.slow
def test_legacy_metric_in_training_keeps_xflip(tmp_path, monkeypatch):
    import train
    from test_training_loop import make_dataset
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    data = make_dataset(tmp_path / 'ds', num=8)
    stub = detectors.save_stub_detector(str(tmp_path / 'stub.pt'))
    argv = [f'--outdir={tmp_path / "out"}', f'--data={data}', '--cfg=tiny', '--workers=0', '--dry-run', '--mirror=1',
            '--aug=noaug', '--kimg=0.008', '--snap=1', '--tick=0.008', '--metrics=fid16,fid16_full', f'--detector={stub}']
    c = train.build_cli().main(argv, standalone_mode=False)
    c.G_kwargs.update(z_dim=16, w_dim=16)
    c.G_kwargs.synthesis_kwargs.channel_max = c.D_kwargs.channel_max = 16
    train.run_training(c)
    with open(os.path.join(c.run_dir, 'metric-fid16.jsonl')) as f:
        line = [json.loads(x) for x in f][-1]
    G_ema = __import__('helpers').load_pickle(os.path.join(c.run_dir, line['snapshot_pkl']))['G_ema']
    def fid(metric, xflip):
        kw = dict(c.training_set_kwargs, max_size=None, xflip=xflip)
        return metric_main.calc_metric(metric, G=G_ema, dataset_kwargs=kw, detector=stub, device='cpu').results[metric]
    flipped, plain = fid('fid16', True), fid('fid16', False)
    # G's per-pixel noise is random, so repeated evaluations differ by ~0.1%; the flips move FID by ~10%.
    assert abs(flipped - plain) > 0.05 * plain
    assert line['results']['fid16'] == pytest.approx(flipped, rel=5e-3)
    with open(os.path.join(c.run_dir, 'metric-fid16_full.jsonl')) as f:
        full = [json.loads(x) for x in f][-1]['results']['fid16_full']
    assert full == pytest.approx(plain, rel=5e-3)         # *_full metrics still drop them
