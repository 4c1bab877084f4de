"""Project an image into a trained generator: find the w whose image looks most like the target.

The optimisation of the StyleGAN2 paper (Karras et al. 2020, appendix D): one w shared by all
layers, starting at the mean w, Adam on w and the per-layer noise maps against the LPIPS-VGG16
distance, a ramped learning rate, decaying noise added to w early on, and a penalty on the
noise maps' autocorrelation at every scale so they cannot spell out the image themselves.

    python projector.py --network=snap.pkl --target=me.png --outdir=out
    python generate.py --network=snap.pkl --projected-w=out/projected_w.npz --outdir=out
"""

import math
import os

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

import generate

#----------------------------------------------------------------------------
# Schedules and losses.

def learning_rate(step, num_steps, initial_lr, rampup=0.05, rampdown=0.25):
    """Linear warm-up over the first `rampup` of the run, cosine decay over the last `rampdown`."""
    t = step / num_steps
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return initial_lr * ramp * min(1.0, t / rampup)

def w_noise_scale(step, num_steps, w_std, initial_factor=0.05, ramp_length=0.75):
    """Std of the noise added to w: w_std * factor * t^2, t falling from 1 to 0 over `ramp_length`."""
    t = max(0.0, 1.0 - step / (num_steps * ramp_length))
    return w_std * initial_factor * t * t

def noise_autocorrelation(noise_maps, min_size=8):
    """Sum over maps and scales of the squared one-pixel autocorrelations along x and y.

    noise_maps: list of [H, W] tensors. Each map is halved (2x2 mean) until it is min_size
    wide, so correlations at every scale are penalised, not just neighbouring pixels.
    """
    total = 0.0
    for noise in noise_maps:
        x = noise[None, None]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean() ** 2 + (x * x.roll(1, dims=2)).mean() ** 2
            if x.shape[2] <= min_size:
                break
            x = F.avg_pool2d(x, 2)
    return total

def normalize_noise_(noise_maps):
    """Zero mean, unit variance, in place (after each step, as the paper does)."""
    with torch.no_grad():
        for noise in noise_maps:
            noise.sub_(noise.mean()).div_(noise.square().mean().sqrt())

#----------------------------------------------------------------------------
# The generator and the perceptual distance.

def noise_maps_of(G):
    """The synthesis network's constant noise buffers ([R, R] each), in layer order."""
    return [buf for name, buf in G.synthesis.named_buffers() if name.endswith('noise_const')]

