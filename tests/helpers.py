"""Small helpers shared by several test modules: writing a dataset's files as a ZIP or a folder,
reading a snapshot pickle, and compiling a CUDA op's kernel maths for the host (GPU-machine tests)."""

import io
import os
import pickle
import shutil
import subprocess
import zipfile

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
