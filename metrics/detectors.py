"""Feature detectors for the metrics: our own Inception-v3 (FID variant) and VGG16 (+LPIPS).

Both are plain PyTorch definitions whose state-dict keys match the public weight files
(pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, torchvision's `vgg16-397923af.pth`
plus LPIPS' `vgg.pth` linear layers), so a local copy of those files is all that is needed.
`load_detector()` also accepts NVIDIA's TorchScript detectors and any TorchScript module.

Calling convention shared by every detector (ours and TorchScript ones):
    inception(img_uint8, return_features=True)  -> float32 [N, 2048]
    inception(img_uint8, no_output_bias=True)   -> softmax probabilities [N, 1008]
    vgg16(img_uint8, return_features=True)      -> float32 [N, 4096] (fc2 after ReLU)
    vgg16(img_0_255, resize_images=False, return_lpips=True) -> [N, D] (LPIPS embedding:
        the squared L2 distance of two embeddings is the LPIPS distance)
`img` is [N, C, H, W] with C in {1, 3}, values in [0, 255], any H and W.
"""

import hashlib
import io
import os
import pickle
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

import dnnlib

#----------------------------------------------------------------------------
# Where detectors come from by default.

INCEPTION_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
INCEPTION_PYTORCH_FID_URL = 'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth'
VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'
VGG16_TORCHVISION_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
LPIPS_VGG_URL = 'https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth'

DEFAULT_URLS = {'inception': INCEPTION_URL, 'vgg16': VGG16_URL}

class DetectorError(RuntimeError):
    """A detector file is missing, unreadable or has the wrong contents (message says how to fix it)."""

#----------------------------------------------------------------------------
# Image preprocessing.

def _to_float_rgb(img):
    """[N, 1 or 3, H, W] uint8 or float in [0, 255] -> float32 [N, 3, H, W]."""
    if img.ndim != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f'detector input must be [N, 1 or 3, H, W], got {list(img.shape)}')
    img = img.to(torch.float32)
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    return img

def _tf_legacy_resize_axis(x, size, dim):
    """Bilinear resize along one axis the way TF1's resize_bilinear does (align_corners=False,
    no half-pixel offset): source coordinate = dst * in/out, clamped at the far edge."""
    n_in = x.shape[dim]
    pos = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (pos - i0.to(torch.float64)).to(x.dtype)
    shape = [1] * x.ndim
    shape[dim] = size
    frac = frac.reshape(shape)
    return x.index_select(dim, i0) * (1 - frac) + x.index_select(dim, i1) * frac

def resize_bilinear(x, size, mode='torch'):
    """Resize float [N, C, H, W] to [N, C, size, size].

    mode='torch': half-pixel centres (F.interpolate, align_corners=False). This is what
        pytorch-fid and NVIDIA's TorchScript Inception do, so FIDs compare with theirs.
    mode='tf_legacy': TF1 tf.image.resize_bilinear (align_corners=False, no half-pixel
        offset), as used by the original TensorFlow FID code.
    """
    if x.shape[2] == size and x.shape[3] == size:
        return x
    if mode == 'torch':
        return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    if mode == 'tf_legacy':
        return _tf_legacy_resize_axis(_tf_legacy_resize_axis(x, size, 2), size, 3)
    raise ValueError(f'unknown resize mode "{mode}"; use "torch" or "tf_legacy"')

#----------------------------------------------------------------------------
# Inception-v3, the FID variant (TF graph 2015-12-05 ported to PyTorch layer by layer).

class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, inference statistics) -> ReLU."""
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

def _avg_pool_3x3(x):
    # TF's average pooling ignores the zero padding, hence count_include_pad=False.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches -> 224 + pool_features channels."""
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], dim=1)

class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: strided 3x3, strided double 3x3, max pool."""
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)

class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions -> 768 channels."""
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], dim=1)

class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)

