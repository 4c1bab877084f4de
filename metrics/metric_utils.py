"""Shared machinery of the metrics: options, feature statistics, the real / generated /
folder image sources, the on-disk cache of dataset statistics and multi-GPU gathering.

Every metric asks for features through `compute_real_stats()` and `compute_fake_stats()`;
those decide where images come from (dataset, generator or a folder of images), how they
are split across GPUs (round-robin, then all-gathered) and whether a cache file is used.
"""

import copy
import hashlib
import json
import os
import time
import uuid

import numpy as np
import torch

import dnnlib
from metrics import detectors as detector_lib

#----------------------------------------------------------------------------
# Options shared by all metrics.

class MetricOptions:
    """Everything a metric needs besides its own constants.

    G: generator (any device; copied to `device`), or None in folder mode.
    G_kwargs: extra keyword arguments for G(z, c, ...), e.g. noise_mode / truncation_psi.
    dataset_kwargs: kwargs for dnnlib.util.construct_class_by_name (the metric dataset).
    detector: None | path/URL of the Inception detector | 'inception=...,vgg16=...' | dict.
    progress: None (silent), True (tqdm bars on rank 0) or a callable(stage, done, total).
    cache: read / write dataset statistics in the cache dir.
    fake_images: folder or ZIP of generated images used instead of G (folder mode).
    num_gen: overrides the number of generated samples of every metric (tests, quick looks).
    seed: seed of the latents and labels of generated samples.
    """
    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None,
                 detector=None, progress=None, cache=True, fake_images=None, num_gen=None, seed=0,
                 few_shot_only=False):
        assert 0 <= rank < num_gpus
        self.G = G
        self.G_kwargs = dnnlib.EasyDict(G_kwargs or {})
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs or {})
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = torch.device(device) if device is not None else torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        self.detector = detector
        self.progress = progress
        self.cache = cache
        self.fake_images = fake_images
        self.num_gen = num_gen
        self.seed = seed
        self.few_shot_only = few_shot_only

    def gen_count(self, default):
        """Number of generated samples: the metric's own count unless num_gen overrides it."""
        return int(self.num_gen) if self.num_gen is not None else int(default)

#----------------------------------------------------------------------------
# Progress reporting.

class Progress:
    """One stage of progress: tqdm bar, user callback, or nothing (non-zero ranks are silent)."""
    def __init__(self, opts, stage, total):
        self.opts, self.stage, self.total, self.done = opts, stage, int(total), 0
        self.bar = None
        if opts.rank == 0 and opts.progress is True:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=stage, unit='img', leave=False, dynamic_ncols=True)

    def update(self, n):
        self.done = min(self.done + int(n), self.total)
        if self.bar is not None:
            self.bar.update(n)
        elif callable(self.opts.progress) and self.opts.rank == 0:
            self.opts.progress(self.stage, self.done, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()

#----------------------------------------------------------------------------
# Detectors.

def get_detector(opts, kind):
    """(module on opts.device, identity string) for kind 'inception' or 'vgg16'."""
    spec = detector_lib.detector_spec_for(opts.detector, kind)
    return detector_lib.load_detector(spec, kind=kind, device=opts.device)

#----------------------------------------------------------------------------
# Feature statistics.

class FeatureStats:
    """Accumulates detector outputs: all rows (KID, PR, IS) and/or running mean + covariance (FID).

    Covariance is the population covariance (divide by n), accumulated in float64.
    """
    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all, self.capture_mean_cov, self.max_items = capture_all, capture_mean_cov, max_items
        self.num_items = 0
        self.num_features = None            # fixed by the first batch
        self.all_features = []              # float32 [n, D] blocks, when capture_all
        self.raw_mean = self.raw_cov = None # float64 sums of x and of x^T x, when capture_mean_cov

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def _room(self):
        """How many more rows are kept (None: no limit)."""
        return None if self.max_items is None else max(self.max_items - self.num_items, 0)

    def _fix_width(self, dim):
        self.num_features = dim
        if self.capture_mean_cov:
            self.raw_mean = np.zeros([dim], dtype=np.float64)
            self.raw_cov = np.zeros([dim, dim], dtype=np.float64)

    def append(self, x):
        """x: [N, D] array; rows beyond max_items are dropped."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f'FeatureStats.append expects [N, D] features, got shape {x.shape}')
        x = x[:self._room()]
        if self.num_features is None:
            self._fix_width(x.shape[1])
        if x.shape[1] != self.num_features:
            raise ValueError(f'FeatureStats: {x.shape[1]} features per row after {self.num_features}')
        if len(x) == 0:
            return
        if self.capture_mean_cov:
            self._add_moments(x.astype(np.float64))
        if self.capture_all:
            self.all_features.append(x)
        self.num_items += len(x)

    def _add_moments(self, rows):
        # float64 sums: the covariance is a difference of large terms (get_mean_cov).
        self.raw_cov += rows.T @ rows
        self.raw_mean += rows.sum(axis=0)

    def get_all(self):
        """[num_items, D] float32."""
        assert self.capture_all
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_mean_cov(self):
        """(mean [D], population covariance [D, D]) in float64."""
        assert self.capture_mean_cov and self.num_items > 0
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, path):
        """Write atomically as .npz (no pickle: cache files are safe to load)."""
        arrays = dict(num_items=np.int64(self.num_items), num_features=np.int64(self.num_features or 0),
                      capture_all=np.bool_(self.capture_all), capture_mean_cov=np.bool_(self.capture_mean_cov),
                      max_items=np.int64(-1 if self.max_items is None else self.max_items))
        if self.capture_all:
            arrays['all_features'] = self.get_all()
        if self.capture_mean_cov:
            arrays['raw_mean'] = self.raw_mean
            arrays['raw_cov'] = self.raw_cov
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        tmp = f'{path}.{uuid.uuid4().hex}.tmp.npz'
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @staticmethod
    def load(path):
        with np.load(path) as z:
            max_items = int(z['max_items'])
            s = FeatureStats(capture_all=bool(z['capture_all']), capture_mean_cov=bool(z['capture_mean_cov']),
                             max_items=None if max_items < 0 else max_items)
            s.num_items = int(z['num_items'])
            s.num_features = int(z['num_features'])
            if s.capture_all:
                s.all_features = [z['all_features']]
            if s.capture_mean_cov:
                s.raw_mean = z['raw_mean']
                s.raw_cov = z['raw_cov']
        return s

#----------------------------------------------------------------------------
# Generated images.

def quantize_images(img):
    """Generator output float [-1, 1] -> uint8 [0, 255] exactly as the metrics expect:
    (img * 127.5 + 128).clamp(0, 255) cast to uint8 (so -1 -> 0, 0 -> 128, 1 -> 255)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)

