"""Improved precision and recall (Kynkaanniemi et al. 2019) on VGG16 fc2 features.

Each feature set defines a manifold: the union of balls around its points whose radius is
the distance to the point's k-th nearest other point. Precision = share of generated
points inside the real manifold; recall = share of real points inside the generated one.
"""

import torch

from metrics import metric_utils

def _reduce_sum(x, opts):
    if opts is not None and opts.num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(x)
    return x

def _row_batches(n, batch, opts):
    """Row ranges of size `batch`, dealt round-robin to the ranks."""
    starts = list(range(0, n, batch))
    if opts is not None:
        starts = starts[opts.rank::opts.num_gpus]
    return [(s, min(s + batch, n)) for s in starts]

def knn_radii(feats, k, batch=10000, opts=None):
    """[n, d] -> [n]: distance of each point to its (k+1)-th nearest point in the set, itself included."""
    radii = torch.zeros(feats.shape[0], dtype=torch.float32, device=feats.device)
    for a, b in _row_batches(feats.shape[0], batch, opts):
        dist = torch.cdist(feats[a:b], feats)
        radii[a:b] = dist.topk(k + 1, dim=1, largest=False).values[:, k].float()  # topk works in FP16 on CUDA
    return _reduce_sum(radii, opts)

def inside_manifold(manifold, radii, probes, batch=10000, opts=None):
    """bool [n_probes]: probe lies within radius of at least one manifold point."""
    hit = torch.zeros(probes.shape[0], dtype=torch.float32, device=probes.device)
    for a, b in _row_batches(probes.shape[0], batch, opts):
        inside = torch.zeros(b - a, dtype=torch.bool, device=probes.device)
        for c0 in range(0, manifold.shape[0], batch):  # column batches keep memory bounded
            c1 = min(c0 + batch, manifold.shape[0])
            dist = torch.cdist(probes[a:b], manifold[c0:c1])
            inside |= (dist <= radii[None, c0:c1].to(dist.dtype)).any(dim=1)  # radii came from FP16 distances: exact
        hit[a:b] = inside.float()
    return _reduce_sum(hit, opts) > 0.5

def precision_recall(real, fake, k=3, batch=10000, opts=None):
    """real [n_r, d], fake [n_g, d] tensors -> (precision, recall) floats.

    Features are rounded to FP16 (as in the reference); distances run in FP16 on CUDA and
    FP32 elsewhere.
    """
    dtype = torch.float16 if real.is_cuda else torch.float32
    real = real.to(torch.float16).to(dtype)
    fake = fake.to(torch.float16).to(dtype)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f'precision/recall with k={k} needs more than {k} samples per set')
    precision = inside_manifold(real, knn_radii(real, k, batch, opts), fake, batch, opts).float().mean()
    recall = inside_manifold(fake, knn_radii(fake, k, batch, opts), real, batch, opts).float().mean()
    return float(precision), float(recall)

def compute_pr(opts, max_real, num_gen, nhood_size=3, batch=10000):
    real = metric_utils.compute_real_stats(opts, 'vgg16', dict(return_features=True),
                                           max_items=max_real, capture_all=True)
    fake = metric_utils.compute_fake_stats(opts, 'vgg16', num_gen, dict(return_features=True), capture_all=True)
    real = torch.from_numpy(real.get_all()).to(opts.device)
    fake = torch.from_numpy(fake.get_all()).to(opts.device)
    return precision_recall(real, fake, nhood_size, batch, opts)
