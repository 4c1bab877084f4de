"""Convert image collections into the training format read by training/dataset.py.

Output: a ZIP (or folder) of same-size uncompressed PNGs named `{idx//1000:05d}/img{idx:08d}.png`
plus `dataset.json` with class labels (or null). Images are streamed one at a time, corrupt
files are skipped and reported, and the output appears only when complete (temp file + rename).
"""

import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import zipfile

import click
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.gif', '.ppm', '.pgm')
LABEL_FILE = 'dataset.json'
BUILTIN_PREFIX = 'builtin:'
SHAPE_CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'stripes')
DEFAULT_BUILTIN_COUNT = 1000
DEFAULT_BUILTIN_RESOLUTION = (32, 32)
MAX_LISTED_SKIPS = 50
MAX_QUIET_ENLARGEMENT = 2  # images blown up more than this are named in the summary (--skip-enlarged drops them)

# Errors PIL raises for files that are not images, truncated or otherwise undecodable.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError)


class ToolError(click.ClickException):
    """A user-fixable problem; click prints it as `Error: ...` without a traceback."""


class SkipImage(Exception):
    """This source item cannot be used (not an image, corrupt); it is skipped and reported."""


# ----------------------------------------------------------------------------
# Sources. Each exposes `items` (list of (display name, label or None)), `class_names`
# (list or None), `ignored` (list of (name, reason): files that are not images, reported but
# never sampled) and `read(i) -> PIL.Image` (decoded; raises SkipImage for unusable files).


def _decode(data, name):
    """Fully decode image bytes (so that truncated files fail here, not later)."""
    try:
        img = PIL.Image.open(io.BytesIO(data))
        img.load()
        return PIL.ImageOps.exif_transpose(img)
    except PIL.UnidentifiedImageError:
        raise SkipImage('corrupt or not an image (format not recognised)') from None
    except DECODE_ERRORS as e:
        raise SkipImage(f'unreadable image ({e})') from None


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _FileTreeSource:
    """A folder or ZIP: images sorted by relative path, labels from dataset.json or parent folders.

    The label of `a/b/cat/x.png` is the index of `cat` among the sorted names of all folders
    that directly contain images (so `train/cat` and `test/cat` are one class); images at the
    root have no label. A dataset.json at the root takes precedence.
    """

    def __init__(self, names, read_bytes, subfolder, origin):
        self._read_bytes = read_bytes
        prefix = subfolder.strip('/') + '/' if subfolder else ''
        names = sorted(n for n in names if n.startswith(prefix) and not n.endswith('/'))
        json_labels = self._load_json_labels(names, origin)
        names = [n for n in names if n != LABEL_FILE and not os.path.basename(n).startswith('.')]
        self.ignored = [(n, 'not an image file') for n in names if not _is_image_name(n)]
        names = [n for n in names if _is_image_name(n)]
        if not names:
            raise ToolError(f'{origin}: no image files found' + (f' under {subfolder!r}' if subfolder else ''))
        if json_labels is not None:
            self.class_names = None
            self.items = [(n, json_labels.get(n)) for n in names]
        else:
            parents = [n[len(prefix):].rpartition('/')[0].rpartition('/')[2] for n in names]
            self.class_names = sorted(set(p for p in parents if p)) or None
            index = {c: i for i, c in enumerate(self.class_names or [])}
            self.items = [(n, index.get(p)) for n, p in zip(names, parents)]

    def _load_json_labels(self, names, origin):
        if LABEL_FILE not in names:
            return None
        try:
            labels = json.loads(self._read_bytes(LABEL_FILE)).get('labels')
        except (ValueError, AttributeError) as e:
            raise ToolError(f'{origin}: {LABEL_FILE} is not valid ({e})') from None
        if labels is None:
            return None
        return {str(n).replace('\\', '/'): lab for n, lab in labels}

    def read(self, i):
        name = self.items[i][0]
        return _decode(self._read_bytes(name), name)