def w_statistics(G, c, num_samples, seed):
    """(mean w [1, 1, w_dim], std scalar) of the mapping's output for num_samples random z."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, G.z_dim).astype(np.float32)).to(c.device)
    with torch.no_grad():
        w = G.mapping(z, c.expand(num_samples, -1))[:, :1, :]
    mean = w.mean(dim=0, keepdim=True)
    std = float(((w - mean).square().sum() / num_samples).sqrt())
    return mean, std

def to_255_rgb(img):
    """[N, C, H, W] with values in [0, 255] -> 3 channels, at most 256x256 (the LPIPS resolution)."""
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    if img.shape[2] > 256:
        img = F.interpolate(img, size=(256, 256), mode='area')
    return img

def lpips_features(vgg, img_255):
    """LPIPS embedding: the squared L2 distance of two embeddings is their LPIPS distance."""
    return vgg(to_255_rgb(img_255), resize_images=False, return_lpips=True)

def render(G, ws, noise_mode='const'):
    """ws [N, num_ws, w_dim] -> image [N, C, R, R] in [-1, 1]."""
    img = G.synthesis(ws, noise_mode=noise_mode)
    return img[0] if isinstance(img, (tuple, list)) else img

#----------------------------------------------------------------------------

def project(G, target, vgg, c=None, num_steps=1000, w_avg_samples=10000, initial_lr=0.1, noise_weight=1e5,
            seed=303, log=print):
    """Find w for `target` (uint8 [C, R, R] tensor at G's resolution and channel count).

    Returns (ws [num_steps, w_dim], dists [num_steps]): w after every step and the LPIPS
    distance measured in that step. The noise maps are optimised in a copy of G and then
    dropped: the outputs render w with G's own constant noise, as generate.py does.
    """
    if tuple(target.shape) != (G.img_channels, G.img_resolution, G.img_resolution):
        raise ValueError(f'target shape {tuple(target.shape)} != ({G.img_channels}, {G.img_resolution}, {G.img_resolution})')
    device = target.device
    G = _private_copy(G).to(device)
    c = torch.zeros([1, G.c_dim], device=device) if c is None else c.to(device)
    w_mean, w_std = w_statistics(G, c, w_avg_samples, seed)
    log(f'w statistics from {w_avg_samples} samples: std {w_std:.4f}')
    target_features = lpips_features(vgg, target[None].to(torch.float32))

    gen = torch.Generator(device=device).manual_seed(seed)
    w = w_mean.clone().requires_grad_(True)
    noise_maps = noise_maps_of(G)
    with torch.no_grad():
        for noise in noise_maps:
            noise.copy_(torch.randn(noise.shape, generator=gen, device=device))
            noise.requires_grad_(True)
    opt = torch.optim.Adam([w] + noise_maps, betas=(0.9, 0.999), lr=initial_lr)

    ws_out, dists = [], []
    for step in range(num_steps):
        for group in opt.param_groups:
            group['lr'] = learning_rate(step, num_steps, initial_lr)
        w_noisy = w + torch.randn(w.shape, generator=gen, device=device) * w_noise_scale(step, num_steps, w_std)
        img = render(G, w_noisy.expand(-1, G.num_ws, -1))
        dist = (lpips_features(vgg, (img + 1) * 127.5) - target_features).square().sum()
        reg = noise_autocorrelation(noise_maps)
        opt.zero_grad(set_to_none=True)
        (dist + reg * noise_weight).backward()
        opt.step()
        normalize_noise_(noise_maps)
        ws_out.append(w.detach()[0, 0].clone())
        dists.append(float(dist.detach()))
        if step == 0 or (step + 1) % max(1, num_steps // 20) == 0 or step + 1 == num_steps:
            log(f'step {step + 1:>4d}/{num_steps}: dist {dists[-1]:<8.4f} noise reg {float(reg.detach()):.4f}')
    return torch.stack(ws_out), torch.tensor(dists)

def _private_copy(G):
    import copy
    return copy.deepcopy(G).eval().requires_grad_(False)

#----------------------------------------------------------------------------
# Files.

def load_target(path, resolution, channels):
    """The target image centre-cropped to a square and resized (Lanczos) to G's resolution:
    uint8 tensor [C, R, R]."""
    try:
        img = PIL.Image.open(path)
        img.load()
    except (OSError, ValueError) as err:
        raise click.UsageError(f'--target={path}: cannot read the image: {err}')
    img = img.convert('L' if channels == 1 else 'RGB')
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    arr = np.array(img, dtype=np.uint8).reshape(resolution, resolution, channels)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

def save_projection_video(G, ws, target, path, fps=10):
    """proj.mp4: target beside the image of each step's w, one frame per step."""
    import imageio
    target_hwc = target.permute(1, 2, 0).cpu().numpy()
    with imageio.get_writer(path, mode='I', fps=fps, codec='libx264', macro_block_size=1) as writer:
        for w in ws:
            with torch.no_grad():
                synth = generate.to_uint8(render(G, w[None, None].expand(-1, G.num_ws, -1)))[0]
            frame = np.concatenate([target_hwc, synth], axis=1)
            writer.append_data(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)

def check_video_backend():
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401 -- the mp4 writer
    except ImportError:
        raise click.UsageError('--save-video needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg '
                               '(or pass --save-video=false)')

def load_vgg16(spec, device):
    """The VGG16 detector the metrics use (LPIPS heads needed): a path, a URL, or the default URL."""
    from metrics import detectors
    try:
        vgg, _ident = detectors.load_detector(spec, kind='vgg16', device=device)
    except detectors.DetectorError as err:
        raise click.ClickException(f'{err}\n(projector.py takes a local VGG16 file with --vgg16=PATH)')
    return vgg

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network', help='Network file (snapshot, stylegan2-ada-pytorch pickle, safe export)', required=True, metavar='PATH|URL')
@click.option('--target', 'target_fname', help='Target image file to project to', required=True, metavar='FILE')
@click.option('--num-steps', help='Number of optimization steps', type=click.IntRange(min=1), default=1000, show_default=True)
@click.option('--seed', help='Random seed', type=int, default=303, show_default=True)
@click.option('--save-video', help='Save an mp4 video of the optimization progress', type=bool, default=True, show_default=True, metavar='BOOL')
@click.option('--outdir', help='Where to save the output images', required=True, metavar='DIR')
@click.option('--class', 'class_idx', help='Class index (conditional networks only)', type=int)
@click.option('--vgg16', help='VGG16 detector with LPIPS weights: path or URL [default: the metrics\' URL, cached]', metavar='PATH|URL')
@click.option('--w-avg-samples', help='Samples for the mean and spread of w', type=click.IntRange(min=2), default=10000, show_default=True)
@click.option('--safe', help='Refuse network pickles (they can run code); accept only the safe export', is_flag=True)
def run_projection(network, target_fname, num_steps, seed, save_video, outdir, class_idx, vgg16, w_avg_samples, safe):
    """Project TARGET into the latent space W of a trained network.

    Writes target.png (the target as G sees it), proj.png (the image of the found w),
    projected_w.npz (key `w`, [1, num_ws, w_dim], for generate.py --projected-w) and, with
    --save-video (default true), proj.mp4: the target beside the projection at every step.
    """
    import legacy
    target_fname = os.path.expanduser(target_fname)
    if not os.path.isfile(target_fname):
        raise click.UsageError(f'--target={target_fname}: no such file')
    if save_video:
        check_video_backend()
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    G = generate.load_generator(network, safe, device)
    c = generate.class_label(G, class_idx).to(device)
    target = load_target(target_fname, G.img_resolution, G.img_channels).to(device)
    vgg = load_vgg16(vgg16, device)

    torch.manual_seed(seed)
    ws, dists = project(G, target, vgg, c=c, num_steps=num_steps, w_avg_samples=w_avg_samples, seed=seed)
    projected_w = ws[-1][None, None].expand(-1, G.num_ws, -1)

    os.makedirs(outdir, exist_ok=True)
    generate.save_png(target.permute(1, 2, 0).cpu().numpy(), os.path.join(outdir, 'target.png'))
    with torch.no_grad():
        generate.save_png(generate.to_uint8(render(G, projected_w))[0], os.path.join(outdir, 'proj.png'))
    np.savez(os.path.join(outdir, 'projected_w.npz'), w=projected_w.cpu().numpy())
    if save_video:
        path = os.path.join(outdir, 'proj.mp4')
        print(f'Saving optimization progress video "{path}"')
        save_projection_video(G, ws, target, path)
    print(f'LPIPS distance: {dists[0]:.4f} after the first step, {dists[-1]:.4f} after step {num_steps}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    run_projection()
