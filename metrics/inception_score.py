"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over generated
images, with the Inception softmax taken without the output bias, in 10 splits."""

import numpy as np

from metrics import metric_utils

def inception_score(probs, num_splits=10):
    """probs [N, K] (rows sum to 1) -> (mean, std) of the per-split scores."""
    probs = np.asarray(probs, np.float64)
    n = probs.shape[0]
    if n < num_splits:
        raise ValueError(f'IS needs at least {num_splits} samples (one per split), got {n}')
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        p_y = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: mask zero probabilities instead of letting them produce NaN.
        with np.errstate(divide='ignore', invalid='ignore'):
            kl = np.where(part > 0, part * (np.log(part) - np.log(p_y)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))

def compute_is(opts, num_gen, num_splits=10):
    fake = metric_utils.compute_fake_stats(opts, 'inception', num_gen, dict(no_output_bias=True), capture_all=True)
    if opts.rank != 0:
        return float('nan'), float('nan')
    return inception_score(fake.get_all(), num_splits)