def folder_source(path, subfolder=None):
    names = []
    for dirpath, _dirs, files in os.walk(path):
        names += [os.path.relpath(os.path.join(dirpath, f), path).replace(os.sep, '/') for f in files]

    def read_bytes(name):
        with open(os.path.join(path, name), 'rb') as f:
            return f.read()
    return _FileTreeSource(names, read_bytes, subfolder, path)


def zip_source(path, subfolder=None):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ToolError(f'{path}: not a valid ZIP archive ({e})') from None
    return _FileTreeSource(zf.namelist(), zf.read, subfolder, path)


class ListSource:
    """A text file with one image path per line (relative to the list's folder).

    A line may end in a TAB and an integer class label; labels are kept only if every line has one.
    """

    def __init__(self, path):
        base = os.path.dirname(os.path.abspath(path))
        self.items, self._paths = [], []
        with open(path, encoding='utf-8') as f:
            for line in f:
                line = line.rstrip('\r\n')
                if not line.strip() or line.lstrip().startswith('#'):
                    continue
                name, _, label = line.partition('\t')
                try:
                    label = int(label) if label.strip() else None
                except ValueError:
                    raise ToolError(f'{path}: bad label {label!r} for {name!r}; expected "path<TAB>integer"') from None
                self.items.append((name, label))
                self._paths.append(os.path.join(base, os.path.expanduser(name)))
        if not self.items:
            raise ToolError(f'{path}: the list names no files')
        self.class_names = None
        self.ignored = []

    def read(self, i):
        try:
            with open(self._paths[i], 'rb') as f:
                data = f.read()
        except OSError as e:
            raise SkipImage(f'cannot read ({e.strerror})') from None
        return _decode(data, self.items[i][0])


