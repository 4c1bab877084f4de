"""Metric formulas against closed forms and direct computations (methods.md section 2)."""

import json
import os

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics import metric_main, metric_utils
from metrics.frechet_inception_distance import frechet_distance
from metrics.inception_score import inception_score
from metrics.kernel_inception_distance import kernel_distance
from metrics.perceptual_path_length import crop_center, filtered_mean, slerp
from metrics.precision_recall import precision_recall
from metrics.shot_metrics import find_shot_groups, group_dataset_kwargs

#----------------------------------------------------------------------------
# FID

def _cov(x):
    return np.cov(x, rowvar=False, bias=True)

def test_fid_closed_form_diagonal_gaussians():
    rng = np.random.RandomState(0)
    d = 16
    mu1, mu2 = rng.randn(d), rng.randn(d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(s1) - np.sqrt(s2)).sum()
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)

def test_fid_matches_scipy_sqrtm_on_random_features():
    rng = np.random.RandomState(1)
    x = rng.randn(400, 32) @ rng.randn(32, 32)
    y = rng.randn(300, 32) @ rng.randn(32, 32) + 0.5
    m1, s1, m2, s2 = x.mean(0), _cov(x), y.mean(0), _cov(y)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.square(m1 - m2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)

def test_fid_self_zero_and_symmetric():
    rng = np.random.RandomState(2)
    x = rng.randn(500, 24)
    y = rng.randn(450, 24) * 1.3 + 0.2
    m1, s1, m2, s2 = x.mean(0), _cov(x), y.mean(0), _cov(y)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-6 * np.trace(s1)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-9)

