"""Generate images (one PNG per seed), an image grid, or an interpolation video with a trained network.

    python generate.py --network=snap.pkl --seeds=0-63 --outdir=out
    python generate.py --network=snap.pkl --seeds=0-15 --class=3 --trunc=0.7 --grid --outdir=out
    python generate.py --network=snap.pkl --seeds=0,5,9 --video --frames=60 --outdir=out
    python generate.py --network=snap.pkl --seeds=0-7 --all-classes --grid --zoom=4 --outdir=out
    python generate.py --network=snap.pkl --projected-w=out/projected_w.npz --outdir=out
"""

import math
import os
import re

import click
import numpy as np
import PIL.Image
import torch

import dnnlib

#----------------------------------------------------------------------------

def parse_seeds(value):
    """'0-3,10' -> [0, 1, 2, 3, 10] (ranges inclusive, order kept)."""
    seeds = []
    for part in str(value).split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise click.BadParameter(f'range "{part}" ends before it starts', param_hint='--seeds')
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            seeds.append(int(part))
        else:
            raise click.BadParameter(f'"{part}" is not a seed or a range like 0-63', param_hint='--seeds')
    if not seeds:
        raise click.BadParameter('no seeds given', param_hint='--seeds')
    return seeds

def seed_latent(seed, z_dim):
    """The z of a seed: float32 [1, z_dim], the same on every machine."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim).astype(np.float32))

def class_label(G, class_idx):
    """One-hot [1, c_dim] for a conditional G, zeros [1, 0] otherwise (with clear errors)."""
    c = torch.zeros([1, G.c_dim])
    if G.c_dim == 0:
        if class_idx is not None:
            print('warning: --class is ignored for an unconditional network')
        return c
    if class_idx is None:
        raise click.UsageError(f'--class is required for a conditional network (it has {G.c_dim} classes: 0..{G.c_dim - 1})')
    if not 0 <= class_idx < G.c_dim:
        raise click.UsageError(f'--class={class_idx} is out of range: this network has classes 0..{G.c_dim - 1}')
    c[0, class_idx] = 1
    return c

def to_uint8(img):
    """[N, C, H, W] float in [-1, 1] -> uint8 [N, H, W, C] numpy (the metrics' quantisation)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

def save_png(arr, path):
    """uint8 [H, W, C] with C in {1, 3} -> PNG."""
    PIL.Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, 'L' if arr.shape[2] == 1 else 'RGB').save(path)

def make_grid(images, cols=None, zoom=1):
    """uint8 [N, H, W, C] -> one [rows*H*zoom, cols*W*zoom, C] image, row-major, black padding;
    cols defaults to ceil(sqrt(N)); zoom > 1 enlarges by pixel repetition (nearest neighbour)."""
    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n))) if cols is None else cols
    rows = int(math.ceil(n / cols))
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid.repeat(zoom, axis=0).repeat(zoom, axis=1)

#----------------------------------------------------------------------------

def synthesize_seed(G, seed, c, trunc, noise_mode, device):
    """uint8 [H, W, C] image of one seed (torch RNG seeded too, so noise_mode=random repeats)."""
    torch.manual_seed(seed)
    z = seed_latent(seed, G.z_dim).to(device)
    img = G(z, c.to(device), truncation_psi=trunc, noise_mode=noise_mode)
    return to_uint8(img)[0]

def write_video(G, seeds, c, trunc, noise_mode, frames, fps, path, device):
    """Interpolation video through the seeds' w (linear in W, looping back to the first seed)."""
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401 -- the writer backend
    except ImportError:
        raise click.ClickException('--video needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg')
    ws = [G.mapping(seed_latent(s, G.z_dim).to(device), c.to(device), truncation_psi=trunc) for s in seeds]
    ws.append(ws[0])
    torch.manual_seed(seeds[0])
    with imageio.get_writer(path, mode='I', fps=fps, codec='libx264', macro_block_size=1) as writer:
        for a, b in zip(ws[:-1], ws[1:]):
            for f in range(frames):
                w = a.lerp(b, f / frames)
                frame = to_uint8(G.synthesis(w, noise_mode=noise_mode))[0]
                writer.append_data(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)

def load_generator(network, safe, device):
    """G_ema of a network file or URL, in eval mode on `device` (errors as click messages)."""
    import legacy
    print(f'Loading network from "{network}"...')
    try:
        G = legacy.load_network(network, safe=safe)['G_ema']
    except FileNotFoundError as e:
        raise click.UsageError(f'--network: {e}')
    except (ValueError, IOError) as e:
        raise click.ClickException(f'cannot load --network={network}: {e}')
    return G.eval().requires_grad_(False).to(device)