class CifarSource:
    """CIFAR-10 / CIFAR-100 python archives, read batch by batch from the tarball.

    CIFAR-100 uses the 100 fine labels. `split` is 'train' (50,000 images) or 'test' (10,000).
    """

    LAYOUTS = {
        'cifar10': dict(root='cifar-10-batches-py', meta='batches.meta', names=b'label_names', labels=b'labels',
                        train=[f'data_batch_{i}' for i in range(1, 6)], test=['test_batch']),
        'cifar100': dict(root='cifar-100-python', meta='meta', names=b'fine_label_names', labels=b'fine_labels',
                         train=['train'], test=['test']),
    }

    def __init__(self, path, split=None):
        split = split or 'train'
        if split not in ('train', 'test'):
            raise ToolError(f'--subfolder={split!r}: CIFAR archives have the splits "train" and "test"')
        self._tar = tarfile.open(path)
        members = set(self._tar.getnames())
        kind = next((k for k, v in self.LAYOUTS.items() if f'{v["root"]}/{v[split][0]}' in members), None)
        if kind is None:
            raise ToolError(f'{path}: not a CIFAR-10 or CIFAR-100 python archive (cifar-10-python.tar.gz / '
                            f'cifar-100-python.tar.gz)')
        self._layout = self.LAYOUTS[kind]
        self._batches = [f'{self._layout["root"]}/{b}' for b in self._layout[split]]
        meta = self._unpickle(f'{self._layout["root"]}/{self._layout["meta"]}') \
            if f'{self._layout["root"]}/{self._layout["meta"]}' in members else {}
        self.class_names = [n.decode() for n in meta.get(self._layout['names'], [])] or None
        # Labels of every batch are small; the pixels are loaded one batch at a time in read().
        self.items, self._starts = [], []
        for b in self._batches:
            labels = self._unpickle(b)[self._layout['labels']]
            self._starts.append(len(self.items))
            self.items += [(f'{os.path.basename(b)}[{j}]', int(lab)) for j, lab in enumerate(labels)]
        self._cached = (None, None)
        self.ignored = []

    def _unpickle(self, member):
        with self._tar.extractfile(member) as f:
            return pickle.load(f, encoding='bytes')

    def read(self, i):
        b = int(np.searchsorted(self._starts, i, side='right')) - 1
        if self._cached[0] != b:
            self._cached = (b, None)  # Drop the old batch before loading the next.
            data = self._unpickle(self._batches[b])[b'data']
            self._cached = (b, np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        return PIL.Image.fromarray(self._cached[1][i - self._starts[b]].transpose(1, 2, 0), 'RGB')


class ShapesSource:
    """`builtin:shapes`: procedurally drawn images of 6 classes, no download needed.

    Classes: circle, square, triangle, cross, ring, stripes; random colours, positions, sizes and
    rotations. Image i depends only on (seed, i), class i % 6, so the dataset is balanced.
    """

    SUPERSAMPLE = 4  # Drawn at 4x and box-downsampled: anti-aliased edges.

    def __init__(self, count, resolution, seed):
        self._res, self._seed = resolution, seed
        self.class_names = list(SHAPE_CLASSES)
        self.ignored = []
        self.items = [(f'shapes[{i}]', i % len(SHAPE_CLASSES)) for i in range(count)]

    def read(self, i):
        rnd = np.random.RandomState([self._seed % (2 ** 32), i])
        w, h = self._res
        s = self.SUPERSAMPLE
        bg = rnd.randint(0, 256, size=3)
        fg = rnd.randint(0, 256, size=3)
        while np.abs(fg - bg).sum() < 200:  # Keep the shape visible against the background.
            fg = rnd.randint(0, 256, size=3)
        img = PIL.Image.new('RGB', (w * s, h * s), tuple(int(x) for x in bg))
        self._draw(PIL.ImageDraw.Draw(img), self.items[i][1], rnd, w * s, h * s, tuple(int(x) for x in fg))
        return img.resize((w, h), PIL.Image.BOX)

    @staticmethod
    def _draw(draw, cls, rnd, width, height, fg):
        size = min(width, height)
        r = rnd.uniform(0.2, 0.3) * size
        # Near the centre (a GAN learns the shapes much sooner than their positions), never clipped.
        cx = width / 2 + rnd.uniform(-0.08, 0.08) * size
        cy = height / 2 + rnd.uniform(-0.08, 0.08) * size
        theta = rnd.uniform(0, 2 * np.pi)

        def polygon(n, radius, angle):
            return [(cx + radius * np.cos(angle + 2 * np.pi * k / n), cy + radius * np.sin(angle + 2 * np.pi * k / n))
                    for k in range(n)]
        name = SHAPE_CLASSES[cls]
        if name == 'circle':
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        elif name == 'square':
            draw.polygon(polygon(4, r * 1.2, theta), fill=fg)
        elif name == 'triangle':
            draw.polygon(polygon(3, r * 1.3, theta), fill=fg)
        elif name == 'cross':
            for a in (theta, theta + np.pi / 2):
                dx, dy = r * 1.2 * np.cos(a), r * 1.2 * np.sin(a)
                draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fg, width=max(int(r * 0.45), 1))
        elif name == 'ring':
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(int(r * 0.35), 1))
        elif name == 'stripes':
            period = rnd.uniform(0.15, 0.3) * size
            dx, dy = np.cos(theta), np.sin(theta)  # Stripe direction; offsets run along the normal.
            diag = float(np.hypot(width, height))
            for off in np.arange(-diag, diag, period):
                px, py = width / 2 - dy * off, height / 2 + dx * off
                draw.line([px - dx * diag, py - dy * diag, px + dx * diag, py + dy * diag], fill=fg,
                          width=max(int(period / 2), 1))


def _is_lmdb(path):
    """An LMDB environment: a folder holding data.mdb (LSUN's *_lmdb), or a .mdb / .lmdb file."""
    return (os.path.isfile(os.path.join(path, 'data.mdb')) or path.rstrip('/').lower().endswith(('_lmdb', '.lmdb', '.mdb')))


