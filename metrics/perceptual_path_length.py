"""Perceptual Path Length (Karras et al. 2019): LPIPS distance between images generated
from two latents epsilon apart along an interpolation path, divided by epsilon^2, with
samples outside the 1st-99th percentiles discarded before averaging."""

import numpy as np
import torch

from metrics import metric_utils

def slerp(a, b, t):
    """Spherical interpolation between the directions of a and b ([N, D]) at t ([N, 1]); unit-length result."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)

def crop_center(img):
    """Keep rows [3/8, 7/8) and columns [2/8, 6/8) of [N, C, H, W] (the face-centred crop of the reference)."""
    h, w = img.shape[2], img.shape[3]
    return img[:, :, h * 3 // 8: h * 7 // 8, w * 2 // 8: w * 6 // 8]

def box_downsample(img, factor):
    """Average-pool [N, C, H, W] over factor x factor boxes (factor <= 1: unchanged)."""
    if factor > 1:
        n, c, h, w = img.shape
        img = img.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=[3, 5])
    return img

def vgg_factor(img_resolution):
    """Box-downsampling factor before VGG: img_resolution // 256, fixed by the generator's
    resolution and applied after the crop, so at 512 and 1024 the cropped image VGG sees is
    128 x 128 (methods.md section 2; sizing the crop itself to 256 would give other numbers)."""
    return img_resolution // 256

def filtered_mean(dist):
    """Mean of the values within the [1st, 99th] percentiles (lower / higher interpolation)."""
    dist = np.asarray(dist, np.float64)
    lo = np.percentile(dist, 1, method='lower')
    hi = np.percentile(dist, 99, method='higher')
    return float(dist[(dist >= lo) & (dist <= hi)].mean())

def _path_batch(opts, G, vgg, gen, label_sampler, n, epsilon, space, sampling, crop):
    """LPIPS / epsilon^2 for n interpolation pairs -> [n] tensor."""
    dev = opts.device
    t = torch.rand([n, 1], generator=gen) * (1 if sampling == 'full' else 0)
    z0, z1 = torch.randn([n, G.z_dim], generator=gen), torch.randn([n, G.z_dim], generator=gen)
    t, z0, z1 = t.to(dev), z0.to(dev), z1.to(dev)
    c = torch.from_numpy(label_sampler.sample(n)).to(dev)
    if space == 'w':
        w0, w1 = G.mapping(z=torch.cat([z0, z1]), c=torch.cat([c, c])).chunk(2)
        tt = t.unsqueeze(1)
        w = torch.cat([w0.lerp(w1, tt), w0.lerp(w1, tt + epsilon)])
    else:
        z = torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + epsilon)])
        w = G.mapping(z=z, c=torch.cat([c, c]))
    # Fresh noise per batch, then held constant across the pair (noise_mode='const').
    for name, buf in G.named_buffers():
        if name.endswith('noise_const'):
            buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.device))
    img = G.synthesis(w, noise_mode='const', force_fp32=True)
    if isinstance(img, (tuple, list)):
        img = img[0]
    if crop:
        img = crop_center(img)
    img = box_downsample(img, vgg_factor(G.img_resolution))
    img = metric_utils.to_rgb((img + 1) * (255 / 2))
    e0, e1 = vgg(img, resize_images=False, return_lpips=True).float().chunk(2)
    return (e0 - e1).square().sum(dim=1) / epsilon ** 2

def compute_ppl(opts, num_samples, epsilon=1e-4, space='w', sampling='end', crop=True, batch_size=2):
    """PPL over num_samples pairs; space 'z' (slerp) or 'w' (lerp); sampling 'full' (t~U(0,1)) or 'end' (t=0)."""
    assert space in ('z', 'w') and sampling in ('full', 'end')
    G = metric_utils._generator_on_device(opts)
    if crop and G.img_resolution < 32:
        raise ValueError(f'PPL with the centre crop needs images of at least 32x32 (VGG16 pools the crop 4 times); '
                         f'this generator makes {G.img_resolution}x{G.img_resolution}: use ppl2_wend (no crop)')
    vgg, _ = metric_utils.get_detector(opts, 'vgg16')
    dataset = metric_utils.open_dataset(opts.dataset_kwargs) if G.c_dim > 0 else None
    label_sampler = metric_utils.LabelSampler(G.c_dim, dataset=dataset, seed=opts.seed + 2 + opts.rank)
    gen = torch.Generator().manual_seed(opts.seed * 1000003 + opts.rank)
    bar = metric_utils.Progress(opts, 'ppl', num_samples)
    dists = []
    with torch.no_grad():
        for start in range(0, num_samples, batch_size * opts.num_gpus):
            n_all = min(batch_size * opts.num_gpus, num_samples - start)
            n = metric_utils._rank_slice(n_all, opts)
            d = _path_batch(opts, G, vgg, gen, label_sampler, n, epsilon, space, sampling, crop) if n else \
                torch.zeros([0], device=opts.device)
            dists.append(metric_utils.gather_rows(d[:, None], opts)[:, 0].cpu())
            bar.update(n_all)
    bar.close()
    if opts.rank != 0:
        return float('nan')
    return filtered_mean(torch.cat(dists).numpy())
