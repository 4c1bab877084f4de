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
    """Base class: which raw images are items (subset, mirroring) and their labels; subclasses read images.

    Subclasses implement `_load_raw_image(raw_idx) -> uint8 [C, H, W]` and
    `_load_raw_labels() -> None | int64 [N] | float32 [N, D]`.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)  # [N, C, H, W]
        self._use_labels = use_labels
        self._raw_labels = None            # read on first use
        self._label_shape = None
        self._raw_idx, self._xflip = self._select_items(self._raw_shape[0], max_size, xflip, random_seed)

    @staticmethod
    def _select_items(num_raw, max_size, xflip, random_seed):
        """(raw index, mirrored?) of every item: a seeded subset in file order, then, with xflip,
        the same images again mirrored."""
        chosen = np.arange(num_raw, dtype=np.int64)
        if max_size is not None and num_raw > max_size:
            chosen = np.sort(np.random.RandomState(random_seed).permutation(chosen)[:max_size])
        copies = 2 if xflip else 1
        return np.tile(chosen, copies), np.repeat(np.arange(copies, dtype=np.uint8), chosen.size)

    def _get_raw_labels(self):
        """Labels of all raw images: int64 [N], float32 [N, D], or float32 [N, 0] without labels."""
        if self._raw_labels is not None:
            return self._raw_labels
        labels = self._load_raw_labels() if self._use_labels else None
        if labels is None:
            labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
        if labels.shape[0] != self._raw_shape[0] or labels.dtype not in (np.int64, np.float32):
            raise RuntimeError(f'{type(self).__name__}._load_raw_labels returned {labels.dtype} {labels.shape} '
                               f'for {self._raw_shape[0]} images')
        self._raw_labels = labels
        return labels

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError

    def _load_raw_labels(self):
        raise NotImplementedError

    def _describe_raw(self, raw_idx):
        return f'image {raw_idx}'

    def close(self):
        """Release open files; subclasses holding handles override it."""

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: modules may already be gone
            pass

    # Items -------------------------------------------------------------------

    def __len__(self):
        return len(self._raw_idx)

    def __getitem__(self, idx):
        """Return (uint8 [C, H, W] image, float32 [label_dim] label)."""
        raw_idx = self._raw_idx[idx]
        image = self._load_raw_image(raw_idx)
        if list(image.shape) != self.image_shape:
            raise DatasetError(f'{self._describe_raw(raw_idx)}: shape {list(image.shape)} differs from '
                               f'the dataset shape {self.image_shape}; re-create the dataset with dataset_tool.py')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        # A copy: the caller may write into it, and a mirrored view is not contiguous.
        return np.array(image, dtype=np.uint8, copy=True), self.get_label(idx)

    def get_label(self, idx):
        """float32 [label_dim]: one-hot for integer labels, the stored vector otherwise."""
        return self.get_labels([idx])[0]

    def get_labels(self, indices):
        """float32 [len(indices), label_dim]: the label of each index (see get_label), in one numpy operation."""
        indices = np.asarray(indices, dtype=np.int64)
        raw = self._get_raw_labels()[self._raw_idx[indices]]
        if raw.dtype != np.int64:
            return raw.astype(np.float32, copy=True)
        return np.eye(self.label_dim, dtype=np.float32)[raw]   # one-hot rows

    def get_details(self, idx):
        """EasyDict(raw_idx, xflip, raw_label) for item `idx`."""
        raw_idx = int(self._raw_idx[idx])
        return EasyDict(raw_idx=raw_idx, xflip=bool(self._xflip[idx]), raw_label=self._get_raw_labels()[raw_idx].copy())

    def class_counts(self):
        """int64 [label_dim]: images per class among the selected images (mirrored copies not counted)."""
        if not self.has_onehot_labels:
            raise DatasetError(f'dataset {self._name!r} has no integer class labels (use_labels='
                               f'{self._use_labels}); class counts need labels in dataset.json')
        originals = self._raw_idx[self._xflip == 0]
        return np.bincount(self._get_raw_labels()[originals], minlength=self.label_dim).astype(np.int64)

    # Shape and label facts (the names metrics, tools and upstream code read) -----

    name = property(lambda self: self._name)
    image_shape = property(lambda self: list(self._raw_shape[1:]), doc='[C, H, W]')
    num_channels = property(lambda self: self._raw_shape[1])
    has_onehot_labels = property(lambda self: self._get_raw_labels().dtype == np.int64,
                                 doc='integer class labels (served one-hot)?')
    has_labels = property(lambda self: any(self.label_shape), doc='a label of non-zero length?')

    @property
    def resolution(self):
        height, width = self._raw_shape[2:]
        if height != width:
            raise DatasetError(f'dataset {self._name!r} has {width}x{height} images; square images are needed')
        return height

    @property
    def label_shape(self):
        """[number of classes] for integer labels, [D] for vector labels, [0] without labels."""
        if self._label_shape is None:
            labels = self._get_raw_labels()
            if labels.dtype == np.int64:
                self._label_shape = [int(labels.max()) + 1 if labels.size else 0]
            else:
                self._label_shape = list(labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        if len(self.label_shape) != 1:
            raise DatasetError(f'dataset {self._name!r} has labels of shape {self.label_shape}; one axis is needed')
        return self.label_shape[0]


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


class _ZipPerProcess:
    """A ZipFile opened on first use and again in every new process.

    A handle must not cross a fork (DataLoader workers) or a pickle: the child would share
    the parent's file offset. Pickling keeps only the path.
    """

    def __init__(self, path):
        self.path = path
        self._handle, self._owner = None, None

    def handle(self):
        if self._owner != os.getpid():
            self._handle, self._owner = zipfile.ZipFile(self.path), os.getpid()
        return self._handle

    def close(self):
        handle, owner = self._handle, self._owner
        self._handle, self._owner = None, None
        if handle is not None and owner == os.getpid():
            handle.close()

    def __getstate__(self):
        return dict(path=self.path, _handle=None, _owner=None)


def _extension(fname):
    return os.path.splitext(fname)[1].lower()


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
        self._zip = None     # _ZipPerProcess for a ZIP dataset
        self._label_json = None

        if os.path.isdir(path):
            self._all_fnames = self._list_dir(path)
        elif os.path.isfile(path) and _extension(path) == '.zip':
            self._zip = _ZipPerProcess(path)
            try:
                self._all_fnames = {n for n in self._zip.handle().namelist() if not n.endswith('/')}
            except zipfile.BadZipFile as e:
                raise DatasetError(f'{path}: not a valid ZIP archive ({e}); re-create it with dataset_tool.py') from None
        elif os.path.exists(path):
            raise DatasetError(f'{path}: a dataset must be a folder or a .zip file; create one with dataset_tool.py')
        else:
            raise DatasetError(f'dataset path {path!r} does not exist; create a dataset with '
                               f'dataset_tool.py --source=... --dest={path}')

        self._image_fnames = sorted(f for f in self._all_fnames if _extension(f) in IMAGE_EXTENSIONS)
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

    def _open_file(self, fname):
        """A binary file object for an archive-relative name."""
        if self._zip is not None:
            return self._zip.handle().open(fname, 'r')
        return open(os.path.join(self._path, fname), 'rb')

    def close(self):
        if self._zip is not None:
            self._zip.close()

    def _describe_raw(self, raw_idx):
        return f'{self._path}: {self._image_fnames[raw_idx]}'

    def _scan_image_shape(self, resolution):
        """Read every image header once (cached per dataset version) and check the sizes."""
        stat = os.stat(self._path)
        key = (os.path.abspath(self._path), stat.st_mtime_ns, stat.st_size, tuple(self._image_fnames))
        if self._zip is None:   # a folder's mtime misses edits to files in it
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
        if pyspng is not None and _extension(fname) == '.png':
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