def open_source(source, subfolder=None, max_images=None, resolution=None, seed=0):
    """Pick the reader for `--source`."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name != 'shapes':
            raise ToolError(f'--source={source}: unknown built-in dataset; available: builtin:shapes')
        return ShapesSource(DEFAULT_BUILTIN_COUNT if max_images is None else max_images,
                            resolution or DEFAULT_BUILTIN_RESOLUTION, seed)
    if _is_lmdb(source):
        raise ToolError(f'--source={source}: LMDB databases (LSUN) are not supported; export the images to a folder '
                        f'first (e.g. with the LSUN tools) and pass that folder')
    if os.path.isdir(source):
        return folder_source(source, subfolder)
    if not os.path.isfile(source):
        raise ToolError(f'--source={source}: no such file or folder')
    lower = source.lower()
    if lower.endswith('.zip'):
        return zip_source(source, subfolder)
    if lower.endswith(('.tar.gz', '.tgz', '.tar')):
        return CifarSource(source, subfolder)
    if lower.endswith(('.txt', '.lst', '.list')):
        return ListSource(source)
    raise ToolError(f'--source={source}: unsupported source; use a folder, a .zip, a CIFAR python .tar.gz, '
                    f'a .txt list of image paths, or builtin:shapes')


# ----------------------------------------------------------------------------
# Per-image conversion.


def convert_channels(img, keep_channels):
    """Return an 'RGB' image (default) or, with keep_channels, 'L' / 'LA' / 'RGB' / 'RGBA'.

    Transparent areas become black when alpha is dropped; 16-bit images keep their high byte.
    """
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        arr = np.asarray(img).astype(np.int64)
        arr = arr >> 8 if arr.max(initial=0) > 255 else arr
        img = PIL.Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), 'L')
    elif img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    elif img.mode not in ('L', 'LA', 'RGB', 'RGBA'):
        img = img.convert('RGB' if img.mode in ('CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX') else 'L')
    if keep_channels:
        return img
    if img.mode in ('LA', 'RGBA'):
        black = PIL.Image.new('RGBA', img.size, (0, 0, 0, 255))
        img = PIL.Image.alpha_composite(black, img.convert('RGBA'))
    return img.convert('RGB')


def crop_box(img_size, transform, size):
    """The part of an image of `img_size` (w, h) that --transform keeps: (left, top, right, bottom)."""
    w, h = img_size
    if transform == 'center-crop':
        cw = ch = min(w, h)
    elif transform == 'center-crop-wide':  # the W:H aspect of the output
        aspect = size[0] / size[1]
        cw, ch = (int(round(h * aspect)), h) if w / h > aspect else (w, int(round(w / aspect)))
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch

def enlargement(img_size, transform, size):
    """How many times the kept part of an image is blown up to reach the output size (1 = not)."""
    if size is None:
        return 1.0
    left, top, right, bottom = crop_box(img_size, transform, size)
    return max(size[0] / (right - left), size[1] / (bottom - top), 1.0)

def transform_image(img, transform, size, resample):
    """Apply --transform / --resolution. `size` is (W, H) or None (keep the size)."""
    if transform is None:
        return img if size is None or img.size == tuple(size) else img.resize(size, resample)
    width, height = size
    img = img.crop(crop_box(img.size, transform, size))
    if transform == 'center-crop':
        return img if img.size == (width, height) else img.resize((width, height), resample)
    # center-crop-wide: resize, then letterbox onto a black square.
    img = img.resize((width, height), resample)
    side = max(width, height)
    canvas = PIL.Image.new(img.mode, (side, side))
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def _is_pow2_square(w, h):
    return w == h and w >= 4 and (w & (w - 1)) == 0


def output_name(idx):
    return f'{idx // 1000:05d}/img{idx:08d}.png'


# ----------------------------------------------------------------------------
# Atomic writers: everything goes to a temporary name beside the destination.


class _ZipWriter:
    def __init__(self, dest):
        self.dest = dest
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)     # --dest=data/new.zip with no data/ yet
        self.tmp = os.path.join(parent, f'.{os.path.basename(dest)}.tmp{os.getpid()}')
        self._zf = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)

    def add(self, name, data):
        self._zf.writestr(name, data)

    def commit(self):
        self._zf.close()
        os.replace(self.tmp, self.dest)

    def abort(self):
        try:
            self._zf.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


class _DirWriter:
    def __init__(self, dest):
        if os.path.isdir(dest) and os.listdir(dest):
            raise ToolError(f'--dest={dest}: the folder exists and is not empty; choose a new name or remove it')
        self.dest = dest
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(dest)), f'.{os.path.basename(dest)}.tmp{os.getpid()}')
        os.makedirs(self.tmp)

    def add(self, name, data):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)

    def commit(self):
        if os.path.isdir(self.dest):
            os.rmdir(self.dest)  # Empty (checked at start).
        os.replace(self.tmp, self.dest)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def encode_png(img):
    buf = io.BytesIO()
    img.save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------


def parse_resolution(text):
    """'256x256' or '256' -> (256, 256)."""
    if text is None:
        return None
    parts = text.lower().split('x')
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ToolError(f'--resolution={text!r}: expected WxH, e.g. 256x256') from None
    if len(parts) > 2 or w <= 0 or h <= 0:
        raise ToolError(f'--resolution={text!r}: expected WxH, e.g. 256x256')
    return w, h


def _check_output_size(resolution, transform):
    if transform is not None and resolution is None:
        raise ToolError(f'--transform={transform} needs --resolution, e.g. --resolution=256x256')
    if resolution is None:
        return
    w, h = resolution
    side = max(w, h) if transform == 'center-crop-wide' else None
    if side is not None:
        if not _is_pow2_square(side, side):
            raise ToolError(f'--resolution={w}x{h}: with center-crop-wide the output is {side}x{side}, '
                            f'which must be a power of two')
    elif not _is_pow2_square(w, h):
        raise ToolError(f'--resolution={w}x{h}: training needs square power-of-two images, e.g. 256x256 '
                        f'(for wide images use --transform=center-crop-wide)')


def select_indices(n, max_images, seed):
    """All indices, or a seeded random subset of `max_images` of them, sorted."""
    if max_images is None or max_images >= n:
        return np.arange(n)
    return np.sort(np.random.RandomState(seed).choice(n, size=max_images, replace=False))


def convert_dataset(source, dest, max_images=None, seed=0, resolution=None, transform=None, resize_filter='lanczos',
                    keep_channels=False, strict=False, subfolder=None, progress=True, log=print, skip_enlarged=False):
    """Convert `source` into a dataset at `dest` (a .zip or a folder). Returns a summary dict.

    Images blown up more than MAX_QUIET_ENLARGEMENT times are listed in the summary
    (`enlarged`), or left out with skip_enlarged=True (then listed with the skipped files).
    Raises ToolError for user errors (nothing is left at `dest` then).
    """
    size = parse_resolution(resolution) if isinstance(resolution, str) else resolution
    _check_output_size(size, transform)
    if os.path.abspath(dest) == os.path.abspath(source):
        raise ToolError('--dest must differ from --source')
    src = open_source(source, subfolder=subfolder, max_images=max_images, resolution=size, seed=seed)
    indices = select_indices(len(src.items), max_images, seed)
    resample = {'box': PIL.Image.BOX, 'lanczos': PIL.Image.LANCZOS}[resize_filter]

    writer = _ZipWriter(dest) if dest.lower().endswith('.zip') else _DirWriter(dest)
    labels, skipped, enlarged, first = [], list(src.ignored), [], None
    try:
        bar = _progress(indices, progress)
        for i in bar:
            name, label = src.items[i]
            try:
                img = src.read(i)
                factor = enlargement(img.size, transform, size)
                if factor > MAX_QUIET_ENLARGEMENT:
                    if skip_enlarged:
                        raise SkipImage(f'{img.size[0]}x{img.size[1]} would be enlarged {factor:g}x (--skip-enlarged)')
                    enlarged.append((name, f'{img.size[0]}x{img.size[1]} enlarged {factor:g}x'))
                img = transform_image(convert_channels(img, keep_channels), transform, size, resample)
            except SkipImage as e:
                if strict:  # Only files that should be images count; a README next to them is fine.
                    raise ToolError(f'{name}: {e} (--strict stops at the first bad file)') from None
                skipped.append((name, str(e)))
                continue
            first = _check_consistent(img, name, first)
            out = output_name(len(labels))
            writer.add(out, encode_png(img))
            labels.append((out, label))
        if not labels:
            raise ToolError(f'--source={source}: no usable images ({len(skipped)} skipped)')
        all_labelled = all(lab is not None for _, lab in labels)
        meta = {'labels': [[n, lab] for n, lab in labels] if all_labelled else None}
        if all_labelled and src.class_names:
            meta['class_names'] = src.class_names
        writer.add(LABEL_FILE, json.dumps(meta).encode())
        writer.commit()
    except BaseException:
        writer.abort()
        raise

    summary = dict(dest=dest, num_images=len(labels), width=first[1][0], height=first[1][1],
                   channels=len(first[2]), labels=meta['labels'] is not None,
                   num_classes=len(set(lab for _, lab in labels)) if meta['labels'] else 0, skipped=skipped,
                   class_names=meta.get('class_names'), enlarged=enlarged)
    _print_summary(summary, labels, log)
    return summary


def _progress(indices, enabled):
    if not enabled:
        return indices
    from tqdm import tqdm
    return tqdm(indices, unit='img', file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def _check_consistent(img, name, first):
    """All images must share the first one's size and mode; returns (name, size, mode) of the first."""
    if first is None:
        w, h = img.size
        if not _is_pow2_square(w, h):
            raise ToolError(f'{name}: image is {w}x{h}; training needs square power-of-two images: use '
                            f'--resolution=RxR (and --transform=center-crop for non-square sources)')
        return name, img.size, img.mode
    if img.size != first[1]:
        raise ToolError(f'{name}: image is {img.size[0]}x{img.size[1]}, but {first[0]} is '
                        f'{first[1][0]}x{first[1][1]}; all images must have one size: use '
                        f'--transform=center-crop --resolution=RxR')
    if img.mode != first[2]:
        raise ToolError(f'{name}: image mode {img.mode}, but {first[0]} is {first[2]}; with --keep-channels all '
                        f'images must have the same channels (leave it out to convert everything to RGB)')
    return first


