"""dataset_tool.py: sources (folder, ZIP, CIFAR tarballs, lists, builtin:shapes), conversions, skips, atomicity."""

import io
import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from helpers import write_cifar_tarball
from training.dataset import ImageFolderDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_JPEG = os.path.join(REPO, '..', 'shared', 'data', 'cifar10-jpeg.zip')
CIFAR_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def run(*args):
    result = CliRunner().invoke(dataset_tool.main, [str(a) for a in args])
    return result


def read_zip(path):
    """(list of HWC arrays in archive order, dataset.json dict)."""
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith('.png'))
        images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in names]
        assert all(zf.getinfo(n).compress_type == zipfile.ZIP_STORED for n in names)
        return names, images, json.loads(zf.read('dataset.json'))


def save(path, arr, mode=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(arr, mode).save(path, **kw)


@pytest.fixture
def messy_folder(tmp_path):
    """cat/: two RGB PNGs and a grayscale one; dog/: an RGBA PNG and garbage named .jpg; top level: a
    truncated PNG and a text file."""
    root = tmp_path / 'src'
    rnd = np.random.RandomState(0)
    arrays = {
        'cat/a.png': rnd.randint(0, 256, [16, 16, 3], dtype=np.uint8),
        'cat/b.png': rnd.randint(0, 256, [16, 16, 3], dtype=np.uint8),
        'cat/c_gray.png': rnd.randint(0, 256, [16, 16], dtype=np.uint8),
        'dog/d_rgba.png': rnd.randint(0, 256, [16, 16, 4], dtype=np.uint8),
    }
    arrays['dog/d_rgba.png'][:, :8, 3] = 0      # Fully transparent left half -> black.
    arrays['dog/d_rgba.png'][:, 8:, 3] = 255    # Opaque right half -> colour kept.
    for name, arr in arrays.items():
        save(str(root / name), arr)
    good = io.BytesIO()
    PIL.Image.fromarray(rnd.randint(0, 256, [16, 16, 3], dtype=np.uint8)).save(good, format='png')
    (root / 'broken.png').write_bytes(good.getvalue()[:200])  # Truncated mid-IDAT.
    (root / 'notes.txt').write_text('not an image')
    (root / 'dog' / 'garbage.jpg').write_bytes(bytes(range(256)) * 4)
    return root, arrays


def test_folder_to_zip_converts_skips_and_labels(messy_folder, tmp_path):
    root, arrays = messy_folder
    dest = tmp_path / 'out.zip'
    result = run('--source', root, '--dest', dest)
    assert result.exit_code == 0, result.output
    assert 'Wrote 4 images (16x16, 3 channels, 2 classes)' in result.output
    assert 'Skipped 3 files:' in result.output
    assert 'broken.png: unreadable image' in result.output and 'notes.txt: not an image file' in result.output
    assert 'dog/garbage.jpg: corrupt or not an image' in result.output

    names, images, meta = read_zip(dest)
    assert names == [f'00000/img{i:08d}.png' for i in range(4)]
    assert meta['labels'] == [[n, lab] for n, lab in zip(names, [0, 0, 0, 1])]
    assert meta['class_names'] == ['cat', 'dog']
    np.testing.assert_array_equal(images[0], arrays['cat/a.png'])
    np.testing.assert_array_equal(images[1], arrays['cat/b.png'])
    np.testing.assert_array_equal(images[2], np.stack([arrays['cat/c_gray.png']] * 3, axis=2))  # gray -> RGB
    rgba = arrays['dog/d_rgba.png']
    assert images[3].shape == (16, 16, 3)
    np.testing.assert_array_equal(images[3][:, :8], 0)
    np.testing.assert_array_equal(images[3][:, 8:], rgba[:, 8:, :3])

    ds = ImageFolderDataset(str(dest), use_labels=True)  # The training reader accepts the output.
    assert len(ds) == 4 and ds.class_counts().tolist() == [3, 1]


def test_strict_fails_on_first_bad_file_and_leaves_nothing(messy_folder, tmp_path):
    root, _ = messy_folder
    dest = tmp_path / 'out.zip'
    result = run('--source', root, '--dest', dest, '--strict')
    assert result.exit_code != 0
    assert 'broken.png' in result.output and '--strict' in result.output
    assert os.listdir(tmp_path) == ['src']


def test_keep_channels_keeps_grayscale(tmp_path):
    arrs = [np.full([8, 8], v, np.uint8) for v in (10, 20)]
    for i, a in enumerate(arrs):
        save(str(tmp_path / 'g' / f'{i}.png'), a)
    assert run('--source', tmp_path / 'g', '--dest', tmp_path / 'g.zip', '--keep-channels').exit_code == 0
    ds = ImageFolderDataset(str(tmp_path / 'g.zip'))
    assert ds.image_shape == [1, 8, 8] and int(ds[1][0].max()) == 20
    assert run('--source', tmp_path / 'g', '--dest', tmp_path / 'rgb.zip').exit_code == 0
    assert ImageFolderDataset(str(tmp_path / 'rgb.zip')).image_shape == [3, 8, 8]


def test_mixed_sizes_rejected_or_cropped(tmp_path):
    small = np.zeros([8, 8, 3], np.uint8)
    wide = np.zeros([8, 12, 3], np.uint8)
    wide[:, 2:10] = 100  # The centre 8x8 crop of the 12x8 image is all 100.
    save(str(tmp_path / 's' / 'a.png'), small)
    save(str(tmp_path / 's' / 'b.png'), wide)
    result = run('--source', tmp_path / 's', '--dest', tmp_path / 'o.zip')
    assert result.exit_code != 0 and 'b.png: image is 12x8, but a.png is 8x8' in result.output
    assert '--transform=center-crop' in result.output and not os.path.exists(tmp_path / 'o.zip')

    result = run('--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', '--transform=center-crop',
                 '--resolution=8x8')
    assert result.exit_code == 0, result.output
    _, images, meta = read_zip(tmp_path / 'o.zip')
    assert meta['labels'] is None  # Images at the top level have no class.
    np.testing.assert_array_equal(images[1], 100)

    wider = np.zeros([8, 20, 3], np.uint8)
    wider[:, 2:18] = 100  # Cropping 20x8 to the 2:1 aspect keeps the centre 16 columns.
    save(str(tmp_path / 'cw' / 'w.png'), wider)
    result = run('--source', tmp_path / 'cw', '--dest', tmp_path / 'w.zip', '--transform=center-crop-wide',
                 '--resolution=8x4', '--resize-filter=box')
    assert result.exit_code == 0, result.output
    _, images, _ = read_zip(tmp_path / 'w.zip')
    assert images[0].shape == (8, 8, 3)
    np.testing.assert_array_equal(images[0][2:6], 100)  # 8x4 letterboxed into rows 2..5 of 8x8.
    np.testing.assert_array_equal(images[0][:2], 0)
    np.testing.assert_array_equal(images[0][6:], 0)

    for bad in ('24x24', '8x16'):
        result = run('--source', tmp_path / 's', '--dest', tmp_path / 'x.zip', f'--resolution={bad}')
        assert result.exit_code != 0 and 'power-of-two' in result.output


def test_failure_midway_leaves_no_destination(messy_folder, tmp_path, monkeypatch):
    root, _ = messy_folder
    calls = []

    def failing_encode(img):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while writing the third image.
        return real_encode(img)
    real_encode = dataset_tool.encode_png
    monkeypatch.setattr(dataset_tool, 'encode_png', failing_encode)
    for dest in ('out.zip', 'out_dir'):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            dataset_tool.convert_dataset(str(root), str(tmp_path / dest), progress=False, log=lambda *a: None)
        assert sorted(os.listdir(tmp_path)) == ['src']  # No dest, no temp file.


def test_folder_destination_and_max_images_subset(tmp_path):
    for i in range(10):
        save(str(tmp_path / 'n' / f'{i:02d}.png'), np.full([4, 4, 3], i, np.uint8))
    result = run('--source', tmp_path / 'n', '--dest', tmp_path / 'out', '--max-images=4', '--seed=3')
    assert result.exit_code == 0, result.output
    expected = np.sort(np.random.RandomState(3).choice(10, size=4, replace=False))
    ds = ImageFolderDataset(str(tmp_path / 'out'))
    assert [int(ds[i][0][0, 0, 0]) for i in range(4)] == expected.tolist()
    result = run('--source', tmp_path / 'n', '--dest', tmp_path / 'out')
    assert result.exit_code != 0 and 'not empty' in result.output


def test_zip_source_uses_its_dataset_json(tmp_path):
    src = tmp_path / 'src.zip'
    with zipfile.ZipFile(src, 'w') as zf:
        for i, lab in enumerate([5, 2]):
            buf = io.BytesIO()
            PIL.Image.fromarray(np.full([4, 4, 3], i, np.uint8)).save(buf, format='png')
            zf.writestr(f'x/img{i}.png', buf.getvalue())
        zf.writestr('dataset.json', json.dumps({'labels': [['x/img0.png', 5], ['x/img1.png', 2]]}))
    assert run('--source', src, '--dest', tmp_path / 'o.zip').exit_code == 0
    _, _, meta = read_zip(tmp_path / 'o.zip')
    assert [lab for _, lab in meta['labels']] == [5, 2]


def test_list_source(tmp_path):
    save(str(tmp_path / 'p' / 'a.png'), np.full([4, 4, 3], 1, np.uint8))
    save(str(tmp_path / 'p' / 'b.png'), np.full([4, 4, 3], 2, np.uint8))
    (tmp_path / 'list.txt').write_text('p/b.png\t1\n# comment\np/a.png\t0\np/missing.png\t0\n')
    result = run('--source', tmp_path / 'list.txt', '--dest', tmp_path / 'o.zip')
    assert result.exit_code == 0, result.output
    assert 'p/missing.png: cannot read' in result.output
    _, images, meta = read_zip(tmp_path / 'o.zip')
    assert [int(im[0, 0, 0]) for im in images] == [2, 1] and [lab for _, lab in meta['labels']] == [1, 0]




@pytest.mark.parametrize('kind', ['cifar10', 'cifar100'])
def test_cifar_python_archives(tmp_path, kind):
    if kind == 'cifar10':
        content = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', 'cifar-10-batches-py',
                                      [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch'], b'labels',
                                      b'label_names', 'batches.meta', 10)
        train = [f'data_batch_{i}' for i in range(1, 6)]
    else:
        content = write_cifar_tarball(tmp_path / 'cifar-100-python.tar.gz', 'cifar-100-python', ['train', 'test'],
                                      b'fine_labels', b'fine_label_names', 'meta', 100)
        train = ['train']
    src = next(tmp_path.glob('*.tar.gz'))
    result = run('--source', src, '--dest', tmp_path / 'c.zip')
    assert result.exit_code == 0, result.output
    _, images, meta = read_zip(tmp_path / 'c.zip')
    rows = np.concatenate([content[b][0] for b in train])
    labels = sum((content[b][1] for b in train), [])
    assert len(images) == 3 * len(train) and [lab for _, lab in meta['labels']] == labels
    for img, row in zip(images, rows):
        np.testing.assert_array_equal(img, row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert len(meta['class_names']) == (10 if kind == 'cifar10' else 100)
    test_name = 'test_batch' if kind == 'cifar10' else 'test'
    assert run('--source', src, '--dest', tmp_path / 't.zip', '--subfolder=test').exit_code == 0
    _, images, meta = read_zip(tmp_path / 't.zip')
    assert [lab for _, lab in meta['labels']] == content[test_name][1]


def test_builtin_shapes_classes_and_determinism(tmp_path):
    result = run('--source=builtin:shapes', '--dest', tmp_path / 'a.zip', '--max-images=12', '--resolution=16x16')
    assert result.exit_code == 0, result.output
    assert '6 classes' in result.output
    _, images, meta = read_zip(tmp_path / 'a.zip')
    assert len(images) == 12 and images[0].shape == (16, 16, 3)
    assert [lab for _, lab in meta['labels']] == [i % 6 for i in range(12)]
    assert meta['class_names'] == ['circle', 'square', 'triangle', 'cross', 'ring', 'stripes']
    assert all(len(np.unique(im.reshape(-1, 3), axis=0)) >= 2 for im in images)  # Shape visible on background.
    run('--source=builtin:shapes', '--dest', tmp_path / 'b.zip', '--max-images=12', '--resolution=16x16')
    run('--source=builtin:shapes', '--dest', tmp_path / 'c.zip', '--max-images=12', '--resolution=16x16', '--seed=1')
    assert all((x == y).all() for x, y in zip(images, read_zip(tmp_path / 'b.zip')[1]))
    assert not all((x == y).all() for x, y in zip(images, read_zip(tmp_path / 'c.zip')[1]))
    ds = ImageFolderDataset(str(tmp_path / 'a.zip'), use_labels=True)
    assert ds.label_dim == 6 and ds.class_counts().tolist() == [2] * 6


def test_bad_source_messages(tmp_path):
    result = run('--source', tmp_path / 'nothing', '--dest', tmp_path / 'o.zip')
    assert result.exit_code != 0 and 'no such file or folder' in result.output
    result = run('--source=builtin:nope', '--dest', tmp_path / 'o.zip')
    assert result.exit_code != 0 and 'builtin:shapes' in result.output


@pytest.mark.skipif(not os.path.exists(CIFAR_JPEG), reason='shared/data/cifar10-jpeg.zip not present')
def test_cifar10_jpeg_zip_labels(tmp_path):
    dest = tmp_path / 'c10.zip'
    result = run('--source', CIFAR_JPEG, '--subfolder=train', '--dest', dest, '--max-images=300', '--seed=5')
    assert result.exit_code == 0, result.output
    names, images, meta = read_zip(dest)
    assert meta['class_names'] == CIFAR_CLASSES and len(images) == 300
    with zipfile.ZipFile(CIFAR_JPEG) as zf:
        src = sorted(n for n in zf.namelist() if n.startswith('train/') and n.endswith('.jpg'))
        picked = [src[i] for i in dataset_tool.select_indices(len(src), 300, 5)]
        expected = [CIFAR_CLASSES.index(n.split('/')[1]) for n in picked]
        assert [lab for _, lab in meta['labels']] == expected
        assert len(set(expected)) == 10
        for k in (0, 150, 299):  # Pixels match the decoded source file: labels are aligned.
            ref = np.asarray(PIL.Image.open(io.BytesIO(zf.read(picked[k]))).convert('RGB'))
            np.testing.assert_array_equal(images[k], ref)


def test_enlarged_images_are_named_or_skipped(tmp_path):
    """A 1x1 image blown up to 16x16 is named at the end; --skip-enlarged leaves it out (issue 13 item 6)."""
    rnd = np.random.RandomState(0)
    save(str(tmp_path / 'src' / 'tiny.png'), rnd.randint(0, 256, [1, 1, 3], dtype=np.uint8))
    save(str(tmp_path / 'src' / 'half.png'), rnd.randint(0, 256, [8, 8, 3], dtype=np.uint8))   # exactly 2x: quiet
    save(str(tmp_path / 'src' / 'wide.png'), rnd.randint(0, 256, [4, 32, 3], dtype=np.uint8))  # crop 4x4 -> 4x
    save(str(tmp_path / 'src' / 'big.png'), rnd.randint(0, 256, [32, 32, 3], dtype=np.uint8))
    result = run('--source', tmp_path / 'src', '--dest', tmp_path / 'a.zip', '--transform=center-crop', '--width=16', '--height=16')
    assert result.exit_code == 0, result.output
    assert len(read_zip(tmp_path / 'a.zip')[1]) == 4
    tail = result.output[result.output.index('Wrote'):]
    assert 'Enlarged more than 2x (2 images' in tail
    assert 'tiny.png: 1x1 enlarged 16x' in tail and 'wide.png: 32x4 enlarged 4x' in tail and 'half.png' not in tail
    result = run('--source', tmp_path / 'src', '--dest', tmp_path / 'b.zip', '--transform=center-crop', '--resolution=16x16',
                 '--skip-enlarged')
    assert result.exit_code == 0, result.output
    assert len(read_zip(tmp_path / 'b.zip')[1]) == 2
    assert 'Skipped 2 files' in result.output and 'tiny.png: 1x1 would be enlarged 16x (--skip-enlarged)' in result.output
    assert 'Enlarged more than' not in result.output


def test_upstream_spellings_and_refusals(tmp_path):
    rnd = np.random.RandomState(0)
    for i in range(5):
        save(str(tmp_path / 'src' / f'{i}.png'), rnd.randint(0, 256, [32, 32, 3], dtype=np.uint8))
    result = run('--source', tmp_path / 'src', '--dest', tmp_path / 'a.zip', '--width=16', '--height=16', '--max_images=3')
    assert result.exit_code == 0, result.output
    assert [im.shape for im in read_zip(tmp_path / 'a.zip')[1]] == [(16, 16, 3)] * 3
    for args, message in [(['--width=16'], '--width and --height go together'),
                          (['--width=16', '--height=16', '--resolution=16x16'], 'either --resolution or --width/--height')]:
        result = run('--source', tmp_path / 'src', '--dest', tmp_path / 'x.zip', *args)
        assert result.exit_code == 1 and message in result.output and not (tmp_path / 'x.zip').exists()
    (tmp_path / 'cat_lmdb').mkdir()
    (tmp_path / 'cat_lmdb' / 'data.mdb').write_bytes(b'\0' * 64)
    for source in [tmp_path / 'cat_lmdb', '~/downloads/lsun/raw/car_lmdb']:
        result = run('--source', source, '--dest', tmp_path / 'x.zip', '--transform=center-crop', '--resolution=16x16')
        assert result.exit_code == 1 and 'LMDB databases (LSUN) are not supported' in result.output
    assert 'not the first N' in run('--help').output
