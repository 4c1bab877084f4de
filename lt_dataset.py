"""Make long-tailed (LT) label files inside a dataset, as UTLO's lt_dataset does (methods.md section 6).

Class i of the chosen order keeps n_i = min(floor(n_max * imf^(-i/(C-1))), available_i) images,
a seeded random subset, and is relabelled to i, so label 0 is the head and C-1 the tail.

Label mapping: every file this tool writes uses the NEW indices (0 = head):
`lt_{imf}[_reverse].json` (the LT training split), `lt_{imf}[_reverse]_full.json` (every image
of the balanced dataset, relabelled: use it as the full-set metric labels so that metrics and G
agree on what class k means), and with --shot-labels `class_{a}_{b}.json` (all images of the
classes a..b-1 of one shot group, relabelled; read by fid_shots / kid_shots). `dataset.json`
keeps the original indices; UTLO's reference mixes the two for its full-set metrics, we don't.
Each file also records `original_labels` (new index -> original index) and, when known,
`class_names` in the new order.
"""

import json
import os
import zipfile

import click
import numpy as np

import dnnlib

from training.dataset import shot_groups, shot_label_file, SHOT_GROUP_NAMES

ORDERS = ('index-desc', 'count-desc', 'index-asc')

# --dname presets: the class order of UTLO's reference and the class count the shot groups expect.
PRESETS = {
    'cifar10': dict(order='index-desc', num_classes=10),
    'cifar100': dict(order='index-desc', num_classes=100),
    'lsun': dict(order='index-desc', num_classes=5),
    'animals': dict(order='count-desc', num_classes=20),
    'flowers': dict(order='count-desc', num_classes=102),
}
DEFAULT_ORDER = 'count-desc'  # Without --dname: biggest class first, ties by index (class 0 heads a balanced set).


class LTError(click.ClickException):
    """A user-fixable problem; click prints it without a traceback."""


# ----------------------------------------------------------------------------
# The split itself (pure functions).


def class_order(counts, order):
    """Original class indices in head-to-tail order. counts: images per original class."""
    num_classes = len(counts)
    if order == 'index-desc':
        return list(range(num_classes - 1, -1, -1))
    if order == 'index-asc':
        return list(range(num_classes))
    if order == 'count-desc':
        return sorted(range(num_classes), key=lambda c: (-counts[c], c))
    raise ValueError(f'unknown order {order!r}; choose from {ORDERS}')


def lt_counts(available, imf, reverse=False):
    """Target counts for classes already in head-to-tail order.

    n_i = min(floor(n_max * imf^(-e_i/(C-1))), available_i) with e_i = i, or C-1-i with reverse;
    n_max is the largest available count.
    """
    num_classes = len(available)
    n_max = max(available)
    counts = []
    for i, avail in enumerate(available):
        e = (num_classes - 1 - i) if reverse else i
        frac = imf ** (-e / (num_classes - 1)) if num_classes > 1 else 1.0
        counts.append(min(int(np.floor(n_max * frac + 1e-9)), int(avail)))  # eps: 5000*100^-1 must give 50
    return counts


def make_split(labels, imf, order, reverse=False, seed=0):
    """Build the LT split.

    labels: list of (fname, original int label) for the whole dataset.
    Returns EasyDict-like dict: order (original index per new index), available, kept (counts in
    new-index order), lt (sorted [[fname, new label], ...]), full (all images relabelled).
    """
    num_classes = max(lab for _, lab in labels) + 1
    by_class = [[] for _ in range(num_classes)]
    for fname, lab in sorted(labels):
        by_class[lab].append(fname)
    perm = class_order([len(f) for f in by_class], order)
    available = [len(by_class[c]) for c in perm]
    kept = lt_counts(available, imf, reverse)

    rnd = np.random.RandomState(seed)
    lt = []
    for new, (orig, n) in enumerate(zip(perm, kept)):
        files = by_class[orig]
        chosen = rnd.permutation(len(files))[:n]
        lt += [[files[j], new] for j in chosen]
    new_of = {orig: new for new, orig in enumerate(perm)}
    full = sorted([fname, new_of[lab]] for fname, lab in labels)
    return dict(order=perm, available=available, kept=kept, lt=sorted(lt), full=full)


def shot_label_lists(full, num_classes):
    """{file name: [[fname, new label], ...]} for each shot group, from the relabelled full set."""
    out = {}
    for first, end in shot_groups(num_classes):
        out[shot_label_file(first, end)] = [[f, lab] for f, lab in full if first <= lab < end]
    return out


def output_name(imf, reverse):
    return f'lt_{imf:g}{"_reverse" if reverse else ""}.json'


# ----------------------------------------------------------------------------
# Reading and writing label files inside a folder or ZIP dataset.


def read_json(path, name):
    try:
        if os.path.isdir(path):
            with open(os.path.join(path, name), 'rb') as f:
                return json.load(f)
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(name))
    except (FileNotFoundError, KeyError):
        raise LTError(f'{path}: no {name} in the dataset; create the dataset with dataset_tool.py '
                      f'(labels from class folders) or name the label file with --fn') from None
    except zipfile.BadZipFile as e:
        raise LTError(f'{path}: not a valid ZIP archive ({e})') from None
    except ValueError as e:
        raise LTError(f'{path}: {name} is not valid JSON ({e})') from None