def _print_summary(s, labels, log):
    classes = f', {s["num_classes"]} classes' if s['labels'] else ', no labels'
    log(f'Wrote {s["num_images"]} images ({s["width"]}x{s["height"]}, {s["channels"]} channels{classes}) '
        f'to {s["dest"]}')
    if not s['labels'] and any(lab is not None for _, lab in labels):
        log('Note: some images had no class label (e.g. files at the top level), so dataset.json has "labels": null')
    _log_list(f'Skipped {len(s["skipped"])} files:', s['skipped'], log)
    _log_list(f'Enlarged more than {MAX_QUIET_ENLARGEMENT}x ({len(s["enlarged"])} images; they will look blurred, '
              f'--skip-enlarged leaves them out):', s['enlarged'], log)


def _log_list(title, entries, log):
    """A heading and one `name: why` line per entry (the first MAX_LISTED_SKIPS)."""
    if not entries:
        return
    log(title)
    for name, why in entries[:MAX_LISTED_SKIPS]:
        log(f'  {name}: {why}')
    if len(entries) > MAX_LISTED_SKIPS:
        log(f'  ... and {len(entries) - MAX_LISTED_SKIPS} more')


# ----------------------------------------------------------------------------


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--source', required=True, metavar='PATH',
              help='Folder (recursive; labels from class sub-folder names), .zip (same; its dataset.json wins), '
                   'cifar-10-python.tar.gz / cifar-100-python.tar.gz, a .txt list of image paths '
                   '(optional TAB + integer label), or builtin:shapes (6 procedurally drawn classes, '
                   'no download; count = --max-images [1000], size = --resolution [32x32], seeded by --seed).')
