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
            self._zip = None
        elif os.path.isfile(path) and zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            names = self._zip.namelist()
        else:
            raise FileNotFoundError(f'--images: "{path}" is neither a folder nor a ZIP file of images')
        self.names = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
        if not self.names:
            raise ValueError(f'--images: no image files ({", ".join(IMAGE_EXTENSIONS)}) found in "{path}"')

    def __len__(self):
        return len(self.names)

    def _open(self, name):
        if self._zip is not None:
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
