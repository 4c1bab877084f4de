"""Folder mode: read generated images from a folder (searched recursively) or a ZIP, so
that FID / KID / PR / IS of any generator's output can be computed against a dataset
with the same detector and no network."""

import io
import os
import zipfile

import numpy as np
import PIL.Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')

class ImageFiles:
    """Sorted image files of a folder or ZIP. item i -> (uint8 [C, H, W] with C in {1, 3}, None)."""
    def __init__(self, path):
        self.path = path
        if os.path.isdir(path):
            names = [os.path.relpath(os.path.join(root, f), path) for root, _dirs, files in os.walk(path) for f in files]
            self._is_zip = False
        elif os.path.isfile(path) and zipfile.is_zipfile(path):
            self._is_zip = True
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        else:
            raise FileNotFoundError(f'--images: "{path}" is neither a folder nor a ZIP file of images')
        self.names = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
        if not self.names:
            raise ValueError(f'--images: no image files ({", ".join(IMAGE_EXTENSIONS)}) found in "{path}"')

        self._zip, self._zip_pid = None, None

    def __len__(self):
        return len(self.names)

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _zip_pid=None)  # DataLoader workers reopen the ZIP

    def _open(self, name):
        if self._is_zip:
            if self._zip is None or self._zip_pid != os.getpid():
                self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
            return io.BytesIO(self._zip.read(name))
        return open(os.path.join(self.path, name), 'rb')

    def __getitem__(self, idx):
        name = self.names[idx]
        try:
            with self._open(name) as f:
                img = PIL.Image.open(f)
                img = img.convert('L' if img.mode in ('L', 'I;16', 'I', '1') else 'RGB')
                arr = np.array(img, dtype=np.uint8)
        except Exception as e:
            raise ValueError(f'cannot read image "{name}" in "{self.path}": {e}') from e
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return arr.transpose(2, 0, 1), None
