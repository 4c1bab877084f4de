"""A detector trained on your labels: a small CNN fitted in seconds to the labelled reals of the
metric dataset, offline (no Inception download), and the metrics it gives a generator:

  labelnet_rr[N]   share of N generated images the classifier recognises as some class with
                   confidence >= 0.9 (`labelnet_rr`); for a conditional G also the share recognised
                   as the class that was asked for (`labelnet_rr_asked`); with the classifier's
                   held-out accuracy (`labelnet_acc`), which says how far to trust both.
  labelnet_fd[N]   Frechet distance between real and generated features of the classifier's
                   last hidden layer (N generated images against every real one).

N defaults to 1000 (`labelnet_rr`, `labelnet_rr5k`). The classifier only knows what your labels
taught it: it measures whether samples look like *some labelled class of this dataset*, not
image quality in general, and its numbers compare runs on the same dataset only. Besides the
reals it is shown noise, smooth colour blobs and flat colours with a uniform target, so that
"recognised" means "looks like a class", not "the classifier had to pick one". It is trained
once per dataset (a hash of the dataset's files, the label file and the recipe) and cached in
`<cache dir>/gan-metrics/`, so snapshots of a run reuse it.
"""

import hashlib
import json
import os
import time
import uuid

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib
from metrics import metric_utils
from metrics.frechet_inception_distance import frechet_distance

RECIPE_VERSION = 1        # bump when anything below changes what a cached classifier would be
CONFIDENCE = 0.9          # a sample counts as recognised when its top class probability reaches this
MAX_INPUT_RES = 32        # larger images are box-downsampled to this before the classifier
MAX_IMAGES = 50_000       # reals used at most (a seeded random subset of bigger datasets)
HELD_OUT_SHARE = 0.2      # share of the reals kept out of training to measure accuracy
TRAIN_STEPS = 1200
TRAIN_BATCH = 32
OUTLIERS = 8             # per step: noise / blobs / flat colours taught to get a uniform prediction
FEATURE_DIM = 64

#----------------------------------------------------------------------------
# The network.

class LabelNet(torch.nn.Module):
    """uint8 [N, 3, H, W] -> (features float32 [N, FEATURE_DIM], logits [N, num_classes]).

    Each image is standardised on its own (mean per channel removed, scaled to unit RMS), so
    colours do not matter and only the pattern does; then five conv layers with batch norm,
    2x pooling twice and global average pooling, so any square resolution works (inputs above
    MAX_INPUT_RES are box-downsampled first).
    """
    def __init__(self, num_classes):
        super().__init__()
        def block(cin, cout):
            return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.LeakyReLU(0.2)]
        self.body = torch.nn.Sequential(
            *block(3, 16), *block(16, 16), torch.nn.AvgPool2d(2),
            *block(16, 32), *block(32, 32), torch.nn.AvgPool2d(2),
            *block(32, FEATURE_DIM))
        self.head = torch.nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, img):
        x = img.to(torch.float32) / 127.5 - 1
        if x.shape[-1] > MAX_INPUT_RES:
            x = F.adaptive_avg_pool2d(x, MAX_INPUT_RES)
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x / (x.square().mean(dim=[1, 2, 3], keepdim=True).sqrt() + 0.05)   # flat images stay 0
        features = self.body(x).mean(dim=[2, 3])
        return features, self.head(features)

#----------------------------------------------------------------------------
# Reals, training, cache.

def labelled_dataset_kwargs(dataset_kwargs):
    """The metric dataset with its labels on and no x-flips (the labels are what the classifier learns)."""
    return dnnlib.EasyDict(dataset_kwargs, use_labels=True, xflip=False, max_size=None)