def write_files(path, files):
    """Add or replace files {name: bytes} in the dataset, atomically per file (folder) or as a whole (ZIP)."""
    if os.path.isdir(path):
        for name, data in files.items():
            target = os.path.join(path, name)
            tmp = f'{target}.tmp{os.getpid()}'
            with open(tmp, 'wb') as f:
                f.write(data)
            os.replace(tmp, target)
        return
    # A ZIP cannot replace a member in place: copy it entry by entry into a new archive, then rename.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                if info.filename not in files:
                    zout.writestr(info, zin.read(info))
            for name, data in files.items():
                zout.writestr(name, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _label_json(labels, split, class_names, note):
    meta = {'labels': labels, 'original_labels': [int(c) for c in split['order']], 'note': note}
    if class_names:
        meta['class_names'] = [class_names[c] for c in split['order']]
    return json.dumps(meta).encode()


# ----------------------------------------------------------------------------


def make_lt_dataset(path, fn='dataset.json', imf=25.0, order=None, dname=None, reverse=False, seed=0,
                    shot_labels=False, log=print):
    """Write the LT label files into the dataset at `path`; returns (split dict, written file names)."""
    if not os.path.exists(path):
        raise LTError(f'dataset {path!r} does not exist')
    if not (os.path.isdir(path) or zipfile.is_zipfile(path)):
        raise LTError(f'{path}: a dataset is a folder or a .zip made by dataset_tool.py')
    if imf < 1:
        raise LTError(f'--imf={imf}: the imbalance factor is n_head / n_tail and must be >= 1')
    meta = read_json(path, fn)
    labels = meta.get('labels') if isinstance(meta, dict) else None
    if not labels:
        raise LTError(f'{path}: {fn} has no labels; a long-tail split needs class labels')
    if not all(isinstance(lab, int) and not isinstance(lab, bool) and lab >= 0 for _, lab in labels):
        raise LTError(f'{path}: {fn} labels must be non-negative integer class indices')
    labels = [(str(f).replace('\\', '/'), int(lab)) for f, lab in labels]
    num_classes = max(lab for _, lab in labels) + 1
    if dname is not None:
        preset = PRESETS[dname]
        if preset['num_classes'] != num_classes:
            raise LTError(f'--dname={dname} expects {preset["num_classes"]} classes, but {fn} has {num_classes}')
        order = order or preset['order']
    order = order or DEFAULT_ORDER

    split = make_split(labels, imf, order, reverse, seed)
    class_names = meta.get('class_names')
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    name = output_name(imf, reverse)
    note = f'lt_dataset.py --imf={imf:g} --order={order}{" --reverse" if reverse else ""} --seed={seed}: new labels'
    files = {name: _label_json(split['lt'], split, class_names, note),
             name.replace('.json', '_full.json'): _label_json(split['full'], split, class_names, note)}
    if shot_labels:
        for fname, lst in shot_label_lists(split['full'], num_classes).items():
            files[fname] = _label_json(lst, split, class_names, note)
    write_files(path, files)
    _print_table(split, class_names, num_classes, log)
    log(f'Wrote {", ".join(files)} into {path}')
    return split, list(files)


def _print_table(split, class_names, num_classes, log):
    group_of = {}
    for (first, end), gname in zip(shot_groups(num_classes), SHOT_GROUP_NAMES):
        group_of.update({k: gname for k in range(first, end)})
    log(f'{"new":>4} {"orig":>5} {"class":<16} {"available":>9} {"kept":>7}  group')
    for new, (orig, avail, kept) in enumerate(zip(split['order'], split['available'], split['kept'])):
        cname = class_names[orig] if class_names else ''
        log(f'{new:>4} {orig:>5} {cname[:16]:<16} {avail:>9} {kept:>7}  {group_of.get(new, "")}')
    log(f'{"":>4} {"":>5} {"total":<16} {sum(split["available"]):>9} {sum(split["kept"]):>7}')


def dataset_from_label_path(fn):
    """UTLO's `--fn datasets/af/dataset.json`: (dataset folder, label file name)."""
    folder, name = os.path.split(fn)
    if not folder or not os.path.isfile(fn):
        raise LTError(f'--source is missing: give --source=DATASET (folder or .zip), or --fn=DATASET/{name or "dataset.json"} '
                      f'naming an existing label file of a folder dataset')
    return folder, name


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--source', '--path', 'path', callback=dnnlib.util.expand_user, metavar='PATH', help='Dataset folder or .zip.')
@click.option('--fn', '--fname', 'fn', callback=dnnlib.util.expand_user, default='dataset.json', show_default=True,
              help='Label file (inside the dataset) to split; UTLO\'s spelling --fn=DATASET/dataset.json (a folder '
                   'dataset) also names the dataset, then --source can be left out.')
@click.option('--imf', type=float, default=25, show_default=True, help='Imbalance factor n_head / n_tail.')
@click.option('--dname', type=click.Choice(sorted(PRESETS)), default=None,
              help='Dataset preset: class order as in UTLO (cifar*/lsun: index-desc, so the last class is the '
                   'head; animals/flowers: count-desc); checks the class count.')
@click.option('--order', type=click.Choice(ORDERS), default=None,
              help=f'Head-to-tail class order (overrides --dname) [default: {DEFAULT_ORDER}].')
@click.option('--reverse', is_flag=True, help='Reverse the exponent: the first class in the order gets the fewest images.')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the per-class random subsets.')
@click.option('--shot-labels', is_flag=True, help='Also write class_{a}_{b}.json per many/medium/few-shot group.')
def main(path, fn, imf, dname, order, reverse, seed, shot_labels):
    """Write a long-tailed label file lt_{imf}.json into a dataset (relabelled: 0 = head class).

    \b
    Example:
      python lt_dataset.py --source=data/cifar10.zip --dname=cifar10 --imf=100 --shot-labels
      python train.py ... --data=data/cifar10.zip --labels=lt_100.json --cond=1
    """
    if path is None:
        path, fn = dataset_from_label_path(fn)
    make_lt_dataset(path, fn=fn, imf=imf, order=order, dname=dname, reverse=reverse, seed=seed,
                    shot_labels=shot_labels, log=click.echo)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