class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches -> 2048 channels.

    pool='avg' for Mixed_7b; pool='max' for Mixed_7c, where the TF graph (by a slip in the
    original model) uses max pooling: the weights were trained that way, so we keep it.
    """
    def __init__(self, cin, pool):
        super().__init__()
        assert pool in ('avg', 'max')
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)
        pooled = _avg_pool_3x3(x) if self.pool == 'avg' else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        d = self.branch_pool(pooled)
        return torch.cat([a, b, c, d], dim=1)

class InceptionV3(nn.Module):
    """Inception-v3 as used for FID / KID / IS.

    forward(img, return_features=False, no_output_bias=False):
        img: [N, 1 or 3, H, W], uint8 or float in [0, 255], any H, W (resized to 299x299).
        return_features=True -> pool_3 features, float32 [N, 2048].
        otherwise            -> softmax over the 1008 logits [N, 1008]; no_output_bias=True
                                drops fc.bias (the Inception Score convention).
    Pixels are normalised as (x - 128) / 128 like the TF graph's Sub/Mul nodes.
    """
    feature_dim = 2048
    num_logits = 1008

    def __init__(self, resize_mode='torch'):
        super().__init__()
        self.resize_mode = resize_mode
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool='avg')
        self.Mixed_7c = InceptionE(2048, pool='max')
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    def features(self, img):
        """[N, C, H, W] in [0, 255] -> [N, 2048]."""
        x = resize_bilinear(_to_float_rgb(img), 299, self.resize_mode)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c',
                     'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c'):
            x = getattr(self, name)(x)
        return x.mean(dim=[2, 3])

    def forward(self, img, return_features=False, no_output_bias=False):
        feats = self.features(img)
        if return_features:
            return feats
        logits = F.linear(feats, self.fc.weight, None if no_output_bias else self.fc.bias)
        return logits.softmax(dim=1)

#----------------------------------------------------------------------------
# VGG16 (torchvision layout) with the LPIPS linear heads.

_VGG16_CONV_LAYOUT = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']
_LPIPS_TAPS = [3, 8, 15, 22, 29]        # indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = [64, 128, 256, 512, 512]
_LPIPS_SHIFT = [-0.030, -0.088, -0.188]  # LPIPS input scaling for images in [-1, 1]
_LPIPS_SCALE = [0.458, 0.448, 0.450]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

class LPIPSLinear(nn.Module):
    """Per-channel non-negative weights of one LPIPS layer (key `lin{k}.model.1.weight`, [1, C, 1, 1])."""
    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

class VGG16(nn.Module):
    """VGG16 feature extractor for precision/recall (fc2 features) and LPIPS (for PPL).

    State-dict keys: `features.{0..28}.{weight,bias}` and `classifier.{0,3,6}.*` as in
    torchvision, `lin{0..4}.model.1.weight` as in LPIPS v0.1. The classifier is optional
    (with_classifier=False saves ~500 MB when only LPIPS is needed), so are the LPIPS heads.
    """
    def __init__(self, with_classifier=True, with_lpips=True):
        super().__init__()
        layers, cin = [], 3
        for v in _VGG16_CONV_LAYOUT:
            if v == 'M':
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = None
        if with_classifier:
            self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 1000))
        self.with_lpips = with_lpips
        if with_lpips:
            for k, ch in enumerate(_LPIPS_CHANNELS):
                setattr(self, f'lin{k}', LPIPSLinear(ch))
        self.eval()

    def fc2_features(self, img, resize_images=True):
        """[N, C, H, W] in [0, 255] -> fc2 activations after ReLU, [N, 4096]."""
        if self.classifier is None:
            raise DetectorError('this VGG16 has no classifier weights (classifier.*); precision/recall needs '
                                f'the full torchvision VGG16 ({VGG16_TORCHVISION_URL}).')
        x = _to_float_rgb(img) / 255
        if resize_images:
            x = F.interpolate(x, size=(224, 224), mode='bilinear', align_corners=False, antialias=True)
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
        x = self.features((x - mean) / std)
        x = F.adaptive_avg_pool2d(x, (7, 7)).flatten(1)
        return self.classifier[:5](x)

    def lpips_embedding(self, img, resize_images=False):
        """[N, C, H, W] in [0, 255] -> [N, D] with ||e1 - e2||^2 = LPIPS(img1, img2)."""
        if not self.with_lpips:
            raise DetectorError(f'this VGG16 has no LPIPS weights (lin0..lin4); PPL needs them ({LPIPS_VGG_URL}).')
        x = _to_float_rgb(img)
        if resize_images:
            x = F.interpolate(x, size=(224, 224), mode='bilinear', align_corners=False, antialias=True)
        x = x / 127.5 - 1
        shift = torch.tensor(_LPIPS_SHIFT, device=x.device).reshape(1, 3, 1, 1)
        scale = torch.tensor(_LPIPS_SCALE, device=x.device).reshape(1, 3, 1, 1)
        x = (x - shift) / scale
        parts = []
        for idx, layer in enumerate(self.features[:_LPIPS_TAPS[-1] + 1]):
            x = layer(x)
            if idx in _LPIPS_TAPS:
                k = _LPIPS_TAPS.index(idx)
                unit = x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                w = getattr(self, f'lin{k}').model[1].weight.reshape(1, -1, 1, 1)
                # LPIPS averages over pixels: fold 1/(H*W) and the weights into the embedding.
                parts.append((unit * w.clamp(min=0).sqrt() / (x.shape[2] * x.shape[3]) ** 0.5).flatten(1))
        return torch.cat(parts, dim=1)

    def forward(self, img, resize_images=True, return_features=False, return_lpips=False):
        if return_lpips:
            return self.lpips_embedding(img, resize_images=resize_images)
        if return_features:
            return self.fc2_features(img, resize_images=resize_images)
        x = self.fc2_features(img, resize_images=resize_images)
        return self.classifier[5:](x).softmax(dim=1)

#----------------------------------------------------------------------------
# Building from state dicts (with clear errors about keys and shapes).

def _expected_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith('num_batches_tracked')}

def check_state_dict(module, state_dict, what, optional_prefixes=()):
    """Raise DetectorError unless state_dict has exactly the keys and shapes module expects.

    `num_batches_tracked` entries are ignored either way; keys starting with one of
    optional_prefixes may be absent. Returns the state dict restricted to known keys.
    """
    expected = _expected_shapes(module)
    given = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
    missing = sorted(k for k in expected if k not in given and not k.startswith(tuple(optional_prefixes)))
    unexpected = sorted(k for k in given if k not in expected)
    wrong = sorted(f'{k}: expected {list(expected[k])}, got {list(given[k].shape)}'
                   for k in given if k in expected and tuple(given[k].shape) != expected[k])
    if missing or unexpected or wrong:
        lines = [f'{what}: the state dict does not match the expected architecture.']
        for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('wrong shapes', wrong)):
            if items:
                more = f' ... (+{len(items) - 8} more)' if len(items) > 8 else ''
                lines.append(f'  {label} ({len(items)}): {", ".join(items[:8])}{more}')
        raise DetectorError('\n'.join(lines))
    return {k: v for k, v in given.items() if k in expected}

def inception_from_state_dict(state_dict, what='Inception state dict', resize_mode='torch'):
    """Build InceptionV3 from a pytorch-fid style state dict (exact keys and shapes required)."""
    net = InceptionV3(resize_mode=resize_mode)
    sd = check_state_dict(net, state_dict, what)
    net.load_state_dict(sd, strict=False)  # only num_batches_tracked may be left over
    return net.eval().requires_grad_(False)

def vgg16_from_state_dict(state_dict, what='VGG16 state dict'):
    """Build VGG16 from torchvision keys (+ optional LPIPS `lin*` keys); classifier optional."""
    has_cls = any(k.startswith('classifier.') for k in state_dict)
    has_lpips = any(k.startswith('lin') for k in state_dict)
    net = VGG16(with_classifier=has_cls, with_lpips=has_lpips)
    sd = check_state_dict(net, state_dict, what)
    net.load_state_dict(sd)
    return net.eval().requires_grad_(False)

def _random_init_(net, seed):
    """He-normal convs / linears and unit BN statistics, so activations keep their scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1); m.bias.zero_(); m.running_mean.zero_(); m.running_var.fill_(1)
    return net

