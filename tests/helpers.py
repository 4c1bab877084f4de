"""Small helpers shared by several test modules: writing a dataset's files as a ZIP or a folder,
reading a snapshot pickle, and compiling a CUDA op's kernel maths for the host (GPU-machine tests)."""

import io
import os
import pickle
import shutil
import subprocess
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

def load_pickle(path):
    with open(path, 'rb') as f:
        return pickle.load(f)

def png_bytes(arr):
    """uint8 HWC / HW array -> uncompressed PNG bytes."""
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format='png', compress_level=0)
    return buf.getvalue()

def write_files(path, files, as_zip=True):
    """Write {relative name: bytes} as an uncompressed ZIP at `path`, or below the folder `path`."""
    if as_zip:
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            with open(os.path.join(path, name), 'wb') as f:
                f.write(data)
    return str(path)

def compile_host_harness(tmp_path_factory, name, source, include_dir):
    """Build a .cu harness that runs an op's kernel maths on the host; skips without nvcc."""
    nvcc = shutil.which('nvcc') or ('/usr/local/cuda/bin/nvcc' if os.path.exists('/usr/local/cuda/bin/nvcc') else None)
    if nvcc is None:
        pytest.skip('nvcc not available: cannot compile the kernel math for the host')
    d = tmp_path_factory.mktemp(name)
    src, exe = d / 'harness.cu', d / 'harness'
    src.write_text(source)
    res = subprocess.run([nvcc, '-std=c++17', '-arch=sm_80', '-I', include_dir, str(src), '-o', str(exe)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return str(exe)

def write_cifar_tarball(path, root, batches, label_key, names_key, meta_name, n_classes, per_batch=3, balanced=False):
    """A tarball in the CIFAR python layout: pickled dicts of uint8 [N, 3072] rows and labels, one
    per batch name, plus the meta file with the class names. Labels are random, or with
    balanced=True cycle through the classes. Returns {batch: (data, labels)}."""
    rnd = np.random.RandomState(1)
    content = {}
    with tarfile.open(path, 'w:gz') as tar:
        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f'{root}/{name}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for b in batches:
            data = rnd.randint(0, 256, [per_batch, 3072], dtype=np.uint8)
            labels = [i % n_classes for i in range(per_batch)] if balanced else rnd.randint(0, n_classes, per_batch).tolist()
            content[b] = (data, labels)
            add(b, {b'data': data, label_key: labels, b'batch_label': b'fake'})
        add(meta_name, {names_key: [f'class{i}'.encode() for i in range(n_classes)]})
    return content