@click.option('--dest', required=True, metavar='PATH', help='Output .zip (recommended) or folder.')
@click.option('--max-images', '--max_images', 'max_images', type=click.IntRange(min=1), default=None,
              help='At most this many images: a random subset chosen with --seed, not the first N as upstream\'s '
                   'dataset_tool takes (all by default).')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed for --max-images subsets and builtin:shapes.')
@click.option('--resolution', metavar='WxH', default=None, help='Output size, e.g. 256x256.')
@click.option('--width', type=click.IntRange(min=1), default=None, help='Output width (upstream\'s spelling; with --height, '
              'the same as --resolution=WxH).')
@click.option('--height', type=click.IntRange(min=1), default=None, help='Output height (with --width).')
@click.option('--transform', type=click.Choice(['center-crop', 'center-crop-wide']), default=None,
              help='Crop before resizing to --resolution (center-crop-wide letterboxes onto a square).')
@click.option('--resize-filter', type=click.Choice(['box', 'lanczos']), default='lanczos', show_default=True)
@click.option('--keep-channels', is_flag=True, help='Keep grayscale / RGBA instead of converting to RGB.')
@click.option('--strict', is_flag=True, help='Stop at the first corrupt or unreadable file instead of skipping it.')
@click.option('--skip-enlarged', is_flag=True,
              help=f'Leave out images that would be enlarged more than {MAX_QUIET_ENLARGEMENT}x to reach --resolution '
                   f'(without it they are kept and named at the end).')