def to_rgb(img):
    """[N, 1 or 3, H, W] -> [N, 3, H, W] (grey repeated)."""
    return img.repeat(1, 3, 1, 1) if img.shape[1] == 1 else img

class LabelSampler:
    """Draws conditioning labels for generated images.

    Default: the labels of uniformly drawn training images (the empirical class frequency,
    like training). With `classes` (a list of class indices): one-hot labels drawn
    uniformly over those classes only (UTLO's shot groups).
    """
    def __init__(self, c_dim, dataset=None, classes=None, seed=0):
        self.c_dim = c_dim
        self.dataset = dataset
        self.classes = None if classes is None else np.asarray(sorted(classes), dtype=np.int64)
        self.rng = np.random.RandomState(seed)
        if self.classes is not None and (self.classes.min() < 0 or self.classes.max() >= max(c_dim, 1)):
            raise ValueError(f'shot-group classes {self.classes.tolist()} are outside the generator\'s c_dim={c_dim}')

    def sample(self, n):
        """float32 [n, c_dim]."""
        if self.c_dim == 0:
            return np.zeros([n, 0], dtype=np.float32)
        if self.classes is not None:
            idx = self.classes[self.rng.randint(len(self.classes), size=n)]
            return np.eye(self.c_dim, dtype=np.float32)[idx]
        if self.dataset is None or not getattr(self.dataset, 'has_labels', False):
            raise ValueError('the generator is conditional (c_dim > 0) but the metric dataset has no labels; '
                             'use a labelled dataset (dataset.json) as --data')
        labels = [self.dataset.get_label(int(i)) for i in self.rng.randint(len(self.dataset), size=n)]
        c = np.stack(labels).astype(np.float32)
        if c.shape[1] != self.c_dim:
            raise ValueError(f'dataset label dimension {c.shape[1]} differs from the generator\'s c_dim={self.c_dim}')
        return c

def _generator_on_device(opts):
    key = '_G_on_device'
    if getattr(opts, key, None) is None:
        if opts.G is None:
            raise ValueError('this metric needs a generator (--network); folder mode only supports FID, KID, PR and IS')
        setattr(opts, key, copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device))
    return getattr(opts, key)

def open_dataset(dataset_kwargs):
    """Construct the dataset named by kwargs, with a clear error for a bad path."""
    if not dataset_kwargs:
        raise ValueError('no metric dataset given: pass dataset_kwargs (--data); conditional generators '
                         'also need it for their labels')
    dataset_kwargs = dict(dataset_kwargs)
    dataset_kwargs.setdefault('class_name', 'training.dataset.ImageFolderDataset')
    path = dataset_kwargs.get('path')
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f'metric dataset not found: "{path}" (set it with --data or --metricdata)')
    return dnnlib.util.construct_class_by_name(**dataset_kwargs)

