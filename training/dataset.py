"""Image datasets for training and metrics: a ZIP archive or a folder of PNG/JPEG files.

Images come back as uint8 [C, H, W] numpy arrays and labels as float32 vectors (one-hot
for integer class labels). Layout and label file format: methods.md section 3.
"""

import io
import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

try:
    import pyspng  # Fast PNG decoder; optional (PIL decodes the same files, slower).
except ImportError:
    pyspng = None

from dnnlib import EasyDict

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.gif')
DEFAULT_LABEL_FILE = 'dataset.json'

# Many / medium / few-shot class groups by number of classes (methods.md section 2), as
# half-open ranges of (relabelled) class indices. lt_dataset.py writes one label file per
# group and fid_shots / kid_shots read them back; both go through shot_groups().
SHOT_GROUPS = {
    10: [(0, 3), (3, 6), (6, 10)],        # CIFAR-10
    100: [(0, 35), (35, 70), (70, 100)],  # CIFAR-100
    102: [(0, 20), (20, 50), (50, 102)],  # Flowers
    20: [(0, 5), (5, 10), (10, 20)],      # AnimalFace
    5: [(0, 3), (3, 4), (4, 5)],          # LSUN-5
}
SHOT_GROUP_NAMES = ('many', 'medium', 'few')


class DatasetError(ValueError):
    """A problem with the user's dataset (bad path, wrong sizes, missing labels).

    The message names the offending file and the fix; CLIs print it without a traceback.
    """