@click.option('--subfolder', default=None, metavar='DIR',
              help='Only images under this folder of the source (e.g. train); for CIFAR archives: train [default] or test.')
def main(source, dest, max_images, seed, resolution, width, height, transform, resize_filter, keep_channels, strict,
         skip_enlarged, subfolder):
    """Convert images into a training dataset (a ZIP of PNGs plus dataset.json).

    \b
    Examples:
      python dataset_tool.py --source=builtin:shapes --dest=data/shapes-32.zip
      python dataset_tool.py --source=~/cifar-10-python.tar.gz --dest=data/cifar10.zip
      python dataset_tool.py --source=../shared/data/cifar10-jpeg.zip --subfolder=train --dest=data/c10.zip
      python dataset_tool.py --source=photos/ --dest=data/photos-256.zip --transform=center-crop --resolution=256x256
    """
    convert_dataset(os.path.expanduser(source) if not source.startswith(BUILTIN_PREFIX) else source,
                    os.path.expanduser(dest), max_images=max_images, seed=seed,
                    resolution=resolution_option(resolution, width, height),
                    transform=transform, resize_filter=resize_filter, keep_channels=keep_channels, strict=strict,
                    subfolder=subfolder, log=click.echo, skip_enlarged=skip_enlarged)


def resolution_option(resolution, width, height):
    """--resolution=WxH, or upstream's --width=W --height=H (both, and not with --resolution)."""
    if width is None and height is None:
        return resolution
    if width is None or height is None:
        raise ToolError('--width and --height go together (or use --resolution=WxH)')
    if resolution is not None:
        raise ToolError('give either --resolution or --width/--height, not both')
    return f'{width}x{height}'


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