def random_inception_state_dict(seed=0):
    """A randomly initialised state dict with the exact keys/shapes of pytorch-fid's file."""
    net = _random_init_(InceptionV3(), seed)
    with torch.no_grad():
        net.fc.weight.mul_(0.01)  # keep the random softmax from saturating
    return net.state_dict()

def random_vgg16_state_dict(seed=0, with_classifier=False):
    """A randomly initialised VGG16 (+LPIPS heads) state dict; the classifier is ~500 MB, off by default."""
    net = _random_init_(VGG16(with_classifier=with_classifier, with_lpips=True), seed)
    with torch.no_grad():
        for k in range(len(_LPIPS_CHANNELS)):
            getattr(net, f'lin{k}').model[1].weight.abs_()
    return net.state_dict()

def save_random_detector(path, kind='inception', seed=0, **kwargs):
    """Write a random-weight detector state dict (tests, smoke runs). Returns path."""
    sd = {'inception': random_inception_state_dict, 'vgg16': random_vgg16_state_dict}[kind](seed=seed, **kwargs)
    torch.save(sd, path)
    return path

class StubDetector(nn.Module):
    """A tiny, fast stand-in detector for CPU tests and smoke runs (no weights).

    Same calling convention as the Inception / VGG16 detectors: features (54 values) are
    per-channel means and standard deviations of the image scaled to [0, 1], then a 4x4
    thumbnail of it resized to 16x16; the probabilities are a softmax over the first 6.
    """
    def forward(self, x, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False):
        x = x.float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[2] != 16 or x.shape[3] != 16:
            x = F.interpolate(x, size=(16, 16), mode='bilinear', align_corners=False, antialias=True)
        f = torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3]), x[:, :, ::4, ::4].flatten(1)], dim=1)
        if return_features or return_lpips:
            return f
        return f[:, :6].softmax(dim=1)

