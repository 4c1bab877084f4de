"""Entry point of the metrics: name parsing, calc_metric() and report_metric().

Metric names (N = a count, `k` multiplies by 1000, e.g. fid50k_full, kid5k_full, fid100_full):
  fid{N}_full / kid{N}_full / pr{N}{K}_full   N generated images vs every real image (no x-flips;
                                               KID uses up to 1M reals, PR up to 200k; K = neighbourhood)
  fid{N} / kid{N} / pr{N}{K}                  legacy: at most N reals, the dataset's x-flip setting kept
  is{N}                                       Inception Score of N generated images, 10 splits
  ppl_zfull ppl_wfull ppl_zend ppl_wend       perceptual path length, 50k samples, centre crop
  ppl2_wend                                   ... without the crop
  fid_shots / kid_shots [fid{N}_shots, *_shots_few]   UTLO many / medium / few-shot groups
  labelnet_rr[N] / labelnet_fd[N]             a classifier trained on the metric dataset's own labels
                                               (no download): share of N (default 1000) generated images
                                               it recognises, Frechet distance in its features
"""

import json
import os
import re
import time

import dnnlib
from metrics import metric_utils
from metrics.frechet_inception_distance import compute_fid
from metrics.inception_score import compute_is
from metrics.kernel_inception_distance import compute_kid
from metrics.label_classifier import compute_labelnet_fd, compute_labelnet_rr
from metrics.perceptual_path_length import compute_ppl
from metrics.precision_recall import compute_pr
from metrics.shot_metrics import compute_shot_metrics

_STANDARD = ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'is50k', 'fid50k', 'kid50k', 'pr50k3',
             'ppl_zfull', 'ppl_wfull', 'ppl_zend', 'ppl_wend', 'ppl2_wend',
             'fid5k_full', 'kid5k_full', 'fid10k_full', 'kid10k_full', 'pr5k3_full', 'pr10k3_full', 'is5k',
             'fid_shots', 'kid_shots', 'fid_shots_few', 'kid_shots_few', 'labelnet_rr', 'labelnet_fd']

_FID_KID = re.compile(r'^(fid|kid)(\d+)(k?)(_full)?$')
_PR = re.compile(r'^pr(\d+)(k?)(\d)(_full)?$')
_IS = re.compile(r'^is(\d+)(k?)$')
_PPL = re.compile(r'^ppl(2?)_(z|w)(full|end)$')
_SHOTS = re.compile(r'^(fid|kid)(?:(\d+)(k?))?_shots(_few)?$')
_LABELNET = re.compile(r'^labelnet_(rr|fd)(?:(\d+)(k?))?$')

def _count(digits, k):
    return int(digits) * (1000 if k else 1)

def parse_metric(name):
    """Metric name -> EasyDict(kind, full, num_gen, ...) or None if the name is not a metric."""
    m = _FID_KID.match(name)
    if m:
        n = _count(m.group(2), m.group(3))
        full = m.group(4) is not None
        max_real = (None if m.group(1) == 'fid' else 1_000_000) if full else n
        return dnnlib.EasyDict(kind=m.group(1), full=full, num_gen=n, max_real=max_real) if n > 0 else None
    m = _PR.match(name)
    if m:
        n, full = _count(m.group(1), m.group(2)), m.group(4) is not None
        return dnnlib.EasyDict(kind='pr', full=full, num_gen=n, max_real=200_000 if full else n,
                               nhood_size=int(m.group(3))) if n > 0 and int(m.group(3)) > 0 else None
    m = _IS.match(name)
    if m:
        n = _count(m.group(1), m.group(2))
        return dnnlib.EasyDict(kind='is', full=False, num_gen=n) if n > 0 else None
    m = _PPL.match(name)
    if m:
        return dnnlib.EasyDict(kind='ppl', full=False, num_gen=50_000, crop=m.group(1) == '',
                               space=m.group(2), sampling=m.group(3))
    m = _SHOTS.match(name)
    if m:
        n = _count(m.group(2), m.group(3)) if m.group(2) else 50_000
        return dnnlib.EasyDict(kind=m.group(1) + '_shots', full=True, num_gen=n, few_only=m.group(4) is not None)
    m = _LABELNET.match(name)
    if m:
        n = _count(m.group(2), m.group(3)) if m.group(2) else 1000
        return dnnlib.EasyDict(kind='labelnet_' + m.group(1), full=True, num_gen=n) if n > 1 else None
    return None