def shot_groups(num_classes):
    """Return [(first, end), ...] half-open class-index ranges for many/medium/few shots.

    Known class counts use the published boundaries; any other count is split in thirds
    (empty groups dropped, so 1 or 2 classes give 1 or 2 groups).
    """
    if num_classes in SHOT_GROUPS:
        return list(SHOT_GROUPS[num_classes])
    b = [0, num_classes // 3, (2 * num_classes) // 3, num_classes]
    return [(b[i], b[i + 1]) for i in range(3) if b[i + 1] > b[i]]


def shot_label_file(first, end):
    """Name of the label file listing the classes [first, end): `class_{first}_{end}.json`."""
    return f'class_{first}_{end}.json'


# ----------------------------------------------------------------------------


class Dataset(torch.utils.data.Dataset):
    """Base class: index bookkeeping (subset, mirroring) and labels; subclasses read images.

    Subclasses implement `_load_raw_image(raw_idx) -> uint8 [C, H, W]` and
    `_load_raw_labels() -> None | int64 [N] | float32 [N, D]`.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)  # [N, C, H, W]
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        # Seeded subset, sorted so that item order follows file order.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            rnd = np.random.RandomState(random_seed)
            self._raw_idx = np.sort(rnd.permutation(self._raw_idx)[:max_size])

        # Mirroring appends a flipped copy of every selected image.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        """Labels of all raw images: int64 [N], float32 [N, D], or float32 [N, 0] without labels."""
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert labels.shape[0] == self._raw_shape[0]
            assert labels.dtype in (np.int64, np.float32)
            self._raw_labels = labels
        return self._raw_labels

    def close(self):
        pass

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError

    def _load_raw_labels(self):
        raise NotImplementedError

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        """Return (uint8 [C, H, W] image, float32 [label_dim] label)."""
        image = self._load_raw_image(self._raw_idx[idx])
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        if list(image.shape) != self.image_shape:
            raise DatasetError(f'{self._describe_raw(self._raw_idx[idx])}: shape {list(image.shape)} differs from '
                               f'the dataset shape {self.image_shape}; re-create the dataset with dataset_tool.py')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def _describe_raw(self, raw_idx):
        return f'image {raw_idx}'

    def get_label(self, idx):
        """float32 [label_dim]: one-hot for integer labels, the stored vector otherwise."""
        return self.get_labels([idx])[0]

    def get_labels(self, indices):
        """float32 [len(indices), label_dim]: the label of each index (see get_label), in one numpy operation."""
        indices = np.asarray(indices, dtype=np.int64)
        raw = self._get_raw_labels()[self._raw_idx[indices]]
        if raw.dtype == np.int64:
            out = np.zeros([len(indices)] + list(self.label_shape), dtype=np.float32)
            out[np.arange(len(indices)), raw] = 1
            return out
        return raw.astype(np.float32, copy=True)

    def get_details(self, idx):
        """EasyDict(raw_idx, xflip, raw_label) for item `idx`."""
        return EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=bool(self._xflip[idx]),
                        raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    def class_counts(self):
        """int64 [label_dim]: images per class among the selected images (mirrored copies not counted)."""
        if not self.has_onehot_labels:
            raise DatasetError(f'dataset {self._name!r} has no integer class labels (use_labels='
                               f'{self._use_labels}); class counts need labels in dataset.json')
        unique_idx = self._raw_idx[self._xflip == 0]
        labels = self._get_raw_labels()[unique_idx]
        return np.bincount(labels, minlength=self.label_dim).astype(np.int64)

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(raw_labels.max()) + 1 if raw_labels.size else 0]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


# ----------------------------------------------------------------------------
# Reading image headers without decoding the pixels, to check every file up front.

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels as decoded
_PIL_CHANNELS = {'L': 1, 'P': 3, 'RGB': 3, 'YCbCr': 3, 'LA': 2, 'RGBA': 4, 'CMYK': 4}


def _read_header(f, fname):
    """Return (width, height, channels, bit_depth) of an image file object."""
    head = f.read(33)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b'IHDR':
        width = int.from_bytes(head[16:20], 'big')
        height = int.from_bytes(head[20:24], 'big')
        return width, height, _PNG_CHANNELS.get(head[25], 0), head[24]
    try:
        with PIL.Image.open(io.BytesIO(head + f.read())) as img:
            bits = 16 if img.mode.startswith('I;16') else 8
            return img.size[0], img.size[1], _PIL_CHANNELS.get(img.mode, 0), bits
    except (OSError, SyntaxError) as e:
        raise DatasetError(f'{fname}: not a readable image ({e}); remove it or re-create the dataset '
                           f'with dataset_tool.py, which skips corrupt files') from None


def _check_headers(headers, fnames, resolution):
    """Check that all images are square, the same power-of-two size, with 1 or 3 channels.

    headers: list of (width, height, channels, bit_depth); returns [C, H, W].
    """
    fix = 'convert it with dataset_tool.py --resolution=RxR --transform=center-crop'
    w0, h0, c0, _ = headers[0]
    for (w, h, c, bits), fname in zip(headers, fnames):
        if w != h:
            raise DatasetError(f'{fname}: image is {w}x{h}, but images must be square; {fix}')
        if w < 4 or (w & (w - 1)) != 0:
            raise DatasetError(f'{fname}: resolution {w}x{h} is not a power of two (4 or more); {fix}')
        if resolution is not None and w != resolution:
            raise DatasetError(f'{fname}: image is {w}x{h}, but resolution={resolution} was requested; '
                               f'convert the dataset with dataset_tool.py --resolution={resolution}x{resolution}')
        if (w, h) != (w0, h0):
            raise DatasetError(f'{fname}: image is {w}x{h}, but {fnames[0]} is {w0}x{h0}; all images must have '
                               f'the same size: {fix}')
        if c not in (1, 3) or bits != 8:
            raise DatasetError(f'{fname}: images must be 8-bit grayscale or RGB (found {c} channels, {bits} bits); '
                               f'convert the dataset with dataset_tool.py (it makes RGB by default)')
        if c != c0:
            raise DatasetError(f'{fname}: {c} channels, but {fnames[0]} has {c0}; convert the dataset with '
                               f'dataset_tool.py (without --keep-channels, all images become RGB)')
    return [c0, h0, w0]


_HEADER_CACHE = {}  # (path, mtime, size, file list) -> [C, H, W]; datasets are re-opened by every metric


# ----------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Images from a folder (recursive) or an uncompressed ZIP, sorted by relative path.

    Labels come from `dataset.json` at the root, or from `label_file` (UTLO's `fname`,
    e.g. `lt_25.json`): then only the files that file lists form the dataset.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0,
                 label_file=None, **super_kwargs):
        if 'fname' in super_kwargs:  # UTLO's name for label_file.
            fname = super_kwargs.pop('fname')
            if label_file is None and fname != DEFAULT_LABEL_FILE:
                label_file = fname
        self._path = path
        self._label_file = label_file
        self._zipfile = None
        self._zipfile_pid = None
        self._label_json = None

        if os.path.isdir(path):
            self._type = 'dir'
            self._all_fnames = self._list_dir(path)
        elif os.path.isfile(path) and self._file_ext(path) == '.zip':
            self._type = 'zip'
            try:
                self._all_fnames = set(n for n in self._get_zipfile().namelist() if not n.endswith('/'))
            except zipfile.BadZipFile as e:
                raise DatasetError(f'{path}: not a valid ZIP archive ({e}); re-create it with dataset_tool.py') from None
        elif os.path.exists(path):
            raise DatasetError(f'{path}: a dataset must be a folder or a .zip file; create one with dataset_tool.py')
        else:
            raise DatasetError(f'dataset path {path!r} does not exist; create a dataset with '
                               f'dataset_tool.py --source=... --dest={path}')

        self._image_fnames = sorted(f for f in self._all_fnames if self._file_ext(f) in IMAGE_EXTENSIONS)
        if label_file is not None:
            self._image_fnames = self._select_listed_images()
        if len(self._image_fnames) == 0:
            raise DatasetError(f'{path}: no image files found (extensions {", ".join(IMAGE_EXTENSIONS)})')

        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + self._scan_image_shape(resolution)
        super().__init__(name=name, raw_shape=raw_shape, max_size=max_size, use_labels=use_labels, xflip=xflip,
                         random_seed=random_seed, **super_kwargs)

    @staticmethod
    def _list_dir(root):
        fnames = set()
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                fnames.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/'))
        return fnames

    @staticmethod
    def _file_ext(fname):
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self):
        assert self._type == 'zip'
        # A ZipFile handle must not cross a fork or a pickle: re-open it in each process.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(self.__dict__, _zipfile=None, _zipfile_pid=None)

    def _describe_raw(self, raw_idx):
        return f'{self._path}: {self._image_fnames[raw_idx]}'

    def _scan_image_shape(self, resolution):
        """Read every image header once (cached per dataset version) and check the sizes."""
        stat = os.stat(self._path)
        key = (os.path.abspath(self._path), stat.st_mtime_ns, stat.st_size, tuple(self._image_fnames))
        if self._type == 'dir':
            key += (max(os.stat(os.path.join(self._path, f)).st_mtime_ns for f in self._image_fnames),)
        if key not in _HEADER_CACHE:
            headers = []
            for fname in self._image_fnames:
                with self._open_file(fname) as f:
                    headers.append(_read_header(f, f'{self._path}: {fname}'))
            _HEADER_CACHE[key] = (headers, _check_headers(headers, [f'{self._path}: {f}' for f in self._image_fnames],
                                                          None))
        headers, shape = _HEADER_CACHE[key]
        if resolution is not None:
            _check_headers(headers[:1], [f'{self._path}: {self._image_fnames[0]}'], resolution)
        return list(shape)

    # Labels -----------------------------------------------------------------

    def _read_label_json(self):
        """Parsed `label_file` (or dataset.json): {fname: label} or None when absent / null."""
        if self._label_json is None:
            fname = self._label_file or DEFAULT_LABEL_FILE
            if fname not in self._all_fnames:
                if self._label_file is not None:
                    raise DatasetError(f'{self._path}: label file {fname!r} not found in the dataset; '
                                       f'make it with lt_dataset.py or check the --labels name')
                self._label_json = (None,)
                return None
            with self._open_file(fname) as f:
                try:
                    data = json.load(f)
                except (ValueError, UnicodeDecodeError) as e:
                    raise DatasetError(f'{self._path}: {fname} is not valid JSON ({e})') from None
            labels = data.get('labels') if isinstance(data, dict) else None
            if labels is not None:
                labels = {str(name).replace('\\', '/'): label for name, label in labels}
            self._label_json = (labels,)
        return self._label_json[0]

    def _select_listed_images(self):
        labels = self._read_label_json()
        if labels is None:
            raise DatasetError(f'{self._path}: label file {self._label_file!r} has no "labels" list, so it '
                               f'selects no images')
        missing = [f for f in labels if f not in self._all_fnames]
        if missing:
            raise DatasetError(f'{self._path}: {self._label_file} lists {missing[0]!r} ({len(missing)} missing in '
                               f'all), which is not in the dataset; was it made for another dataset?')
        return sorted(labels)

    def _load_raw_labels(self):
        labels = self._read_label_json()
        if labels is None:
            return None
        fname = self._label_file or DEFAULT_LABEL_FILE
        values = []
        for img in self._image_fnames:
            if img not in labels:
                raise DatasetError(f'{self._path}: {fname} has no label for {img!r}; every image needs one '
                                   f'(or "labels": null for an unlabeled dataset)')
            values.append(labels[img])
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            arr = np.array(values, dtype=np.int64)
            if arr.size and arr.min() < 0:
                raise DatasetError(f'{self._path}: {fname} has negative class labels; class labels are 0..C-1')
            return arr
        try:
            arr = np.array(values, dtype=np.float32)
        except (ValueError, TypeError):
            arr = None
        if arr is None or arr.ndim != 2:
            raise DatasetError(f'{self._path}: {fname} labels must be all integers (classes) or all lists of '
                               f'numbers of one length (vectors)')
        return arr

    # Images -----------------------------------------------------------------

    def _load_raw_image(self, raw_idx):
        """uint8 [C, H, W]; grayscale files give C = 1."""
        fname = self._image_fnames[raw_idx]
        with self._open_file(fname) as f:
            data = f.read()
        if pyspng is not None and self._file_ext(fname) == '.png':
            image = pyspng.load(data)
        else:
            with PIL.Image.open(io.BytesIO(data)) as img:
                if img.mode not in ('L', 'RGB'):
                    img = img.convert('RGB')
                image = np.asarray(img)
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        return image.transpose(2, 0, 1)

    def get_fname(self, idx):
        """Archive-relative path of item `idx`."""
        return self._image_fnames[self._raw_idx[idx]]


# ----------------------------------------------------------------------------


def check_dataset(path, resolution=None, use_labels=False, label_file=None, require_labels=False, **kwargs):
    """Open a dataset and return a summary EasyDict, or raise DatasetError naming the fix.

    For CLIs that want to validate `--data` before building networks. Summary keys:
    path, name, num_images, resolution, num_channels, label_dim, has_labels, class_counts (list or None).
    """
    ds = ImageFolderDataset(path, resolution=resolution, use_labels=use_labels or require_labels,
                            label_file=label_file, **kwargs)
    try:
        if require_labels and not ds.has_labels:
            raise DatasetError(f'{path}: conditional training needs labels, but the dataset has none; create it '
                               f'with dataset_tool.py from class sub-folders, or add labels to dataset.json')
        return EasyDict(path=path, name=ds.name, num_images=len(ds), resolution=ds.resolution,
                        num_channels=ds.num_channels, label_dim=ds.label_dim, has_labels=ds.has_labels,
                        class_counts=ds.class_counts().tolist() if ds.has_onehot_labels else None)
    finally:
        ds.close()
