"""The run's image grids: reals.png, fakes_init.png and fakesNNNNNN.png (a fixed set of latents
and labels rendered by G_ema at every image snapshot)."""

import os

import numpy as np
import PIL.Image
import torch

import dnnlib

def setup_snapshot_image_grid(training_set, random_seed=0, max_size=32):
    """Pick reals for the grid: (grid_size (gw, gh), images uint8 [N, C, H, W], labels [N, c_dim]).

    Unlabelled data: a seeded random selection. Labelled data: one row per label (sorted),
    each row filled with images of that label, cycling if a class has few images.
    """
    rnd = np.random.RandomState(random_seed)
    _channels, height, width = training_set.image_shape
    # Enough tiles to fill a 7680x4320 screen, at least 7 x 4, at most max_size per side.
    cols = int(np.clip(7680 // width, 7, max_size))
    rows = int(np.clip(4320 // height, 4, max_size))
    if training_set.has_labels:
        picks = _grid_rows_by_label(training_set, rnd, rows, cols)
    else:
        pool = list(range(len(training_set)))
        rnd.shuffle(pool)
        picks = [pool[k % len(pool)] for k in range(rows * cols)]
    items = [training_set[idx] for idx in picks]
    return (cols, rows), np.stack([image for image, _ in items]), np.stack([label for _, label in items])

def _grid_rows_by_label(training_set, rnd, rows, cols):
    """Item indices, row-major: row r shows images of the (r mod #labels)-th label in sorted order."""
    members = {}
    for idx in range(len(training_set)):
        raw = np.ravel(training_set.get_details(idx).raw_label)
        members.setdefault(tuple(raw[::-1]), []).append(idx)   # vectors sort by their last entry first
    labels = sorted(members)
    for label in labels:
        rnd.shuffle(members[label])
    picks = []
    for r in range(rows):
        row = members[labels[r % len(labels)]]
        picks.extend(row[k % len(row)] for k in range(cols))
    return picks

def save_image_grid(img, fname, drange, grid_size):
    """img: [gw*gh, C, H, W] array with values in drange -> one PNG (L or RGB), row-major."""
    lo, hi = drange
    scaled = (np.asarray(img, dtype=np.float32) - lo) * (255 / (hi - lo))
    tiles = np.rint(scaled).clip(0, 255).astype(np.uint8)
    cols, rows = grid_size
    channels, height, width = tiles.shape[1:]
    # [rows*cols, C, H, W] -> [rows, H, cols, W, C] -> one [rows*H, cols*W, C] canvas.
    canvas = tiles.reshape(rows, cols, channels, height, width).transpose(0, 3, 1, 4, 2)
    canvas = canvas.reshape(rows * height, cols * width, channels)
    if channels == 1:
        canvas = canvas[:, :, 0]
    PIL.Image.fromarray(canvas, 'L' if channels == 1 else 'RGB').save(fname)

def export_reals_and_init_fakes(training_set, G, G_ema, run_dir, random_seed, image_grid_max, batch_gpu, device, write_init):
    """reals.png (and fakes_init.png); returns the grid (size, z, c) used for every fakes*.png."""
    grid_size, images, labels = setup_snapshot_image_grid(training_set, random_seed, image_grid_max)
    save_image_grid(images, os.path.join(run_dir, 'reals.png'), drange=[0, 255], grid_size=grid_size)
    grid = dnnlib.EasyDict(size=grid_size, c=torch.from_numpy(labels).to(device),
                           z=torch.randn([labels.shape[0], G.z_dim], generator=torch.Generator().manual_seed(random_seed)).to(device))
    if write_init:
        save_fakes(G_ema, grid, os.path.join(run_dir, 'fakes_init.png'), batch_gpu)
    return grid

def save_fakes(G_ema, grid, path, batch):
    """G_ema's images of the grid latents as one PNG."""
    save_image_grid(generate_grid(G_ema, grid.z, grid.c, batch), path, drange=[-1, 1], grid_size=grid.size)

@torch.no_grad()
def generate_grid(G_ema, grid_z, grid_c, batch):
    """Images of the grid latents, [N, C, H, W] float in ~[-1, 1] on the CPU (noise const)."""
    images = []
    for z, c in zip(grid_z.split(batch), grid_c.split(batch)):
        img = G_ema(z=z, c=c, noise_mode='const')
        if isinstance(img, (tuple, list)):
            img = img[0]
        images.append(img.cpu())
    return torch.cat(images).numpy()
