"""Writes tests/data/pre_rewrite_snapshot.pkl.gz and pre_rewrite_outputs.npz (test_legacy.py).

Run once from a checkout of the code before the provenance rewrite of issue 15 (commit
20e1b98): `python PATH/TO/make_pre_rewrite_snapshot.py snap.pkl outputs.npz`, then gzip -9
the pickle. The stored outputs are what that code computed from the snapshot.
"""
import pickle, sys, copy
import numpy as np, torch
sys.path.insert(0, '.')
import dnnlib
from training.networks import Generator, Discriminator
from training.augment import AugmentPipe
torch.manual_seed(3)
G = Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=8, img_channels=3,
              mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8, architecture='skip', conv_clamp=256))
D = Discriminator(c_dim=2, img_resolution=8, img_channels=3, architecture='resnet', channel_base=64, channel_max=8,
                  mapping_kwargs=dict(num_layers=1), epilogue_kwargs=dict(mbstd_group_size=2))
with torch.no_grad():   # a little weight in every parameter, so that zeros cannot hide a mix-up
    for p in list(G.parameters()) + list(D.parameters()):
        p.add_(torch.randn(p.shape) * 0.1)
pipe = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
pipe.p.fill_(0.4)
G_ema = copy.deepcopy(G).eval().requires_grad_(False)
snap = dict(G=copy.deepcopy(G).eval().requires_grad_(False), D=D.eval().requires_grad_(False), G_ema=G_ema,
            augment_pipe=pipe.eval().requires_grad_(False), training_set_kwargs=dict(resolution=8, use_labels=True))
gen = torch.Generator().manual_seed(5)
z = torch.randn([4, 8], generator=gen)
c = torch.eye(2)[[0, 1, 1, 0]]
with torch.no_grad():
    img = G_ema(z, c, noise_mode='const')
    img_resnet_d = D(img, c)
torch.manual_seed(7)
with torch.no_grad():
    aug = pipe(img)
np.savez(sys.argv[2], z=z.numpy(), c=c.numpy(), img=img.numpy(), logits=img_resnet_d.numpy(), aug=aug.numpy())
with open(sys.argv[1], 'wb') as f:
    pickle.dump(snap, f)
print(img.shape, img_resnet_d.ravel())