def save_stub_detector(path):
    """Write StubDetector as a TorchScript file usable as --detector / --vgg16. Returns path."""
    torch.jit.save(torch.jit.script(StubDetector()), path)
    return path

def combine_vgg16_weights(torchvision_path, lpips_path, out_path):
    """Merge torchvision's vgg16-397923af.pth and LPIPS' v0.1 vgg.pth into one detector file."""
    sd = dict(torch.load(torchvision_path, map_location='cpu', weights_only=True))
    sd.update({k: v for k, v in torch.load(lpips_path, map_location='cpu', weights_only=True).items() if k.startswith('lin')})
    vgg16_from_state_dict(sd, what=f'{torchvision_path} + {lpips_path}')  # validate before writing
    torch.save(sd, out_path)
    return out_path

#----------------------------------------------------------------------------
# Loading a detector from a path, URL or the default URL.

def _cached_download_path(url):
    """Where dnnlib.util.open_url keeps its cached copy of `url`."""
    return dnnlib.util.cache_path_for_url(url)

def _missing_detector_message(kind, url, err):
    alt = {'inception': f'\n  (pytorch-fid\'s weight file also works: {INCEPTION_PYTORCH_FID_URL})',
           'vgg16': f'\n  (or merge {VGG16_TORCHVISION_URL} and {LPIPS_VGG_URL} with '
                    f'`python -m metrics.detectors combine-vgg16 TV.pth LPIPS.pth OUT.pth`)'}.get(kind, '')
    flag = '--detector' if kind == 'inception' else '--detector=vgg16=<path>'
    return (f'Cannot load the {kind} detector "{os.path.basename(url)}" from {url}: {err}\n'
            f'Without network access, download that file elsewhere and either pass its local path with '
            f'{flag}, or put it at\n  {_cached_download_path(url)}\n'
            f'(the download cache; set DNNLIB_CACHE_DIR to move it).{alt}')

def _read_detector_bytes(spec, kind):
    """spec: local path, file:// or http(s) URL, or None (the default URL for `kind`)."""
    url = spec if spec is not None else DEFAULT_URLS[kind]
    is_remote = dnnlib.util.is_url(url)
    if not is_remote and not url.startswith('file://') and not os.path.isfile(url):
        raise DetectorError(f'Detector file not found: "{url}". Pass an existing file or URL with --detector.')
    try:
        # The default retries and a progress line: a detector is ~100 MB, fetched once per machine.
        with dnnlib.util.open_url(url) as f:
            return f.read()
    except DetectorError:
        raise
    except Exception as e:
        if is_remote:
            raise DetectorError(_missing_detector_message(kind, url, e)) from e
        raise DetectorError(f'Cannot read detector file "{url}": {e}') from e