def test_feature_stats_population_covariance():
    rng = np.random.RandomState(3)
    x = rng.randn(37, 5).astype(np.float32)
    stats = metric_utils.FeatureStats(capture_mean_cov=True, capture_all=True, max_items=30)
    stats.append(x[:20]); stats.append(x[20:])
    assert stats.num_items == 30
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(mean, x[:30].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(cov, _cov(x[:30].astype(np.float64)), atol=1e-6)
    np.testing.assert_array_equal(stats.get_all(), x[:30])

def test_feature_stats_save_load_roundtrip(tmp_path):
    stats = metric_utils.FeatureStats(capture_mean_cov=True, capture_all=True)
    stats.append(np.arange(12, dtype=np.float32).reshape(4, 3))
    stats.save(str(tmp_path / 's.npz'))
    back = metric_utils.FeatureStats.load(str(tmp_path / 's.npz'))
    assert back.num_items == 4 and back.max_items is None
    np.testing.assert_array_equal(back.get_all(), stats.get_all())
    np.testing.assert_array_equal(back.get_mean_cov()[1], stats.get_mean_cov()[1])

#----------------------------------------------------------------------------
# KID

def _mmd2_unbiased_direct(x, y):
    """O(n^2) loops over pairs: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    k = lambda a, b: (np.dot(a, b) / d + 1) ** 3
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy

def test_kid_equals_direct_unbiased_mmd():
    rng = np.random.RandomState(4)
    real = rng.randn(30, 8)
    fake = rng.randn(30, 8) * 1.5 + 0.3
    # One subset of all m = n rows: the subset is a permutation, so the estimate is exact.
    got = kernel_distance(real, fake, num_subsets=1, max_subset_size=1000)
    assert got == pytest.approx(_mmd2_unbiased_direct(fake, real), rel=1e-10)
    # Many subsets of full size average identical values.
    assert kernel_distance(real, fake, num_subsets=7) == pytest.approx(got, rel=1e-10)

def test_kid_near_zero_for_same_distribution():
    rng = np.random.RandomState(5)
    a, b = rng.randn(2000, 16), rng.randn(2000, 16)
    far = rng.randn(2000, 16) + 1.0
    same = kernel_distance(a, b, num_subsets=20, max_subset_size=500)
    diff = kernel_distance(a, far, num_subsets=20, max_subset_size=500)
    assert abs(same) < 0.02 * diff

#----------------------------------------------------------------------------
# Precision / recall

def test_pr_identical_sets():
    x = torch.randn(60, 10, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)

def test_pr_known_overlap():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 4, generator=g)
    b = torch.randn(50, 4, generator=g) + 100  # real cluster the generator misses
    c = torch.randn(50, 4, generator=g) - 100  # fake cluster with no real support
    p, r = precision_recall(torch.cat([a, b]), torch.cat([a, c]), k=3, batch=16)
    assert (p, r) == (0.5, 0.5)
    p, r = precision_recall(torch.cat([a, b]), torch.cat([a[:10], c]), k=3, batch=16)
    assert p == pytest.approx(10 / 60)

def test_pr_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(40, 3, generator=g)
    fake = torch.randn(35, 3, generator=g) * 1.4 + 0.4
    def brute(manifold, probes, k):
        d = torch.cdist(manifold, manifold, compute_mode='donot_use_mm_for_euclid_dist')
        radii = d.sort(dim=1).values[:, k]
        dp = torch.cdist(probes, manifold, compute_mode='donot_use_mm_for_euclid_dist')
        return (dp <= radii[None]).any(dim=1).float().mean().item()
    r16, f16 = real.half().float(), fake.half().float()
    p, r = precision_recall(real, fake, k=3, batch=7)
    assert p == pytest.approx(brute(r16, f16, 3), abs=1 / 35 + 1e-9)
    assert r == pytest.approx(brute(f16, r16, 3), abs=1 / 40 + 1e-9)

#----------------------------------------------------------------------------
# Inception Score

def test_is_known_distributions():
    k = 5
    onehot = np.eye(k)[np.arange(100) % k]  # every split holds each class twice
    mean, std = inception_score(onehot, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    same = np.tile([[0.2, 0.5, 0.3]], (50, 1))
    assert inception_score(same, num_splits=10)[0] == pytest.approx(1.0, rel=1e-12)
    # Two equiprobable sharp-but-soft rows: IS = exp(KL) with the closed form.
    p = np.array([[0.9, 0.1], [0.1, 0.9]] * 10)
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert inception_score(p, num_splits=10)[0] == pytest.approx(np.exp(kl), rel=1e-12)

#----------------------------------------------------------------------------
# Generated-sample handling

def test_quantisation():
    img = torch.tensor([-1.0, 0.0, 1.0, -2.0, 2.0, 0.5]).reshape(1, 1, 2, 3)
    q = metric_utils.quantize_images(img)
    assert q.dtype == torch.uint8
    assert q.flatten().tolist() == [0, 128, 255, 0, 255, 191]
    assert metric_utils.to_rgb(q).shape == (1, 3, 2, 3)

def test_shot_group_labels_stay_in_group():
    sampler = metric_utils.LabelSampler(10, classes=[6, 7, 8, 9], seed=0)
    c = sampler.sample(2000)
    assert c.shape == (2000, 10) and np.all(c.sum(1) == 1)
    idx = c.argmax(1)
    assert set(idx.tolist()) == {6, 7, 8, 9}
    counts = np.bincount(idx, minlength=10)[6:]
    assert np.all(np.abs(counts - 500) < 100)  # uniform over the group
    with pytest.raises(ValueError, match='outside'):
        metric_utils.LabelSampler(4, classes=[3, 4])

class _LabelledToy:
    has_labels = True
    def __init__(self, labels):
        self.labels = labels
    def __len__(self):
        return len(self.labels)
    def get_label(self, i):
        return np.eye(3, dtype=np.float32)[self.labels[i]]

def test_training_like_labels_follow_dataset_frequency():
    ds = _LabelledToy([0] * 80 + [1] * 15 + [2] * 5)
    freq = metric_utils.LabelSampler(3, dataset=ds, seed=1).sample(4000).mean(0)
    np.testing.assert_allclose(freq, [0.8, 0.15, 0.05], atol=0.03)

def test_cache_key_changes_with_dataset_path(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    kw = dict(class_name='training.dataset.ImageFolderDataset', path='/data/a.zip', max_size=None, xflip=False)
    k1 = metric_utils.stats_cache_key(kw, 'inception-x', {}, dict(capture_mean_cov=True))
    k2 = metric_utils.stats_cache_key(dict(kw, path='/data/b.zip'), 'inception-x', {}, dict(capture_mean_cov=True))
    k3 = metric_utils.stats_cache_key(kw, 'inception-y', {}, dict(capture_mean_cov=True))
    k4 = metric_utils.stats_cache_key(kw, 'inception-x', {}, dict(capture_all=True))
    assert len({k1, k2, k3, k4}) == 4
    assert k1 == metric_utils.stats_cache_key(dict(reversed(list(kw.items()))), 'inception-x', {}, dict(capture_mean_cov=True))
    f = metric_utils.stats_cache_file(kw, 'inception-x', {}, {})
    assert f.startswith(str(tmp_path)) and os.path.basename(f).startswith('a-inception-')

#----------------------------------------------------------------------------
# PPL helpers

def test_slerp_and_crop_and_filter():
    a = torch.tensor([[1.0, 0.0]]); b = torch.tensor([[0.0, 3.0]])
    mid = slerp(a, b, torch.tensor([[0.5]]))
    torch.testing.assert_close(mid, torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    torch.testing.assert_close(slerp(a, b, torch.tensor([[0.0]])), a)
    img = torch.arange(64.).reshape(1, 1, 8, 8)
    assert crop_center(img)[0, 0].tolist() == img[0, 0, 3:7, 2:6].tolist()
    d = np.concatenate([np.full(990, 1.0), np.full(5, 1000.0), np.full(5, -1000.0)])
    assert filtered_mean(d) == pytest.approx(1.0)  # 1st / 99th percentile cut both tails
    assert filtered_mean(np.arange(1000.0)) == pytest.approx(np.arange(9, 991).mean())

#----------------------------------------------------------------------------
# Metric names and shot groups

def test_metric_names():
    for name in metric_main.list_valid_metrics():
        assert metric_main.is_valid_metric(name), name
    for name in ['fid100_full', 'kid2k_full', 'pr20k3', 'is1k', 'fid5k_shots', 'kid_shots_few']:
        assert metric_main.is_valid_metric(name)
    for name in ['fid', 'fid0_full', 'foo50k', 'ppl_xfull', 'pr50k']:
        assert not metric_main.is_valid_metric(name)
    s = metric_main.parse_metric('kid50k_full')
    assert (s.num_gen, s.max_real, s.full) == (50000, 1_000_000, True)
    s = metric_main.parse_metric('pr50k3')
    assert (s.num_gen, s.max_real, s.nhood_size, s.full) == (50000, 50000, 3, False)
    s = metric_main.parse_metric('ppl2_wend')
    assert (s.space, s.sampling, s.crop) == ('w', 'end', False)
    with pytest.raises(ValueError, match='fid50k_full'):
        metric_main.calc_metric('fid_50', G=None, dataset_kwargs={})

def test_shot_groups_from_files(tmp_path):
    groups = {'class_0_3.json': [0, 1, 2], 'class_3_6.json': [3, 4, 5], 'class_6_10.json': [6, 7, 8, 9]}
    for name, classes in groups.items():
        labels = [[f'{c:05d}/img{i:08d}.png', c] for c in classes for i in range(2)]
        (tmp_path / name).write_text(json.dumps({'labels': labels}))
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': []}))
    got = find_shot_groups(str(tmp_path))
    assert [(g, f, c) for g, f, c in got] == [('many', 'class_0_3.json', [0, 1, 2]),
                                              ('medium', 'class_3_6.json', [3, 4, 5]),
                                              ('few', 'class_6_10.json', [6, 7, 8, 9])]
    kw = group_dataset_kwargs(dict(path=str(tmp_path), xflip=True, max_size=5, fname='lt_25.json'), 'class_6_10.json')
    assert kw.label_file == 'class_6_10.json' and kw.xflip is False and kw.max_size is None and 'fname' not in kw
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='shot-labels'):
        find_shot_groups(str(tmp_path / 'empty'))