def read_projected_w(path):
    """float32 [N, num_ws, w_dim] from projector.py's projected_w.npz (key `w`)."""
    try:
        ws = np.load(path)['w']
    except (OSError, ValueError, KeyError) as e:
        raise click.UsageError(f'--projected-w={path}: not a projected_w.npz written by projector.py ({e})')
    if ws.ndim != 3:
        raise click.UsageError(f'--projected-w={path}: w has shape {list(ws.shape)}; expected [N, num_ws, w_dim]')
    return torch.from_numpy(ws.astype(np.float32))

def render_projected_w(G, ws, noise_mode, outdir, device):
    """projNN.png for each w of a projected_w.npz."""
    if tuple(ws.shape[1:]) != (G.num_ws, G.w_dim):
        raise click.UsageError(f'--projected-w holds ws of shape {list(ws.shape[1:])}, but this network takes '
                               f'[{G.num_ws}, {G.w_dim}]: project with the same network')
    os.makedirs(outdir, exist_ok=True)
    with torch.no_grad():
        for idx, w in enumerate(ws.to(device)):
            img = G.synthesis(w[None], noise_mode=noise_mode)
            save_png(to_uint8(img)[0], os.path.join(outdir, f'proj{idx:02d}.png'))
    print(f'Wrote {len(ws)} image(s) of the projected w to {outdir}')

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network', callback=dnnlib.util.expand_user, help='Network file (snapshot, stylegan2-ada-pytorch pickle, safe export)', required=True, metavar='PATH|URL')
@click.option('--seeds', help='Seeds, e.g. 0-63,100', default='0-7', show_default=True)
@click.option('--trunc', 'truncation_psi', help='Truncation psi', type=float, default=1, show_default=True)
@click.option('--class', 'class_idx', help='Class index (required for conditional networks)', type=int)
@click.option('--noise-mode', help='Noise mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--outdir', callback=dnnlib.util.expand_user, help='Where to save the output', type=str, required=True, metavar='DIR')
@click.option('--all-classes', 'all_classes', help='Conditional network: every seed in every class '
              '(classNN-seedNNNN.png; the grid gets one row per class)', is_flag=True)
@click.option('--grid', help='Also write grid.png with all seeds', is_flag=True)
@click.option('--zoom', help='Enlarge grid.png by this factor (nearest neighbour, for small images)',
              type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--video', help='Write interp.mp4, an interpolation video through the seeds (needs imageio-ffmpeg)', is_flag=True)
@click.option('--frames', help='Video frames per transition between two seeds', type=click.IntRange(min=1), default=60, show_default=True)
@click.option('--fps', help='Video frame rate', type=click.IntRange(min=1), default=30, show_default=True)
@click.option('--safe', help='Refuse network pickles (they can run code); accept only the safe export', is_flag=True)
@click.option('--projected-w', '--projected_w', 'projected_w', help='Render the ws of projector.py\'s projected_w.npz '
              '(projNN.png) instead of seeds', metavar='FILE')
def generate_images(network, seeds, truncation_psi, class_idx, noise_mode, outdir, all_classes, grid, zoom, video, frames,
                    fps, safe, projected_w):
    """Generate images with a trained network: seedNNNN.png per seed, optional grid.png and interp.mp4."""
    seeds = parse_seeds(seeds)
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    ws = read_projected_w(projected_w) if projected_w is not None else None
    G = load_generator(network, safe, device)
    if ws is not None:
        render_projected_w(G, ws, noise_mode, outdir, device)
        return
    if all_classes:
        if G.c_dim == 0:
            raise click.UsageError('--all-classes needs a conditional network; this one has no classes')
        if class_idx is not None or video:
            raise click.UsageError('--all-classes replaces --class and does not make videos; drop --class / --video')
        jobs = [(class_label(G, k), seed, f'class{k:02d}-seed{seed:04d}.png') for k in range(G.c_dim) for seed in seeds]
    else:
        c = class_label(G, class_idx)
        jobs = [(c, seed, f'seed{seed:04d}.png') for seed in seeds]
    os.makedirs(outdir, exist_ok=True)

    images = []
    with torch.no_grad():
        for i, (c, seed, fname) in enumerate(jobs):
            print(f'Generating {fname} ({i + 1}/{len(jobs)}) ...')
            img = synthesize_seed(G, seed, c, truncation_psi, noise_mode, device)
            save_png(img, os.path.join(outdir, fname))
            if grid:
                images.append(img)
        if grid:
            cols = len(seeds) if all_classes else None
            save_png(make_grid(np.stack(images), cols=cols, zoom=zoom), os.path.join(outdir, 'grid.png'))
        if video:
            path = os.path.join(outdir, 'interp.mp4')
            print(f'Writing {path} ({len(seeds) * frames} frames) ...')
            write_video(G, seeds, c, truncation_psi, noise_mode, frames, fps, path, device)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    generate_images()
