"""Helpers for the plugin integration tests: a tiny labelled dataset and a training_loop
config with small networks (16x16, 32 channels, batch 4), resolved through the plugin
registry by plugins.configure, as train.py does."""

import json
import os
import pickle

import numpy as np
import PIL.Image
import torch

import dnnlib
import plugins
import train as train_script
from training import training_loop
from training.loss import StyleGAN2Loss

def make_dataset(path, n=16, classes=3, res=16, seed=0):
    """Folder dataset of n RGB images with a coloured square per class and dataset.json labels."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    labels = []
    for i in range(n):
        k = i % classes
        img = np.zeros([res, res, 3], np.uint8) + rng.randint(0, 255, [1, 1, 3]).astype(np.uint8)
        img[res // 4:3 * res // 4, res // 4:3 * res // 4] = 255 * (np.arange(3) == k % 3)
        PIL.Image.fromarray(img).save(os.path.join(path, f'img{i:08d}.png'))
        labels.append([f'img{i:08d}.png', k])
    with open(os.path.join(path, 'dataset.json'), 'w') as f:
        json.dump({'labels': labels}, f)
    return str(path)

def tiny_config(data, run_dir, aug='noaug', methods=(), cond=False, kimg=0.012, resume=None, **plugin_opts):
    """A training_loop config (3 iterations of batch 4 by default) with the given plugins resolved."""
    c = dnnlib.EasyDict(run_dir=str(run_dir), random_seed=0, num_gpus=1, batch_size=4, batch_gpu=4, total_kimg=kimg,
        training_set_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=str(data),
                                            use_labels=cond, resolution=16, max_size=None, xflip=False),
        data_loader_kwargs=dnnlib.EasyDict(num_workers=0),
        G_kwargs=dnnlib.EasyDict(class_name='training.networks.Generator', z_dim=32, w_dim=32,
                                 mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                                 synthesis_kwargs=dnnlib.EasyDict(channel_base=256, channel_max=32)),
        D_kwargs=dnnlib.EasyDict(class_name='training.networks.Discriminator', architecture='resnet', channel_base=256,
                                 channel_max=32, block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(num_layers=1),
                                 epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2)),
        G_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        D_opt_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        loss_kwargs=dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=0.05, style_mixing_prob=0.9, pl_weight=2),
        ema_kimg=0.01, kimg_per_tick=0.004, image_snapshot_ticks=None, network_snapshot_ticks=100, image_grid_max=2,
        metrics=[], resume_pkl=None if resume is None else str(resume), device='cpu')
    active, opts = plugins.configure(c, aug, methods, plugin_opts, resuming=resume is not None)
    train_script.configure_resume(c, active, opts)
    c.desc = '-'.join(cls.describe(opts) for cls in active)
    return c

def run_loss_phase(G, D, pset, phase, c, seed=1):
    """One accumulate_gradients call of the plugin set `pset` on fixed inputs (reals, z from `seed`,
    labels c [N, c_dim]), only the phase's module trainable; returns (ctx, {param name: grad})."""
    G.zero_grad(set_to_none=True); D.zero_grad(set_to_none=True)
    module = G if phase.startswith('G') else D
    G.requires_grad_(False); D.requires_grad_(False); module.requires_grad_(True)
    loss = StyleGAN2Loss('cpu', G, D, plugins=pset, r1_gamma=1.0, style_mixing_prob=0, pl_weight=0)
    g = torch.Generator().manual_seed(seed)
    real = torch.rand([len(c), G.img_channels, G.img_resolution, G.img_resolution], generator=g) * 2 - 1
    z = torch.randn([len(c), G.z_dim], generator=g)
    torch.manual_seed(seed)
    ctx = loss.accumulate_gradients(phase, real, c, z, c, gain=1, cur_nimg=0)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return ctx, grads

def train(c):
    """Run training_loop on config c; returns (loop result, last snapshot dict)."""
    os.makedirs(c.run_dir, exist_ok=True)
    kwargs = {k: v for k, v in c.items() if k != 'desc'}
    result = training_loop.training_loop(**kwargs)
    snaps = sorted(f for f in os.listdir(c.run_dir) if f.startswith('network-snapshot-'))
    with open(os.path.join(c.run_dir, snaps[-1]), 'rb') as f:
        snapshot = pickle.load(f)
    return result, snapshot

def read_stats(run_dir):
    """All stats.jsonl lines merged: {name: [mean per tick]}."""
    stats = {}
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        for line in f:
            for name, value in json.loads(line).items():
                if isinstance(value, dict):
                    stats.setdefault(name, []).append(value['mean'])
    return stats
