"""training/dataset.py: ZIP / folder reading, labels, label files, subsets, mirroring, errors."""

import json
import os
import pickle

import numpy as np
import PIL.Image
import pytest
import torch

import training.dataset as dataset_mod
from helpers import png_bytes, write_files
from training.dataset import DatasetError, ImageFolderDataset, check_dataset, shot_groups, shot_label_file


def random_images(n, res=8, channels=3, seed=0):
    rnd = np.random.RandomState(seed)
    shape = [res, res, channels] if channels > 1 else [res, res]
    return [rnd.randint(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def fname(i):
    return f'{i // 1000:05d}/img{i:08d}.png'


def write_dataset(path, images, labels=None, extra_json=None, as_zip=True, names=None):
    """Write images (HWC / HW uint8) and dataset.json {'labels': ...} as a ZIP or a folder."""
    names = names or [fname(i) for i in range(len(images))]
    files = {n: png_bytes(a) for n, a in zip(names, images)}
    if labels is not False:
        files['dataset.json'] = json.dumps(
            {'labels': None if labels is None else [[n, lab] for n, lab in zip(names, labels)]}).encode()
    for key, value in (extra_json or {}).items():
        files[key] = json.dumps(value).encode()
    return write_files(path, files, as_zip)


def test_zip_round_trip_onehot_labels_and_chw_uint8(tmp_path):
    images = random_images(3)
    path = write_dataset(tmp_path / 'ds.zip', images, labels=[0, 2, 1])
    ds = ImageFolderDataset(path, use_labels=True)
    assert len(ds) == 3 and ds.name == 'ds'
    assert ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    assert ds.label_shape == [3] and ds.label_dim == 3 and ds.has_labels and ds.has_onehot_labels
    for i, (arr, lab) in enumerate(zip(images, [0, 2, 1])):
        img, label = ds[i]
        assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
        np.testing.assert_array_equal(img, arr.transpose(2, 0, 1))
        np.testing.assert_array_equal(label, np.eye(3, dtype=np.float32)[lab])
        assert label.dtype == np.float32
    assert ds.class_counts().tolist() == [1, 1, 1] and ds.class_counts().dtype == np.int64
    d = ds.get_details(1)
    assert d.raw_idx == 1 and d.xflip is False and int(d.raw_label) == 2


def test_labels_null_and_missing_give_label_dim_0(tmp_path):
    images = random_images(2)
    for name, labels in [('null.zip', None), ('nojson.zip', False)]:
        ds = ImageFolderDataset(write_dataset(tmp_path / name, images, labels=labels), use_labels=True)
        assert ds.label_dim == 0 and not ds.has_labels and not ds.has_onehot_labels
        assert ds[0][1].shape == (0,)
        with pytest.raises(DatasetError, match='no integer class labels'):
            ds.class_counts()
    # use_labels=False hides existing labels.
    ds = ImageFolderDataset(write_dataset(tmp_path / 'lab.zip', images, labels=[0, 1]), use_labels=False)
    assert ds.label_dim == 0


def test_vector_labels_are_float32(tmp_path):
    path = write_dataset(tmp_path / 'v.zip', random_images(2), labels=[[0.5, -1.0], [2.0, 0.25]])
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.label_shape == [2] and not ds.has_onehot_labels
    np.testing.assert_array_equal(ds[1][1], np.array([2.0, 0.25], np.float32))


def test_get_labels_equals_get_label_per_index(tmp_path):
    """The training loop draws the generator's labels in one get_labels call."""
    images = random_images(4)
    idx = [3, 0, 3, 2, 1, 1]
    for name, labels in [('int.zip', [0, 2, 1, 2]), ('vec.zip', [[0.5, -1.0], [2.0, 0.25], [1, 1], [0, 3]]),
                         ('none.zip', None)]:
        ds = ImageFolderDataset(write_dataset(tmp_path / name, images, labels=labels), use_labels=True, xflip=True)
        idx_x = idx + [len(ds) - 1]                       # an x-flipped copy too
        out = ds.get_labels(np.array(idx_x))
        assert out.dtype == np.float32 and out.shape == (len(idx_x), ds.label_dim)
        np.testing.assert_array_equal(out, np.stack([ds.get_label(i) for i in idx_x]))


def test_grayscale_gives_one_channel(tmp_path):
    images = random_images(2, channels=1)
    ds = ImageFolderDataset(write_dataset(tmp_path / 'g.zip', images, labels=None))
    assert ds.image_shape == [1, 8, 8]
    np.testing.assert_array_equal(ds[1][0][0], images[1])


def test_max_size_subset_is_seeded_and_sorted(tmp_path):
    images = [np.full([4, 4, 3], i, np.uint8) for i in range(20)]
    path = write_dataset(tmp_path / 's.zip', images, labels=list(range(20)))
    expected = np.sort(np.random.RandomState(7).permutation(20)[:5])
    picks = []
    for _ in range(2):
        ds = ImageFolderDataset(path, max_size=5, random_seed=7, use_labels=True)
        assert len(ds) == 5
        picks.append([int(ds[i][0][0, 0, 0]) for i in range(5)])  # pixel value == raw index
    assert picks[0] == picks[1] == expected.tolist()
    other = ImageFolderDataset(path, max_size=5, random_seed=8)
    assert [int(other[i][0][0, 0, 0]) for i in range(5)] != picks[0]
    assert len(ImageFolderDataset(path, max_size=50)) == 20  # Larger than the dataset: everything.


def test_xflip_doubles_with_mirrored_copies(tmp_path):
    images = random_images(3)
    ds = ImageFolderDataset(write_dataset(tmp_path / 'x.zip', images, labels=[0, 1, 1]), xflip=True,
                            use_labels=True)
    assert len(ds) == 6
    for i in range(3):
        np.testing.assert_array_equal(ds[i + 3][0], ds[i][0][:, :, ::-1])
        np.testing.assert_array_equal(ds[i + 3][1], ds[i][1])
        assert ds.get_details(i + 3).xflip and ds.get_details(i + 3).raw_idx == i
    assert ds.class_counts().tolist() == [1, 2]  # Distinct images, mirrored copies not counted.


@pytest.mark.parametrize('as_zip', [True, False], ids=['zip', 'folder'])
def test_label_file_selects_subset_and_labels(tmp_path, as_zip):
    images = random_images(5)
    names = [fname(i) for i in range(5)]
    lt = {'labels': [[names[4], 0], [names[1], 1], [names[2], 1]]}
    path = write_dataset(tmp_path / ('d.zip' if as_zip else 'd'), images, labels=[3, 3, 2, 1, 0],
                         extra_json={'lt_25.json': lt}, as_zip=as_zip)
    ds = ImageFolderDataset(path, use_labels=True, label_file='lt_25.json')
    assert len(ds) == 3 and ds.label_dim == 2 and ds.class_counts().tolist() == [1, 2]
    # Sorted by file name: 1, 2, 4.
    for i, (src, lab) in enumerate([(1, 1), (2, 1), (4, 0)]):
        np.testing.assert_array_equal(ds[i][0], images[src].transpose(2, 0, 1))
        assert ds[i][1].argmax() == lab
    # UTLO's keyword works too; without labels the file still selects the images.
    assert len(ImageFolderDataset(path, fname='lt_25.json')) == 3
    assert len(ImageFolderDataset(path, fname='dataset.json')) == 5
    with pytest.raises(DatasetError, match='lt_99.json.*not found'):
        ImageFolderDataset(path, label_file='lt_99.json')


def test_label_file_listing_unknown_file_is_an_error(tmp_path):
    path = write_dataset(tmp_path / 'd.zip', random_images(2), labels=[0, 1],
                         extra_json={'bad.json': {'labels': [['00000/missing.png', 0]]}})
    with pytest.raises(DatasetError, match='missing.png'):
        ImageFolderDataset(path, label_file='bad.json')


def test_image_without_label_is_named(tmp_path):
    names = [fname(0), fname(1)]
    path = write_dataset(tmp_path / 'd.zip', random_images(2), labels=False,
                         extra_json={'dataset.json': {'labels': [[names[0], 0]]}})
    ds = ImageFolderDataset(path, use_labels=True)
    with pytest.raises(DatasetError, match='img00000001.png'):
        ds.label_dim


@pytest.mark.parametrize('sizes, match', [
    ([(8, 8), (8, 4)], 'img00000001.png: image is 8x4.*square'),
    ([(12, 12)], 'img00000000.png: resolution 12x12 is not a power of two'),
    ([(8, 8), (8, 8), (16, 16)], 'img00000002.png: image is 16x16.*same size'),
])
def test_bad_sizes_name_the_file(tmp_path, sizes, match):
    images = [np.zeros([h, w, 3], np.uint8) for w, h in sizes]
    for as_zip in (True, False):
        path = write_dataset(tmp_path / f'bad{as_zip}{"" if not as_zip else ".zip"}', images, labels=None,
                             as_zip=as_zip)
        with pytest.raises(DatasetError, match=match) as e:
            ImageFolderDataset(path)
        assert 'dataset_tool.py' in str(e.value)


def test_resolution_mismatch_and_bad_channels(tmp_path):
    path = write_dataset(tmp_path / 'r.zip', random_images(1), labels=None)
    assert ImageFolderDataset(path, resolution=8).resolution == 8
    with pytest.raises(DatasetError, match='resolution=16.*--resolution=16x16'):
        ImageFolderDataset(path, resolution=16)
    rgba = write_dataset(tmp_path / 'a.zip', [np.zeros([8, 8, 4], np.uint8)], labels=None)
    with pytest.raises(DatasetError, match='img00000000.png.*4 channels'):
        ImageFolderDataset(rgba)
    mixed = write_dataset(tmp_path / 'm.zip', [np.zeros([8, 8, 3], np.uint8), np.zeros([8, 8], np.uint8)],
                          labels=None)
    with pytest.raises(DatasetError, match='img00000001.png: 1 channels'):
        ImageFolderDataset(mixed)


def test_missing_path_and_non_dataset(tmp_path):
    with pytest.raises(DatasetError, match='does not exist.*dataset_tool.py'):
        ImageFolderDataset(str(tmp_path / 'nope.zip'))
    (tmp_path / 'x.txt').write_text('hi')
    with pytest.raises(DatasetError, match='folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'x.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='no image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))


def test_pil_and_pyspng_decoders_agree(tmp_path, monkeypatch):
    images = random_images(2)
    path = write_dataset(tmp_path / 'p.zip', images, labels=None)
    first = ImageFolderDataset(path)[1][0]
    monkeypatch.setattr(dataset_mod, 'pyspng', None)
    np.testing.assert_array_equal(ImageFolderDataset(path)[1][0], first)
    np.testing.assert_array_equal(first, images[1].transpose(2, 0, 1))


def test_jpeg_folder(tmp_path):
    os.makedirs(tmp_path / 'j' / 'a')
    PIL.Image.fromarray(np.full([8, 8, 3], 200, np.uint8)).save(tmp_path / 'j' / 'a' / 'x.jpg', quality=95)
    ds = ImageFolderDataset(str(tmp_path / 'j'))
    img = ds[0][0]
    assert img.shape == (3, 8, 8) and abs(int(img.mean()) - 200) <= 2


def test_pickle_and_dataloader_workers(tmp_path):
    images = random_images(8)
    path = write_dataset(tmp_path / 'w.zip', images, labels=[i % 2 for i in range(8)])
    ds = ImageFolderDataset(path, use_labels=True)
    ds[0]  # Opens the zip in this process; the handle must not be pickled.
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[5][0], ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    imgs = torch.cat([b[0] for b in batches]).numpy()
    np.testing.assert_array_equal(imgs, np.stack([a.transpose(2, 0, 1) for a in images]))
    assert torch.cat([b[1] for b in batches]).argmax(1).tolist() == [i % 2 for i in range(8)]


def test_check_dataset_summary_and_require_labels(tmp_path):
    path = write_dataset(tmp_path / 'c.zip', random_images(3), labels=[0, 1, 1])
    s = check_dataset(path, use_labels=True)
    assert (s.num_images, s.resolution, s.num_channels, s.label_dim, s.class_counts) == (3, 8, 3, 2, [1, 2])
    nolab = write_dataset(tmp_path / 'n.zip', random_images(3), labels=None)
    with pytest.raises(DatasetError, match='needs labels'):
        check_dataset(nolab, require_labels=True)


def test_shot_groups():
    assert shot_groups(10) == [(0, 3), (3, 6), (6, 10)]
    assert shot_groups(100) == [(0, 35), (35, 70), (70, 100)]
    assert shot_groups(102) == [(0, 20), (20, 50), (50, 102)]
    assert shot_groups(20) == [(0, 5), (5, 10), (10, 20)]
    assert shot_groups(5) == [(0, 3), (3, 4), (4, 5)]
    assert shot_groups(6) == [(0, 2), (2, 4), (4, 6)]
    assert shot_groups(2) == [(0, 1), (1, 2)]
    assert shot_label_file(3, 6) == 'class_3_6.json'