def is_valid_metric(metric):
    return isinstance(metric, str) and parse_metric(metric) is not None

def list_valid_metrics():
    """The standard names; any count also works (fid100_full, kid2k_full, pr1k3_full, is1k, fid5k_shots)."""
    return list(_STANDARD)

def _unknown_metric_message(metric):
    return (f'unknown metric "{metric}". Valid metrics: {", ".join(list_valid_metrics())} '
            f'(counts may vary, e.g. fid100_full, kid2k_full, pr1k3_full, is1k)')

#----------------------------------------------------------------------------

def _run(spec, name, opts):
    """Compute one parsed metric -> {result name: value}."""
    if spec.full:
        opts.dataset_kwargs = metric_utils.full_dataset_kwargs(opts.dataset_kwargs)
    num_gen = opts.gen_count(spec.num_gen)
    if spec.kind == 'fid':
        return {name: compute_fid(opts, max_real=spec.max_real, num_gen=num_gen)}
    if spec.kind == 'kid':
        return {name: compute_kid(opts, max_real=spec.max_real, num_gen=num_gen)}
    if spec.kind == 'pr':
        p, r = compute_pr(opts, max_real=spec.max_real, num_gen=num_gen, nhood_size=spec.nhood_size)
        return {f'{name}_precision': p, f'{name}_recall': r}
    if spec.kind == 'is':
        mean, std = compute_is(opts, num_gen=num_gen)
        return {f'{name}_mean': mean, f'{name}_std': std}
    if spec.kind == 'ppl':
        return {name: compute_ppl(opts, num_samples=num_gen, space=spec.space, sampling=spec.sampling, crop=spec.crop)}
    if spec.kind in ('fid_shots', 'kid_shots'):
        return compute_shot_metrics(opts, spec.kind[:3], num_gen=num_gen, few_only=spec.few_only or opts.few_shot_only)
    if spec.kind == 'labelnet_rr':
        return compute_labelnet_rr(opts, num_gen, name)
    if spec.kind == 'labelnet_fd':
        return compute_labelnet_fd(opts, num_gen, name)
    raise AssertionError(spec.kind)

def calc_metric(metric, G=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, detector=None,
                progress=None, cache=True, **opts_kwargs):
    """Compute one metric. Returns EasyDict(results, metric, total_time, total_time_str, num_gpus).

    G: the generator (G_ema), or None with fake_images=<folder or ZIP> (folder mode).
    dataset_kwargs: the metric dataset (class_name, path, ...).
    detector: None (default URLs) | Inception path/URL | 'inception=...,vgg16=...' | dict.
    progress: None (silent), True (tqdm bars) or callable(stage, done, total).
    opts_kwargs: fake_images, num_gen (override every sample count), G_kwargs, seed, few_shot_only.
    """
    spec = parse_metric(metric)
    if spec is None:
        raise ValueError(_unknown_metric_message(metric))
    if opts_kwargs.get('fake_images') is not None and spec.kind not in ('fid', 'kid', 'pr', 'is'):
        raise ValueError(f'{metric} needs a generator; folder mode (--images) supports FID, KID, PR and IS only')
    if dataset_kwargs is None and spec.kind != 'is':
        raise ValueError(f'{metric} needs a metric dataset (--data)')
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus, rank=rank,
                                      device=device, detector=detector, progress=progress, cache=cache, **opts_kwargs)
    elapsed = metric_utils.timer()
    results = _run(spec, metric, opts)
    total_time = elapsed()
    return dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=metric, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=num_gpus)

def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Print the result as one JSON line and append it to <run_dir>/metric-<name>.jsonl.

    snapshot_pkl is stored relative to run_dir when both are given.
    """
    metric = result_dict['metric']
    if not is_valid_metric(metric):
        raise ValueError(_unknown_metric_message(metric))
    if run_dir is not None and snapshot_pkl is not None:
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = json.dumps(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time()))
    print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'at') as f:
            f.write(line + '\n')
    return line