def _rank_slice(n, opts):
    """Number of items of a batch of n that this rank handles (round-robin split)."""
    return len(range(opts.rank, n, opts.num_gpus))

def generate_images(opts, G, z, c):
    """Run G and return quantised uint8 RGB [N, 3, H, W] on opts.device."""
    img = G(z=z, c=c, **opts.G_kwargs)
    if isinstance(img, (tuple, list)):
        img = img[0]
    return to_rgb(quantize_images(img))

def _iter_generated(opts, num_items, batch_size, label_sampler):
    """Yield this rank's uint8 image batches for num_items generated images in total."""
    G = _generator_on_device(opts)
    gen = torch.Generator(device='cpu').manual_seed(opts.seed * 1000003 + opts.rank)
    for start in range(0, num_items, batch_size * opts.num_gpus):
        n_all = min(batch_size * opts.num_gpus, num_items - start)
        n = _rank_slice(n_all, opts)
        z = torch.randn([n, G.z_dim], generator=gen).to(opts.device)
        c = torch.from_numpy(label_sampler.sample(n)).to(opts.device)
        yield n_all, (generate_images(opts, G, z, c) if n > 0 else None)

def _images_only(items):
    """DataLoader collate: [(image, label), ...] -> [uint8 CHW array, ...] (sizes may differ)."""
    return [np.asarray(item[0]) for item in items]

def _iter_dataset(opts, dataset, num_items, batch_size, num_workers=None):
    """Yield (images in this step over all ranks, this rank's uint8 batch as a list of tensors or None).

    Items 0..num_items-1 are dealt round-robin (rank r takes r, r + num_gpus, ...); every rank
    runs the same number of steps so that the per-step all_gather lines up. Decoding runs
    in DataLoader workers on GPU machines.
    """
    mine = list(range(opts.rank, num_items, opts.num_gpus))
    steps = -(-num_items // (batch_size * opts.num_gpus))
    if num_workers is None:
        num_workers = 3 if opts.device.type == 'cuda' else 0
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=mine, collate_fn=_images_only,
                                              num_workers=num_workers, prefetch_factor=2 if num_workers else None))
    for step in range(steps):
        n_all = min(batch_size * opts.num_gpus, num_items - step * batch_size * opts.num_gpus)
        arrays = next(loader, None) or []
        # Folder-mode images may differ in size: one tensor per run of equal shapes.
        groups = []
        for a in arrays:
            if groups and groups[-1][0].shape == a.shape:
                groups[-1].append(a)
            else:
                groups.append([a])
        imgs = [to_rgb(torch.from_numpy(np.stack(g)).to(opts.device)) for g in groups]
        yield n_all, (imgs or None)

#----------------------------------------------------------------------------
# Multi-GPU gathering.

def gather_rows(x, opts):
    """All-gather [n_rank, D] tensors from every rank -> [sum n, D] (rank order).

    Only when torch.distributed is initialised and num_gpus > 1; ranks may hold
    different counts (padding is removed), and a rank with none may pass [0, 0].
    """
    if opts.num_gpus == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return x
    assert x.ndim == 2
    # Exchange shapes first: a rank with no items may not know the feature width yet ([0, 0]).
    shape = torch.tensor(list(x.shape), device=x.device)
    shapes = [torch.zeros_like(shape) for _ in range(opts.num_gpus)]
    torch.distributed.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    width = max(int(s[1]) for s in shapes)
    padded = torch.zeros([max(counts), width], dtype=x.dtype, device=x.device)
    padded[:x.shape[0], :x.shape[1]] = x
    parts = [torch.zeros_like(padded) for _ in range(opts.num_gpus)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])

def _run_detector(detector, imgs, detector_kwargs):
    """imgs: uint8 [N, 3, H, W] or a list of such tensors (concatenated outputs)."""
    with torch.no_grad():
        if isinstance(imgs, (list, tuple)):
            return torch.cat([detector(x, **detector_kwargs).to(torch.float32) for x in imgs])
        return detector(imgs, **detector_kwargs).to(torch.float32)

def _accumulate(opts, stats, batches, detector, detector_kwargs, stage, total):
    """Feed (n_all, this rank's images or None) batches through the detector into stats."""
    bar = Progress(opts, stage, total)
    dim = None
    for n_all, imgs in batches:
        feats = _run_detector(detector, imgs, detector_kwargs) if imgs is not None else None
        if feats is not None:
            dim = feats.shape[1]
        if opts.num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            if feats is None:  # this rank had nothing in a short last batch; still join the gather
                feats = torch.zeros([0, dim or stats.num_features or 0], device=opts.device)
            feats = gather_rows(feats, opts)
        if feats is not None:
            stats.append(feats.cpu().numpy())
        bar.update(n_all)
        if stats.is_full():
            break
    bar.close()
    return stats

#----------------------------------------------------------------------------
# Dataset statistics (cached).