def open_labelled_dataset(dataset_kwargs, metric):
    dataset = metric_utils.open_dataset(labelled_dataset_kwargs(dataset_kwargs))
    if not dataset.has_labels or not dataset.has_onehot_labels or dataset.label_dim < 2:
        raise ValueError(f'{metric} trains a classifier on the labels of the metric dataset, but '
                         f'"{dataset_kwargs.get("path")}" has no integer class labels of two or more classes; '
                         f'make a labelled dataset with dataset_tool.py (sub-folder names become classes)')
    return dataset

def load_reals(dataset, max_images=MAX_IMAGES, seed=0):
    """(uint8 RGB [N, 3, h, w] with h <= MAX_INPUT_RES, int64 labels [N]) of up to max_images reals."""
    idx = np.arange(len(dataset))
    if len(idx) > max_images:
        idx = np.sort(np.random.RandomState(seed).choice(idx, max_images, replace=False))
    images, labels = [], []
    for start in range(0, len(idx), 256):
        chunk = idx[start:start + 256]
        x = metric_utils.to_rgb(torch.from_numpy(np.stack([dataset[int(i)][0] for i in chunk])))
        if x.shape[-1] > MAX_INPUT_RES:   # keep memory bounded; the net would downsample anyway
            x = F.adaptive_avg_pool2d(x.to(torch.float32), MAX_INPUT_RES).round().clamp(0, 255).to(torch.uint8)
        images.append(x)
        labels.append(torch.from_numpy(dataset.get_labels(chunk).argmax(axis=1)))
    return torch.cat(images), torch.cat(labels)

def split_held_out(num, seed=0):
    """(train indices, held-out indices): a seeded HELD_OUT_SHARE of 0..num-1 held out."""
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(round(num * HELD_OUT_SHARE)))
    return perm[n_held:], perm[:n_held]

def augment(x, gen):
    """Random x-flips and shifts of up to 1/8 of the size (reflect-padded): shapes move, classes do not."""
    flip = torch.rand([x.shape[0]], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, [pad] * 4, mode='reflect')
    dx, dy = torch.randint(0, 2 * pad + 1, [2], generator=gen).tolist()
    return padded[:, :, dy:dy + x.shape[-2], dx:dx + x.shape[-1]]