def _module_from_bytes(data, kind, what, resize_mode):
    """Interpret detector bytes: TorchScript archive, torch.save'd state dict, or a pickled module."""
    if data[:2] == b'PK':
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = []
        if any(n.endswith('/constants.pkl') or n.endswith('/code/__torch__.py') or '/code/' in n for n in names):
            return torch.jit.load(io.BytesIO(data), map_location='cpu').eval()
    obj = None
    try:
        obj = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception:
        # A whole pickled module (e.g. NVIDIA's .pkl detectors). Unpickling can run code: only
        # files the user names or the default URLs get here.
        try:
            if data[:2] == b'PK':
                obj = torch.load(io.BytesIO(data), map_location='cpu', weights_only=False)
            else:
                obj = pickle.loads(data)
        except Exception as e:
            raise DetectorError(f'{what}: not a TorchScript module, a state dict or a pickled module ({e}).') from e
    if isinstance(obj, nn.Module) or isinstance(obj, torch.jit.ScriptModule):
        return obj.eval()
    if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
        obj = obj['state_dict']
    if isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values()):
        if kind == 'inception':
            return inception_from_state_dict(obj, what=what, resize_mode=resize_mode)
        return vgg16_from_state_dict(obj, what=what)
    raise DetectorError(f'{what}: unrecognised contents ({type(obj).__name__}); expected a TorchScript '
                        f'module or a {kind} state dict.')

def detector_spec_for(detector, kind):
    """Pick the spec for `kind` out of calc_metric's `detector` argument.

    detector: None | 'PATH_OR_URL' (the Inception detector) | 'inception=A,vgg16=B' | dict.
    """
    if detector is None:
        return None
    if isinstance(detector, dict):
        return detector.get(kind)
    if isinstance(detector, str) and '=' in detector.split('://')[0]:
        parts = dict(p.split('=', 1) for p in detector.split(',') if p)
        unknown = set(parts) - set(DEFAULT_URLS)
        if unknown:
            raise DetectorError(f'unknown detector kind(s) {sorted(unknown)} in "{detector}"; use inception=...,vgg16=...')
        return parts.get(kind)
    return detector if kind == 'inception' else None

_cache = {}

def load_detector(spec=None, kind='inception', device='cpu', resize_mode='torch'):
    """Load (and memoise per process) a detector. Returns (module, identity string).

    spec: local path, URL, or None for DEFAULT_URLS[kind]. The identity is the MD5 of the
    file contents plus the resize mode, so cached dataset statistics follow the weights.
    """
    key = (spec, kind, str(device), resize_mode)
    if key not in _cache:
        data = _read_detector_bytes(spec, kind)
        what = f'{kind} detector "{spec if spec is not None else DEFAULT_URLS[kind]}"'
        net = _module_from_bytes(data, kind, what, resize_mode).to(device)
        ident = f'{kind}-{hashlib.md5(data).hexdigest()}-{resize_mode}'
        _cache[key] = (net, ident)
    return _cache[key]

#----------------------------------------------------------------------------

if __name__ == '__main__':
    import sys
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == 'combine-vgg16':
        print(combine_vgg16_weights(*args[1:]))
    elif len(args) == 2 and args[0] == 'stub':
        print(save_stub_detector(args[1]))
    elif len(args) in (2, 3) and args[0] in ('random-inception', 'random-vgg16'):
        print(save_random_detector(args[1], kind=args[0].split('-')[1], seed=int(args[2]) if len(args) == 3 else 0))
    else:
        print('usage: python -m metrics.detectors combine-vgg16 TORCHVISION.pth LPIPS.pth OUT.pth\n'
              '       python -m metrics.detectors random-inception|random-vgg16 OUT.pth [SEED]\n'
              '       python -m metrics.detectors stub OUT.pt   (tiny TorchScript stand-in for CPU tests)')
        sys.exit(1)
