"""UTLO's per-group metrics on long-tailed data: FID / KID of the many-, medium- and
few-shot class groups. Groups come from the `class_{a}_{b}.json` files that
`lt_dataset.py --shot-labels` writes into the dataset (all images of the group's classes
from the full, balanced set); generated labels are uniform over the group's classes."""

import json
import os
import re
import zipfile

import dnnlib
from metrics import metric_utils
from metrics.frechet_inception_distance import frechet_distance
from metrics.kernel_inception_distance import kernel_distance

SHOT_FILE_RE = re.compile(r'^class_(\d+)_(\d+)\.json$')
GROUP_NAMES = ('many', 'medium', 'few')

def _read_root_file(dataset_path, name):
    if os.path.isdir(dataset_path):
        with open(os.path.join(dataset_path, name), 'rb') as f:
            return f.read()
    with zipfile.ZipFile(dataset_path) as z:
        return z.read(name)

def _list_root_files(dataset_path):
    if os.path.isdir(dataset_path):
        return sorted(os.listdir(dataset_path))
    if zipfile.is_zipfile(dataset_path):
        with zipfile.ZipFile(dataset_path) as z:
            return sorted(n for n in z.namelist() if '/' not in n)
    raise FileNotFoundError(f'metric dataset not found or not a folder / ZIP: "{dataset_path}"')

def find_shot_groups(dataset_path):
    """[(group name, shot file name, sorted class list)] ordered from head to tail.

    The classes of a group are the distinct labels inside its file (so the file name's
    range convention does not matter). Three files are named many / medium / few.
    """
    files = [n for n in _list_root_files(dataset_path) if SHOT_FILE_RE.match(n)]
    if not files:
        raise FileNotFoundError(f'no shot-group files class_{{a}}_{{b}}.json in "{dataset_path}"; '
                                f'write them with `lt_dataset.py --shot-labels` (fid_shots / kid_shots need them)')
    files.sort(key=lambda n: tuple(int(g) for g in SHOT_FILE_RE.match(n).groups()))
    groups = []
    for i, name in enumerate(files):
        labels = json.loads(_read_root_file(dataset_path, name)).get('labels') or []
        classes = sorted({int(lab) for _fname, lab in labels})
        if not classes:
            raise ValueError(f'shot-group file {name} in "{dataset_path}" lists no labelled images')
        gname = GROUP_NAMES[i] if len(files) == len(GROUP_NAMES) else f'group{i}'
        groups.append((gname, name, classes))
    return groups

def group_dataset_kwargs(dataset_kwargs, shot_file):
    """Metric dataset restricted to one shot file: every listed image, no flips."""
    kwargs = dnnlib.EasyDict(dataset_kwargs, label_file=shot_file, max_size=None, xflip=False, use_labels=True)
    kwargs.pop('fname', None)  # UTLO's name for label_file
    return kwargs

def compute_shot_metrics(opts, kind, num_gen, few_only=False, max_real=None, num_subsets=100, max_subset_size=1000):
    """{f'{kind}_{group}': value} for kind 'fid' or 'kid' over the dataset's shot groups."""
    assert kind in ('fid', 'kid')
    if opts.G is None:
        raise ValueError(f'{kind}_shots needs a generator (--network): labels choose the group')
    G = metric_utils._generator_on_device(opts)
    if G.c_dim == 0:
        raise ValueError(f'{kind}_shots needs a conditional generator (c_dim > 0)')
    groups = find_shot_groups(opts.dataset_kwargs.path)
    if few_only:
        groups = groups[-1:]
    stats_kwargs = dict(capture_mean_cov=True) if kind == 'fid' else dict(capture_all=True)
    results = {}
    for gi, (gname, shot_file, classes) in enumerate(groups):
        real = metric_utils.compute_real_stats(opts, 'inception', dict(return_features=True), max_items=max_real,
                                               dataset_kwargs=group_dataset_kwargs(opts.dataset_kwargs, shot_file),
                                               **stats_kwargs)
        sampler = metric_utils.LabelSampler(G.c_dim, classes=classes, seed=opts.seed + 100 + gi)
        fake = metric_utils.compute_fake_stats(opts, 'inception', num_gen, dict(return_features=True),
                                               label_sampler=sampler, **stats_kwargs)
        if opts.rank != 0:
            value = float('nan')
        elif kind == 'fid':
            value = frechet_distance(*real.get_mean_cov(), *fake.get_mean_cov())
        else:
            value = kernel_distance(real.get_all(), fake.get_all(), num_subsets, max_subset_size)
        results[f'{kind}_{gname}'] = value
    return results