def make_outliers(n, res, gen):
    """n float images in [0, 255] that belong to no class: random noise smoothed at a random
    scale (from pixel noise to a few colour blobs) or a flat colour."""
    scale = 2 ** int(torch.randint(0, max(1, res.bit_length() - 1), [1], generator=gen))
    small = torch.rand([n, 3, max(1, res // scale), max(1, res // scale)], generator=gen) * 255
    x = F.interpolate(small, size=(res, res), mode='bilinear', align_corners=False)
    flat = torch.rand([n], generator=gen) < 0.2
    return torch.where(flat[:, None, None, None], small.mean(dim=[2, 3], keepdim=True).expand_as(x), x)

def batched(net, images, batch=256):
    """(features, probabilities) of uint8 images, in eval mode and without gradients."""
    net.eval()
    feats, probs = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            f, logits = net(images[start:start + batch])
            feats.append(f)
            probs.append(logits.softmax(dim=1))
    return torch.cat(feats), torch.cat(probs)

def train_classifier(images, labels, num_classes, seed=0, steps=TRAIN_STEPS):
    """Fit a LabelNet on the non-held-out reals. Returns (net in eval mode, held-out accuracy)."""
    train_idx, held_idx = split_held_out(len(images), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):   # leave the caller's (training loop's) RNG streams alone
        torch.manual_seed(seed)
        net = LabelNet(num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.15)
    x_train, y_train = images[train_idx].to(torch.float32), labels[train_idx]
    net.train()
    for _ in range(steps):
        pick = torch.randint(0, len(train_idx), [TRAIN_BATCH], generator=gen)
        x = torch.cat([augment(x_train[pick], gen), make_outliers(OUTLIERS, x_train.shape[-1], gen)])
        _, logits = net(x)
        # Without outliers a classifier is sure about anything, noise included; taught that
        # non-shapes get a uniform prediction, its confidence means "looks like a class".
        loss = F.cross_entropy(logits[:TRAIN_BATCH], y_train[pick]) - 0.5 * F.log_softmax(logits[TRAIN_BATCH:], dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _, probs = batched(net, images[held_idx])
    accuracy = float((probs.argmax(dim=1) == labels[held_idx]).to(torch.float64).mean())
    return net.eval().requires_grad_(False), accuracy

def dataset_fingerprint(dataset_kwargs):
    """SHA-256 over the dataset's bytes (a ZIP, or every file of a folder by relative path),
    the label file and the classifier recipe: equal fingerprints give equal classifiers."""
    h = hashlib.sha256(json.dumps(dict(label_file=dataset_kwargs.get('label_file'), recipe=RECIPE_VERSION,
                                       resolution=dataset_kwargs.get('resolution'), max_images=MAX_IMAGES,
                                       steps=TRAIN_STEPS, outliers=OUTLIERS)).encode())
    path = str(dataset_kwargs['path'])
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _dirs, names in os.walk(path) for name in names)
    for fname in files:
        h.update(os.path.relpath(fname, path).encode() + b'\0')
        with open(fname, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
    return h.hexdigest()

def cache_file(dataset_kwargs):
    """<cache dir>/gan-metrics/labelnet-<fingerprint>.pt: by content only, so copies of a dataset share it."""
    return dnnlib.util.make_cache_dir_path('gan-metrics', f'labelnet-{dataset_fingerprint(dataset_kwargs)[:32]}.pt')

def build_classifier(dataset_kwargs, metric, seed=0):
    """Everything the metrics need from the reals, computed from scratch: EasyDict(net, accuracy,
    num_classes, real_mu, real_sigma, num_reals, seconds)."""
    t0 = time.time()
    dataset = open_labelled_dataset(dataset_kwargs, metric)
    images, labels = load_reals(dataset, seed=seed)
    net, accuracy = train_classifier(images, labels, dataset.label_dim, seed)
    feats, _ = batched(net, images)
    feats = feats.to(torch.float64).numpy()
    return dnnlib.EasyDict(net=net, accuracy=accuracy, num_classes=dataset.label_dim, real_mu=feats.mean(axis=0),
                           real_sigma=np.cov(feats, rowvar=False, bias=True), num_reals=len(images),
                           seconds=time.time() - t0)

def save_classifier(info, path):
    """Tensors and numbers only, so loading needs no pickle (torch.load weights_only)."""
    blob = dict(state_dict=info.net.state_dict(), accuracy=info.accuracy, num_classes=info.num_classes,
                real_mu=torch.from_numpy(info.real_mu), real_sigma=torch.from_numpy(info.real_sigma),
                num_reals=info.num_reals, recipe=RECIPE_VERSION)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{uuid.uuid4().hex}.tmp'
    torch.save(blob, tmp)
    os.replace(tmp, path)

def load_classifier(path):
    blob = torch.load(path, map_location='cpu', weights_only=True)
    net = LabelNet(blob['num_classes'])
    net.load_state_dict(blob['state_dict'])
    return dnnlib.EasyDict(net=net.eval().requires_grad_(False), accuracy=blob['accuracy'], num_classes=blob['num_classes'],
                           real_mu=blob['real_mu'].numpy(), real_sigma=blob['real_sigma'].numpy(),
                           num_reals=blob['num_reals'], seconds=0.0)

def get_classifier(opts, metric):
    """The classifier of opts.dataset_kwargs: from the cache when opts.cache allows, else trained
    (and cached). Kept on opts so the metrics of one snapshot share it."""
    if getattr(opts, '_labelnet', None) is not None:
        return opts._labelnet
    path = cache_file(opts.dataset_kwargs) if opts.cache else None
    if path is not None and os.path.isfile(path):
        info = load_classifier(path)
    else:
        info = build_classifier(opts.dataset_kwargs, metric, seed=0)
        print(f'{metric}: trained a classifier on {info.num_reals} labelled reals ({info.num_classes} classes) '
              f'in {info.seconds:.0f} s; held-out accuracy {info.accuracy:.1%}')
        if path is not None:
            save_classifier(info, path)
    info.net = info.net.to(opts.device)
    opts._labelnet = info
    return info

#----------------------------------------------------------------------------
# Scoring generated images.

def score_generated(opts, info, num_gen, metric, batch_size=64):
    """Features [num_gen, FEATURE_DIM], probabilities [num_gen, C] and requested classes
    ([num_gen] int64, or None for an unconditional G) of num_gen generated images."""
    G = metric_utils._generator_on_device(opts)
    sampler = None
    if G.c_dim > 0:
        if G.c_dim != info.num_classes:
            raise ValueError(f'{metric}: the generator has c_dim={G.c_dim} but the metric dataset has '
                             f'{info.num_classes} classes; pass the dataset it was trained on')
        sampler = metric_utils.LabelSampler(G.c_dim, dataset=open_labelled_dataset(opts.dataset_kwargs, metric),
                                            seed=opts.seed + 1)
    gen = torch.Generator().manual_seed(opts.seed * 1000003)
    feats, probs, asked = [], [], []
    info.net.eval()
    # G's noise inputs draw from the global RNG: seeded here, the same snapshot gives the same
    # number in train.py and calc_metrics.py, and the training loop's streams are left alone.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        for start in range(0, num_gen, batch_size):
            n = min(batch_size, num_gen - start)
            z = torch.randn([n, G.z_dim], generator=gen).to(opts.device)
            c = torch.from_numpy(sampler.sample(n)) if sampler is not None else torch.zeros([n, 0])
            f, logits = info.net(metric_utils.generate_images(opts, G, z, c.to(opts.device)))
            feats.append(f.cpu())
            probs.append(logits.softmax(dim=1).cpu())
            asked.append(c.argmax(dim=1) if sampler is not None else None)
    return torch.cat(feats), torch.cat(probs), (torch.cat(asked) if sampler is not None else None)

def recognised_shares(probs, asked=None, confidence=CONFIDENCE):
    """(share with top probability >= confidence, share whose top class is also the asked one
    with that confidence, or None without asked classes)."""
    top_p, top_c = probs.max(dim=1)
    sure = top_p >= confidence
    share = float(sure.to(torch.float64).mean())
    if asked is None:
        return share, None
    return share, float((sure & (top_c == asked)).to(torch.float64).mean())

def compute_labelnet_rr(opts, num_gen, name):
    """{name: recognised share, name_asked (conditional G only), 'labelnet_acc': held-out accuracy}."""
    if opts.rank != 0:   # cheap enough for one process; the others only wait
        return {name: float('nan')}
    info = get_classifier(opts, name)
    _, probs, asked = score_generated(opts, info, num_gen, name)
    share, asked_share = recognised_shares(probs, asked)
    results = {name: share, 'labelnet_acc': info.accuracy}
    line = f'{name}: {share:.1%} of {num_gen} generated images recognised'
    if asked_share is not None:
        results[f'{name}_asked'] = asked_share
        line += f', {asked_share:.1%} as the class asked for'
    print(f'{line} (classifier held-out accuracy {info.accuracy:.1%})')
    return results

def compute_labelnet_fd(opts, num_gen, name):
    """{name: Frechet distance in the classifier's feature space, generated vs every real}."""
    if opts.rank != 0:
        return {name: float('nan')}
    info = get_classifier(opts, name)
    feats, _, _ = score_generated(opts, info, num_gen, name)
    feats = feats.to(torch.float64).numpy()
    return {name: frechet_distance(info.real_mu, info.real_sigma, feats.mean(axis=0), np.cov(feats, rowvar=False, bias=True))}