def stats_cache_key(dataset_kwargs, detector_id, detector_kwargs, stats_kwargs):
    """MD5 over everything that changes the statistics (dataset kwargs, detector, options)."""
    blob = json.dumps(dict(dataset_kwargs=dict(dataset_kwargs), detector_id=detector_id,
                           detector_kwargs=dict(detector_kwargs), stats_kwargs=dict(stats_kwargs)),
                      sort_keys=True, default=str)
    return hashlib.md5(blob.encode('utf-8')).hexdigest()

def stats_cache_file(dataset_kwargs, detector_id, detector_kwargs, stats_kwargs):
    """Path of the cache entry: <cache dir>/gan-metrics/<dataset>-<detector kind>-<md5>.npz."""
    key = stats_cache_key(dataset_kwargs, detector_id, detector_kwargs, stats_kwargs)
    name = os.path.splitext(os.path.basename(str(dataset_kwargs.get('path', 'data')).rstrip('/\\')))[0]
    label_file = dataset_kwargs.get('label_file')
    if label_file:
        name += '-' + os.path.splitext(os.path.basename(label_file))[0]
    return dnnlib.util.make_cache_dir_path('gan-metrics', f'{name}-{detector_id.split("-")[0]}-{key}.npz')

def _broadcast_flag(flag, opts):
    if opts.num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor(float(flag), device=opts.device)
        torch.distributed.broadcast(t, src=0)
        flag = bool(t.item())
    return flag

def compute_real_stats(opts, kind, detector_kwargs=None, max_items=None, batch_size=64,
                       dataset_kwargs=None, **stats_kwargs):
    """Detector statistics of the metric dataset (first max_items items, all if None).

    kind: 'inception' or 'vgg16'. stats_kwargs: capture_all / capture_mean_cov.
    dataset_kwargs: overrides opts.dataset_kwargs (e.g. a shot-group label file).
    """
    detector_kwargs = dict(detector_kwargs or {})
    dataset_kwargs = dnnlib.EasyDict(dataset_kwargs if dataset_kwargs is not None else opts.dataset_kwargs)
    detector, detector_id = get_detector(opts, kind)
    cache_file = None
    if opts.cache:
        cache_file = stats_cache_file(dataset_kwargs, detector_id, detector_kwargs,
                                      dict(stats_kwargs, max_items=max_items))
        if _broadcast_flag(opts.rank == 0 and os.path.isfile(cache_file), opts):
            return FeatureStats.load(cache_file)
    dataset = open_dataset(dataset_kwargs)
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    _accumulate(opts, stats, _iter_dataset(opts, dataset, num_items, batch_size), detector,
                detector_kwargs, f'{kind} features of {os.path.basename(str(dataset_kwargs.get("path")))}', num_items)
    if cache_file is not None and opts.rank == 0:
        stats.save(cache_file)
    return stats

#----------------------------------------------------------------------------
# Generated (or folder) statistics.

def compute_fake_stats(opts, kind, num_items, detector_kwargs=None, batch_size=32, label_sampler=None, **stats_kwargs):
    """Detector statistics of num_items generated images (or of the folder in folder mode).

    label_sampler: LabelSampler for the generator's labels (default: like training).
    """
    detector_kwargs = dict(detector_kwargs or {})
    detector, _ = get_detector(opts, kind)
    if opts.fake_images is not None:
        from metrics.folder import ImageFiles
        images = ImageFiles(opts.fake_images)
        if len(images) < num_items and opts.rank == 0:
            print(f'Warning: {opts.fake_images} holds {len(images)} images, fewer than the {num_items} the '
                  f'metric asks for; using all {len(images)}.')
        num_items = min(num_items, len(images))
        stats = FeatureStats(max_items=num_items, **stats_kwargs)
        batches = _iter_dataset(opts, images, num_items, batch_size)
        return _accumulate(opts, stats, batches, detector, detector_kwargs, f'{kind} features of {opts.fake_images}', num_items)
    G = _generator_on_device(opts)
    if label_sampler is None:
        dataset = open_dataset(opts.dataset_kwargs) if G.c_dim > 0 else None
        label_sampler = LabelSampler(G.c_dim, dataset=dataset, seed=opts.seed + 1)
    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    batches = _iter_generated(opts, num_items, batch_size, label_sampler)
    return _accumulate(opts, stats, batches, detector, detector_kwargs, f'{kind} features of generated images', num_items)

#----------------------------------------------------------------------------

def full_dataset_kwargs(dataset_kwargs):
    """The `_full` metrics' view of the dataset: every image, no x-flips."""
    return dnnlib.EasyDict(dataset_kwargs, max_size=None, xflip=False)

def timer():
    """Seconds since the call, as a closure (for total_time)."""
    t0 = time.time()
    return lambda: time.time() - t0
