"""lt_dataset.py: long-tail counts, class order and relabelling, shot-group files, zip/folder output."""

import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import lt_dataset
from lt_dataset import class_order, lt_counts, make_split
from helpers import png_bytes, write_files
from training.dataset import ImageFolderDataset


def test_counts_follow_the_formula():
    # methods.md section 6: C=10, n_max=5000, imf=100 -> 5000, 2997, 1796, ..., 50.
    assert lt_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    expected = [int(np.floor(5000 * 25 ** (-i / 9) + 1e-9)) for i in range(10)]
    assert lt_counts([5000] * 10, 25) == expected and expected[-1] == 200
    assert lt_counts([5000] * 10, 100, reverse=True) == lt_counts([5000] * 10, 100)[::-1]
    assert lt_counts([500, 600, 10], 4) == [500, 300, 10]  # n_max = 600; capped by what is available.
    assert lt_counts([7], 10) == [7]


def test_class_orders():
    counts = [5, 9, 9, 1]
    assert class_order(counts, 'index-desc') == [3, 2, 1, 0]
    assert class_order(counts, 'index-asc') == [0, 1, 2, 3]
    assert class_order(counts, 'count-desc') == [1, 2, 0, 3]  # Ties by index.


def fake_labels(per_class):
    return [(f'{c}/img{j:04d}.png', c) for c, n in enumerate(per_class) for j in range(n)]


def test_split_relabels_head_to_zero_and_is_seeded():
    labels = fake_labels([40] * 10)
    split = make_split(labels, imf=10, order='index-desc', seed=0)
    assert split['order'] == list(range(9, -1, -1))
    assert split['kept'] == lt_counts([40] * 10, 10)
    orig_of = dict(labels)
    got = np.bincount([lab for _, lab in split['lt']], minlength=10).tolist()
    assert got == split['kept']
    assert all(orig_of[f] == 9 - lab for f, lab in split['lt'])  # New label i is original class 9-i.
    assert all(orig_of[f] == 9 - lab for f, lab in split['full']) and len(split['full']) == 400
    assert make_split(labels, 10, 'index-desc', seed=0)['lt'] == split['lt']
    assert make_split(labels, 10, 'index-desc', seed=1)['lt'] != split['lt']
    assert sorted(split['lt']) == split['lt'] and len(set(f for f, _ in split['lt'])) == sum(split['kept'])


def png(v):
    return png_bytes(np.full([4, 4, 3], v, np.uint8))


def make_dataset(path, per_class, as_zip):
    """Images whose pixel value encodes their original class; dataset.json with those labels."""
    files, labels = {}, []
    for i, (name, c) in enumerate(fake_labels(per_class)):
        fname = f'{i // 1000:05d}/img{i:08d}.png'
        files[fname] = png(c)
        labels.append([fname, c])
    files['dataset.json'] = json.dumps({'labels': labels, 'class_names': [f'k{c}' for c in range(len(per_class))]}).encode()
    return write_files(path, files, as_zip)


@pytest.mark.parametrize('as_zip', [True, False], ids=['zip', 'folder'])
def test_cli_writes_lt_and_shot_files(tmp_path, as_zip):
    path = make_dataset(tmp_path / ('d.zip' if as_zip else 'd'), [20] * 10, as_zip)
    result = CliRunner().invoke(lt_dataset.main, ['--source', path, '--dname=cifar10', '--imf=10', '--shot-labels'])
    assert result.exit_code == 0, result.output
    assert 'many' in result.output and 'few' in result.output and 'total' in result.output
    kept = lt_counts([20] * 10, 10)
    assert kept == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]

    ds = ImageFolderDataset(path, use_labels=True, label_file='lt_10.json')
    assert ds.class_counts().tolist() == kept
    for i in range(len(ds)):  # Pixel value = original class; label = 9 - original.
        img, label = ds[i]
        assert label.argmax() == 9 - img[0, 0, 0]

    for (a, b) in [(0, 3), (3, 6), (6, 10)]:
        shot = ImageFolderDataset(path, use_labels=True, label_file=f'class_{a}_{b}.json')
        counts = shot.class_counts()
        assert counts[a:b].tolist() == [20] * (b - a) and counts.sum() == 20 * (b - a)  # All images of the group.
    full = ImageFolderDataset(path, use_labels=True, label_file='lt_10_full.json')
    assert len(full) == 200 and full.class_counts().tolist() == [20] * 10

    if as_zip:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read('lt_10.json'))
        # Running again replaces the files instead of adding duplicates to the archive.
        assert CliRunner().invoke(lt_dataset.main, ['--source', path, '--dname=cifar10', '--imf=10']).exit_code == 0
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            assert len(names) == len(set(names)) == 200 + 1 + 5 and zf.testzip() is None
    else:
        with open(os.path.join(path, 'lt_10.json')) as f:
            meta = json.load(f)
    assert meta['original_labels'] == list(range(9, -1, -1)) and meta['class_names'][0] == 'k9'


def test_reverse_count_desc_and_errors(tmp_path):
    path = make_dataset(tmp_path / 'd', [10, 30, 20], as_zip=False)
    res = CliRunner().invoke(lt_dataset.main, ['--path', path, '--imf=4', '--reverse', '--seed=3'])
    assert res.exit_code == 0, res.output
    with open(os.path.join(path, 'lt_4_reverse.json')) as f:
        meta = json.load(f)
    assert meta['original_labels'] == [1, 2, 0]  # count-desc by default
    assert np.bincount([lab for _, lab in meta['labels']]).tolist() == [7, 15, 10]  # 30*4^-1, 30*4^-.5, min(30,10)

    res = CliRunner().invoke(lt_dataset.main, ['--path', path, '--dname=cifar10'])
    assert res.exit_code != 0 and 'expects 10 classes' in res.output
    res = CliRunner().invoke(lt_dataset.main, ['--path', path, '--fn=nope.json'])
    assert res.exit_code != 0 and 'no nope.json' in res.output
    res = CliRunner().invoke(lt_dataset.main, ['--path', str(tmp_path / 'missing')])
    assert res.exit_code != 0 and 'does not exist' in res.output


def test_utlo_spelling_fn_names_the_dataset(tmp_path):
    """UTLO's README: `lt_dataset.py --fn datasets/af/dataset.json --imf 25 --shot-labels` (no --source)."""
    path = make_dataset(tmp_path / 'af', [20] * 10, as_zip=False)
    res = CliRunner().invoke(lt_dataset.main, ['--fn', os.path.join(path, 'dataset.json'), '--imf', '10', '--shot-labels'])
    assert res.exit_code == 0, res.output
    assert {'lt_10.json', 'lt_10_full.json'} <= set(os.listdir(path))
    res = CliRunner().invoke(lt_dataset.main, ['--imf', '10'])
    assert res.exit_code == 1 and '--source is missing' in res.output
    res = CliRunner().invoke(lt_dataset.main, ['--fn', str(tmp_path / 'nowhere' / 'dataset.json')])
    assert res.exit_code == 1 and '--source is missing' in res.output
