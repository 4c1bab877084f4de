"""Frechet Inception Distance (Heusel et al. 2017): the Frechet distance between Gaussians
fitted to Inception pool_3 features of real and generated images."""

import numpy as np

from metrics import metric_utils

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) for means [D] and covariances [D, D].

    Tr sqrtm(S1 S2) is computed as sum(sqrt(eig(R S2 R))) with R = S1^(1/2): R S2 R is
    symmetric PSD and similar to S1 S2, so this equals the real part of scipy's sqrtm
    trace but stays accurate for the rank-deficient covariances of small samples.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r @ s2 @ r
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)

def compute_fid(opts, max_real, num_gen):
    """FID of num_gen generated images against up to max_real (None: all) dataset images."""
    real = metric_utils.compute_real_stats(opts, 'inception', dict(return_features=True),
                                           max_items=max_real, capture_mean_cov=True)
    fake = metric_utils.compute_fake_stats(opts, 'inception', num_gen, dict(return_features=True),
                                           capture_mean_cov=True)
    if opts.rank != 0:
        return float('nan')
    return frechet_distance(*real.get_mean_cov(), *fake.get_mean_cov())
