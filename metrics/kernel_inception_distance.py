"""Kernel Inception Distance (Binkowski et al. 2018): an unbiased estimate of the squared
MMD between real and generated Inception features with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""

import numpy as np

from metrics import metric_utils

def kernel_distance(real, fake, num_subsets=100, max_subset_size=1000, seed=0):
    """real [n_r, d], fake [n_g, d] -> KID (float).

    Each subset draws m = min(n_r, n_g, max_subset_size) rows of each set without
    replacement and adds [off-diagonal sum of (K_xx + K_yy)] / (m - 1) - 2 sum(K_xy) / m;
    the total is divided by num_subsets * m.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    d = real.shape[1]
    m = min(real.shape[0], fake.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f'KID needs at least 2 real and 2 generated samples, got {real.shape[0]} and {fake.shape[0]}')
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(fake.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        a = kxx + kyy
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - kxy.sum() * 2 / m
    return float(t / num_subsets / m)

def compute_kid(opts, max_real, num_gen, num_subsets=100, max_subset_size=1000):
    real = metric_utils.compute_real_stats(opts, 'inception', dict(return_features=True),
                                           max_items=max_real, capture_all=True)
    fake = metric_utils.compute_fake_stats(opts, 'inception', num_gen, dict(return_features=True),
                                           capture_all=True)
    if opts.rank != 0:
        return float('nan')
    return kernel_distance(real.get_all(), fake.get_all(), num_subsets, max_subset_size)
