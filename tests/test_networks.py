"""Tests for training/networks.py: shapes, exact parameter counts, upstream names, the maths of
the layers against direct computations, truncation / w_avg, UTLO, the AdvAug splits, pickling."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from training import networks

Z, W_DIM, C_DIM = 16, 16, 3
BASE, CMAX = 128, 16          # channels: 4 -> 16, 8 -> 16, 16 -> 8, 32 -> 4

def make_G(res=16, c_dim=C_DIM, seed=0, res_uc=0, map_layers=2, **synthesis_kwargs):
    torch.manual_seed(seed)
    kw = dict(channel_base=BASE, channel_max=CMAX, **synthesis_kwargs)
    return networks.Generator(Z, c_dim, W_DIM, res, 3, mapping_kwargs=dict(num_layers=map_layers),
                              synthesis_kwargs=kw, res_uc=res_uc)

def make_D(res=16, c_dim=C_DIM, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('mapping_kwargs', dict(num_layers=2))
    kwargs.setdefault('epilogue_kwargs', dict(mbstd_group_size=2))
    return networks.Discriminator(c_dim, res, 3, channel_base=BASE, channel_max=CMAX, **kwargs)

def ch(res):
    return min(BASE // res, CMAX)

def onehot(labels, c_dim=C_DIM):
    return F.one_hot(torch.as_tensor(labels), c_dim).float()

def count(module):
    return sum(p.numel() for p in module.parameters())

def with_noise_strength(G, value):
    for name, p in G.named_parameters():
        if name.endswith('noise_strength'):
            p.data.fill_(value)
    return G

#----------------------------------------------------------------------------
# Parameter counts from the formulas.

def synthesis_layer_params(cin, cout, k=3):
    return (W_DIM * cin + cin) + cout * cin * k * k + cout + 1      # affine + weight + bias + noise_strength

def torgb_params(cin, img_channels=3):
    return (W_DIM * cin + cin) + img_channels * cin + img_channels

def expected_G_params(res, c_dim, map_layers, architecture):
    mapping = (c_dim * W_DIM + W_DIM if c_dim else 0) + (Z + (W_DIM if c_dim else 0)) * W_DIM + W_DIM
    mapping += (map_layers - 1) * (W_DIM * W_DIM + W_DIM)
    synth = ch(4) * 16 + synthesis_layer_params(ch(4), ch(4))
    resolutions = [2 ** i for i in range(2, int(math.log2(res)) + 1)]
    for r in resolutions:
        if r > 4:
            synth += synthesis_layer_params(ch(r // 2), ch(r)) + synthesis_layer_params(ch(r), ch(r))
            if architecture == 'resnet':
                synth += ch(r) * ch(r // 2)
        if architecture == 'skip' or r == res:
            synth += torgb_params(ch(r))
    return mapping + synth

def expected_D_params(res, c_dim, architecture, map_layers=2, res_uc=0):
    total = 0
    for r in [2 ** i for i in range(int(math.log2(res)), 2, -1)]:
        tmp, out = ch(r), ch(r // 2)
        if r == res or architecture == 'skip':
            total += 3 * tmp + tmp
        total += tmp * tmp * 9 + tmp + out * tmp * 9 + out
        if architecture == 'resnet':
            total += out * tmp
    c4 = ch(4)
    cmap = c4 if c_dim else 0
    if architecture == 'skip':
        total += 3 * c4 + c4
    total += (c4 + 1) * c4 * 9 + c4 + c4 * 16 * c4 + c4 + c4 * (cmap or 1) + (cmap or 1)
    if c_dim:
        total += c_dim * cmap + cmap + map_layers * (cmap * cmap + cmap)
    if res_uc:
        total += 3 * ch(res_uc) + ch(res_uc) + c4 + 1
    return total

@pytest.mark.parametrize('res,c_dim,arch,map_layers', [(16, 3, 'skip', 2), (32, 0, 'skip', 3), (16, 3, 'orig', 2),
                                                       (32, 5, 'resnet', 1)])
def test_generator_parameter_count(res, c_dim, arch, map_layers):
    G = make_G(res, c_dim=c_dim, map_layers=map_layers, architecture=arch)
    assert count(G) == expected_G_params(res, c_dim, map_layers, arch)

@pytest.mark.parametrize('res,c_dim,arch,res_uc', [(16, 3, 'resnet', 0), (32, 0, 'orig', 0), (16, 3, 'skip', 0),
                                                   (32, 3, 'resnet', 8), (16, 3, 'orig', 4)])
def test_discriminator_parameter_count(res, c_dim, arch, res_uc):
    D = make_D(res, c_dim=c_dim, architecture=arch, res_uc=res_uc)
    assert count(D) == expected_D_params(res, c_dim, arch, res_uc=res_uc)

def test_upstream_state_dict_names():
    G = make_G(32)
    keys = set(G.state_dict().keys())
    for k in ['mapping.fc0.weight', 'mapping.fc1.bias', 'mapping.embed.weight', 'mapping.w_avg', 'synthesis.b4.const',
              'synthesis.b4.conv1.weight', 'synthesis.b4.conv1.noise_const', 'synthesis.b4.torgb.affine.bias',
              'synthesis.b8.conv0.affine.weight', 'synthesis.b8.conv0.noise_strength', 'synthesis.b8.conv0.noise_const',
              'synthesis.b8.conv0.resample_filter', 'synthesis.b8.conv1.bias', 'synthesis.b8.torgb.weight',
              'synthesis.b32.torgb.bias', 'synthesis.b8.resample_filter']:
        assert k in keys, k
    assert G.state_dict()['synthesis.b8.conv0.noise_const'].shape == (8, 8)
    assert G.state_dict()['synthesis.b4.const'].shape == (ch(4), 4, 4)
    D = make_D(32, architecture='resnet')
    keys = set(D.state_dict().keys())
    for k in ['b32.fromrgb.weight', 'b32.conv0.weight', 'b32.conv1.bias', 'b32.skip.weight', 'b16.conv0.weight',
              'b8.skip.weight', 'b4.conv.weight', 'b4.fc.weight', 'b4.out.weight', 'b4.out.bias',
              'mapping.embed.weight', 'mapping.fc0.weight', 'mapping.fc1.bias']:
        assert k in keys, k
    assert 'b16.fromrgb.weight' not in keys and 'mapping.w_avg' not in keys
    assert isinstance(D.b4.mbstd, networks.MinibatchStdLayer)

def test_initial_values():
    G = make_G(16)
    l = G.synthesis.b8.conv0
    assert l.noise_strength.item() == 0 and torch.all(l.affine.bias == 1) and torch.all(l.bias == 0)
    assert torch.all(G.synthesis.b8.torgb.affine.bias == 1) and torch.all(G.mapping.w_avg == 0)
    # Equalised LR with lr_multiplier 0.01: raw mapping weights ~ N(0, 100).
    assert 60 < G.mapping.fc1.weight.std().item() < 140

#----------------------------------------------------------------------------
# Layers against direct computations.

def test_fully_connected_equalised_lr():
    torch.manual_seed(1)
    fc = networks.FullyConnectedLayer(5, 4, lr_multiplier=0.1, bias_init=0.5)
    fc.bias.data.normal_()
    x = torch.randn(3, 5)
    ref = x @ (fc.weight * 0.1 / math.sqrt(5)).t() + fc.bias * 0.1
    assert torch.allclose(fc(x), ref, atol=1e-6)
    fc2 = networks.FullyConnectedLayer(5, 4, activation='lrelu')
    ref2 = F.leaky_relu(x @ (fc2.weight / math.sqrt(5)).t() + fc2.bias, 0.2) * math.sqrt(2)
    assert torch.allclose(fc2(x), ref2, atol=1e-6)

def test_conv2d_layer_equalised_lr_and_clamp():
    torch.manual_seed(2)
    conv = networks.Conv2dLayer(3, 4, kernel_size=3, activation='lrelu', conv_clamp=0.5)
    conv.bias.data.normal_()
    x = torch.randn(2, 3, 8, 8)
    ref = F.conv2d(x, conv.weight / math.sqrt(27), conv.bias, padding=1)
    ref = (F.leaky_relu(ref, 0.2) * math.sqrt(2)).clamp(-0.5, 0.5)
    assert torch.allclose(conv(x), ref, atol=1e-5)

@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('demodulate', [True, False])
def test_modulated_conv2d_matches_per_sample_conv(fused, demodulate):
    torch.manual_seed(3)
    x, w, s = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    noise = torch.randn(3, 1, 6, 6)
    out = networks.modulated_conv2d(x, w, s, noise=noise, padding=1, demodulate=demodulate, fused_modconv=fused)
    for n in range(3):
        wn = (w * s[n].reshape(1, 4, 1, 1)).double()
        if demodulate:
            wn = wn / (wn.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        ref = F.conv2d(x[n:n + 1].double(), wn, padding=1) + noise[n].double()
        assert torch.allclose(out[n:n + 1].double(), ref, atol=1e-5)

@pytest.mark.parametrize('fused', [True, False])
def test_modulated_conv2d_fp16_input(fused):
    # fp16 activations with large styles: the pre-normalisation keeps the products finite.
    torch.manual_seed(6)
    x, w, s = torch.randn(3, 8, 8, 8), torch.randn(6, 8, 3, 3), torch.randn(3, 8) * 1000
    noise = torch.randn(3, 1, 8, 8)
    ref = networks.modulated_conv2d(x, w, s, noise=noise, padding=1, fused_modconv=fused)
    out = networks.modulated_conv2d(x.half(), w, s, noise=noise, padding=1, fused_modconv=fused)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 1e-2 * ref.abs().max()

def test_demodulated_output_has_unit_variance():
    torch.manual_seed(4)
    x = torch.randn(4, 64, 16, 16)
    out = networks.modulated_conv2d(x, torch.randn(32, 64, 3, 3), torch.randn(4, 64) * 3, padding=1)
    assert abs(float(out.std()) - 1) < 0.1

def test_minibatch_std_closed_form():
    torch.manual_seed(5)
    x = torch.randn(6, 4, 2, 2)
    y = networks.MinibatchStdLayer(group_size=3, num_channels=2)(x)
    assert y.shape == (6, 6, 2, 2) and torch.equal(y[:, :4], x)
    for i in range(6):
        group = x[[j for j in range(6) if j % 2 == i % 2]]                 # G=3 groups: i mod (N/G)
        for f in range(2):
            sd = (group[:, 2 * f:2 * f + 2].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(y[i, 4 + f], sd.expand(2, 2), atol=1e-6)
    with pytest.raises(ValueError, match='group size'):
        networks.MinibatchStdLayer(group_size=4)(torch.randn(6, 4, 2, 2))

#----------------------------------------------------------------------------
# Generator behaviour.

def test_num_ws_base_and_utlo():
    for res in [8, 16, 32, 64]:
        log2 = int(math.log2(res))
        assert make_G(res, map_layers=1).num_ws == 2 * log2 - 2
        Gu = make_G(res, map_layers=1, res_uc=4)
        assert Gu.num_ws == 2 + 3 * (log2 - 2)
        assert Gu.synthesis.num_ws_list == [2 + 3 * i for i in range(log2 - 1)]
    G = make_G(64, map_layers=1, res_uc=8)
    assert G.num_ws == 14 and G.num_ws_uc == 5 and G.mapping.num_ws_uc == 5

@pytest.mark.parametrize('arch', ['orig', 'skip', 'resnet'])
def test_generator_shapes_and_determinism(arch):
    z, c = torch.randn(2, Z), onehot([0, 2])
    G1, G2 = make_G(16, architecture=arch, seed=7), make_G(16, architecture=arch, seed=7)
    torch.manual_seed(11); a = G1(z, c)
    torch.manual_seed(11); b = G2(z, c)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert hasattr(G1.synthesis.b8, 'torgb') == (arch == 'skip') and hasattr(G1.synthesis.b16, 'torgb')
    assert hasattr(G1.synthesis.b8, 'skip') == (arch == 'resnet')

def test_noise_modes():
    G = with_noise_strength(make_G(16), 0.5).eval()
    z, c = torch.randn(2, Z), onehot([0, 1])
    assert torch.equal(G(z, c, noise_mode='const'), G(z, c, noise_mode='const'))
    assert not torch.allclose(G(z, c, noise_mode='random'), G(z, c, noise_mode='random'))
    assert not torch.allclose(G(z, c, noise_mode='const'), G(z, c, noise_mode='none'))
    G0 = with_noise_strength(make_G(16), 0.0).eval()                  # strength 0: noise has no effect
    assert torch.equal(G0(z, c, noise_mode='random'), G0(z, c, noise_mode='none'))
    with pytest.raises(ValueError, match='noise_mode'):
        G(z, c, noise_mode='bogus')

def test_fused_and_unfused_modconv_agree():
    G = with_noise_strength(make_G(16, architecture='resnet'), 0.3)
    z, c = torch.randn(3, Z), onehot([0, 1, 2])
    a = G(z, c, noise_mode='const', fused_modconv=True)
    b = G(z, c, noise_mode='const', fused_modconv=False)
    assert torch.allclose(a, b, atol=1e-4)

def test_truncation_and_w_avg():
    G = make_G(16).eval()
    G.mapping.w_avg.copy_(torch.randn(W_DIM))
    z, c = torch.randn(4, Z), onehot([0, 1, 2, 0])
    ws = G.mapping(z, c)
    assert ws.shape == (4, G.num_ws, W_DIM) and torch.equal(ws[:, 0], ws[:, -1])
    ws0 = G.mapping(z, c, truncation_psi=0)
    assert torch.allclose(ws0, G.mapping.w_avg.expand_as(ws0))
    ws_half = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(ws_half[:, :2], (ws[:, :2] + G.mapping.w_avg) / 2, atol=1e-6)
    assert torch.equal(ws_half[:, 2:], ws[:, 2:])
    # truncation_psi=0 makes the image independent of z.
    img = G(z, c[:1].expand(4, -1), truncation_psi=0, noise_mode='const')
    assert torch.allclose(img, img[:1].expand_as(img), atol=1e-6)

def test_w_avg_update_rule():
    G = make_G(16).train()
    old = torch.randn(W_DIM)
    G.mapping.w_avg.copy_(old)
    z, c = torch.randn(4, Z), onehot([0, 1, 2, 0])
    ws = G.mapping(z, c)
    assert torch.allclose(G.mapping.w_avg, ws[:, 0].detach().mean(0) + 0.995 * (old - ws[:, 0].detach().mean(0)), atol=1e-6)
    before = G.mapping.w_avg.clone()
    G.mapping(z, c, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    G.eval(); G.mapping(z, c)
    assert torch.equal(G.mapping.w_avg, before)

def test_embed_is_swappable_module():
    G = make_G(16)
    class Zero(torch.nn.Module):
        def forward(self, c):
            return torch.zeros(c.shape[0], W_DIM)
    G.mapping.embed = Zero()
    z = torch.randn(2, Z)
    assert torch.allclose(G.mapping(z, onehot([0, 0])), G.mapping(z, onehot([1, 2])))

def test_fp16_request_is_ignored_on_cpu():
    G32 = make_G(16, seed=3)
    G16 = make_G(16, seed=3, num_fp16_res=4, conv_clamp=256)
    G32c = make_G(16, seed=3, conv_clamp=256)
    assert all(b.use_fp16 for b in [G16.synthesis.b8, G16.synthesis.b16])
    z, c = torch.randn(2, Z), onehot([0, 1])
    out16 = G16(z, c, noise_mode='const')
    assert out16.dtype == torch.float32 and torch.equal(out16, G32c(z, c, noise_mode='const'))
    assert torch.allclose(out16, G32(z, c, noise_mode='const'))        # clamp 256 is not reached

def test_b4_hook():
    G = make_G(16).eval()
    z, c = torch.randn(2, Z), onehot([0, 1])
    ws = G.mapping(z, c)
    seen = []
    def identity(x):
        seen.append(x.shape)
        return x
    assert torch.equal(G.synthesis(ws, b4_hook=identity, noise_mode='const'), G.synthesis(ws, noise_mode='const'))
    assert seen == [torch.Size([2, ch(4), 4, 4])]
    moved = G.synthesis(ws, b4_hook=lambda x: x + 1, noise_mode='const')
    assert not torch.allclose(moved, G.synthesis(ws, noise_mode='const'))

def test_pickle_roundtrip_bitwise():
    G, D = make_G(16, res_uc=8), make_D(16, res_uc=8)
    G2, D2 = pickle.loads(pickle.dumps(G)), pickle.loads(pickle.dumps(D))
    z, c = torch.randn(2, Z), onehot([0, 1])
    a, a_uc = G(z, c, add_uc=True, noise_mode='const')
    b, b_uc = G2(z, c, add_uc=True, noise_mode='const')
    assert torch.equal(a, b) and torch.equal(a_uc, b_uc)
    assert torch.equal(D(a, c), D2(a, c)) and torch.equal(D(a_uc, c, uc=True), D2(a_uc, c, uc=True))
    assert G2.init_kwargs['res_uc'] == 8 and type(G2).__name__ == 'Generator'

#----------------------------------------------------------------------------
# Discriminator behaviour.

@pytest.mark.parametrize('arch', ['orig', 'skip', 'resnet'])
def test_discriminator_shapes_and_determinism(arch):
    img, c = torch.randn(4, 3, 16, 16), onehot([0, 1, 2, 0])
    D1, D2 = make_D(16, architecture=arch, seed=5), make_D(16, architecture=arch, seed=5)
    out = D1(img, c)
    assert out.shape == (4, 1) and torch.equal(out, D2(img, c))
    assert hasattr(D1.b8, 'fromrgb') == (arch == 'skip') and hasattr(D1.b16, 'skip') == (arch == 'resnet')

def test_projection_conditioning_and_split():
    D = make_D(16)
    img, c = torch.randn(4, 3, 16, 16), onehot([0, 1, 2, 0])
    x, cmap = D.features(img, c)
    assert x.shape == (4, ch(4)) and cmap.shape == (4, ch(4))
    assert torch.equal(cmap, D.mapping(None, c))
    manual = (D.b4.out(x) * cmap).sum(dim=1, keepdim=True) / math.sqrt(ch(4))
    assert torch.allclose(D.head(x, cmap), manual, atol=1e-6)
    assert torch.equal(D(img, c), D.head(x, cmap))
    # Same images, other labels: a different projection.
    assert not torch.allclose(D(img, onehot([1, 2, 0, 1])), D(img, c))
    Du = make_D(16, c_dim=0, cmap_dim=7)
    x, cmap = Du.features(img, None)
    assert cmap is None and Du.b4.out.weight.shape == (1, ch(4))
    assert torch.equal(Du(img, None), Du.b4.out(x))

def test_cmap_dim_override():
    D = make_D(16, cmap_dim=12)
    assert D.b4.out.weight.shape == (12, ch(4)) and D.mapping.fc1.weight.shape == (12, 12)

def test_freeze_layers_become_buffers():
    D = make_D(16, block_kwargs=dict(freeze_layers=2))
    names = {n for n, _ in D.named_parameters()}
    assert 'b16.fromrgb.weight' not in names and 'b16.conv0.weight' not in names
    assert 'b16.conv1.weight' in names and 'b16.conv0.weight' in D.state_dict()

#----------------------------------------------------------------------------
# UTLO.

def test_utlo_mapping_low_ws_ignore_class():
    G = make_G(32, res_uc=8)
    n_uc = G.num_ws_uc
    z = torch.randn(3, Z)
    ws1, ws2 = G.mapping(z, onehot([0, 1, 2])), G.mapping(z, onehot([2, 0, 1]))
    assert n_uc == 5 and ws1.shape == (3, 11, W_DIM)
    assert torch.equal(ws1[:, :n_uc], ws2[:, :n_uc])
    assert (ws1[:, n_uc:] - ws2[:, n_uc:]).abs().amax(dim=(0, 2)).min() > 1e-3
    # The unconditional ws are exactly the MLP of [norm z, 0] with the same weights.
    x = torch.cat([networks.normalize_2nd_moment(z), torch.zeros(3, W_DIM)], dim=1)
    x = G.mapping.fc1(G.mapping.fc0(x))
    assert torch.allclose(ws1[:, 0], x, atol=1e-6)

def test_utlo_gradient_of_low_ws_wrt_embedding_is_zero():
    G = make_G(32, res_uc=8)
    ws = G.mapping(torch.randn(3, Z), onehot([0, 1, 2]))
    g_low, = torch.autograd.grad(ws[:, :G.num_ws_uc].sum(), G.mapping.embed.weight, allow_unused=True, retain_graph=True)
    assert g_low is None or torch.count_nonzero(g_low) == 0
    g_high, = torch.autograd.grad(ws[:, G.num_ws_uc:].sum(), G.mapping.embed.weight)
    assert torch.count_nonzero(g_high) > 0

def test_utlo_w_avg_from_conditional_path():
    G = make_G(32, res_uc=8).train()
    ws = G.mapping(torch.randn(4, Z), onehot([0, 1, 2, 0]))
    assert torch.allclose(G.mapping.w_avg, 0.005 * ws[:, -1].detach().mean(0), atol=1e-6)
    ws0 = G.mapping(torch.randn(4, Z), onehot([0, 1, 2, 0]), truncation_psi=0, skip_w_avg_update=True)
    assert torch.allclose(ws0, G.mapping.w_avg.expand_as(ws0))             # truncation covers every w

def test_utlo_img_uc():
    G = with_noise_strength(make_G(32, res_uc=8), 0.2).eval()
    z = torch.randn(2, Z)
    img1, uc1 = G(z, onehot([0, 1]), add_uc=True, noise_mode='const')
    img2, uc2 = G(z, onehot([2, 2]), add_uc=True, noise_mode='const')
    assert uc1.shape == (2, 3, 8, 8) and img1.shape == (2, 3, 32, 32)
    assert torch.equal(uc1, uc2) and not torch.allclose(img1, img2)
    assert torch.equal(G(z, onehot([0, 1]), noise_mode='const'), img1)
    with pytest.raises(ValueError, match='res_uc'):
        make_G(32)(z, onehot([0, 1]), add_uc=True)

def test_utlo_configuration_errors():
    with pytest.raises(ValueError, match='skip'):
        make_G(32, res_uc=8, architecture='resnet')
    with pytest.raises(ValueError, match='res_uc'):
        make_G(32, res_uc=32)
    with pytest.raises(ValueError, match='skip'):
        make_D(32, res_uc=8, architecture='skip')

def test_utlo_discriminator_uc_branch():
    D = make_D(32, res_uc=8)
    img = torch.randn(4, 3, 32, 32)
    low = D.downsample_uc(img)
    assert low.shape == (4, 3, 8, 8)
    # Two FIR [1,3,3,1] 2x steps: the mean of a constant image is kept.
    assert torch.allclose(D.downsample_uc(torch.full((1, 3, 32, 32), 0.7))[:, :, 2:-2, 2:-2], torch.tensor(0.7))
    a, b = D(low, onehot([0, 1, 2, 0]), uc=True), D(low, onehot([2, 2, 1, 1]), uc=True)
    assert a.shape == (4, 1) and torch.equal(a, b)
    manual = D.out_uc(D.b4.features(D.b8(D.fromrgb_uc(low), None)[0], None))
    assert torch.allclose(a, manual, atol=1e-6)
    # res_uc = 4: fromrgb_uc feeds the epilogue directly; unconditional D works too.
    D4 = make_D(16, c_dim=0, res_uc=4)
    low4 = D4.downsample_uc(torch.randn(4, 3, 16, 16))
    assert low4.shape == (4, 3, 4, 4)
    assert torch.allclose(D4(low4, None, uc=True), D4.out_uc(D4.b4.features(D4.fromrgb_uc(low4), None)), atol=1e-6)
    # The conditional head is unchanged by UTLO (same as a base D with the same weights).
    base = make_D(32, seed=1)
    base.load_state_dict({k: v for k, v in D.state_dict().items() if k in base.state_dict()})
    c = onehot([0, 1, 2, 0])
    assert torch.equal(base(img, c), D(img, c))

#----------------------------------------------------------------------------
# channels_last and the fp16 branch, on the CPU.

def test_channels_last_everywhere_matches_contiguous():
    """channels_last=True (every block NHWC, b4's 3-D const included) computes what NCHW does."""
    z, c = torch.randn(4, Z), onehot([0, 1, 2, 0])
    G, G_nhwc = make_G(16, seed=3), make_G(16, seed=3, channels_last=True)
    img = G(z, c, noise_mode='const')
    torch.testing.assert_close(G_nhwc(z, c, noise_mode='const'), img, rtol=1e-5, atol=1e-5)
    D, D_nhwc = make_D(16, seed=4), make_D(16, seed=4, block_kwargs=dict(channels_last=True))
    torch.testing.assert_close(D_nhwc(img, c), D(img, c), rtol=1e-5, atol=1e-5)

def test_fp16_branch_dtypes_on_cpu(monkeypatch):
    """The fp16 blocks (normally CUDA only) forced on the CPU: fp16 activations never meet fp32
    weights, noise or images; G's image, D's logits and every gradient (R1 and path length
    included) come out float32 and finite, close to the float32 networks."""
    G32, D32 = make_G(32, seed=3, conv_clamp=256), make_D(32, seed=4, conv_clamp=256)
    G16 = make_G(32, seed=3, conv_clamp=256, num_fp16_res=2, fp16_channels_last=True).train()
    D16 = make_D(32, seed=4, conv_clamp=256, num_fp16_res=2, block_kwargs=dict(fp16_channels_last=True))
    monkeypatch.setattr(networks, '_compute_dtype',
                        lambda use_fp16, force_fp32, device: torch.float16 if use_fp16 and not force_fp32 else torch.float32)
    z, c = torch.randn(4, Z), onehot([0, 1, 2, 0])
    assert G16.synthesis.b32.use_fp16 and D16.b32.use_fp16 and not G16.synthesis.b8.use_fp16
    ref = G32(z, c, noise_mode='const').detach()
    for fused_modconv in [False, True]:
        img = G16(z, c, noise_mode='const', fused_modconv=fused_modconv).detach()
        assert img.dtype == torch.float32
        assert float((img - ref).abs().max()) < 0.05 * float(ref.abs().max())
    ws = G16.mapping(z, c).requires_grad_(True)
    img = G16.synthesis(ws, noise_mode='random')
    pl_grad, = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    real = ref.detach().requires_grad_(True)
    logits = D16(real, c)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, D32(real, c), atol=0.05, rtol=0.05)
    r1_grad, = torch.autograd.grad(logits.sum(), real, create_graph=True)
    (pl_grad.square().sum() + r1_grad.square().sum() + D16(img, c).sum()).backward()
    for name, p in list(G16.named_parameters()) + list(D16.named_parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name

#----------------------------------------------------------------------------
# GPU: fp16 blocks and channels_last (run on the lent GPU; skipped elsewhere).

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fp16_and_channels_last_on_gpu():
    G32 = make_G(32, seed=3, conv_clamp=256).cuda().eval()
    G16 = make_G(32, seed=3, conv_clamp=256, num_fp16_res=2, fp16_channels_last=True).cuda().eval()
    z, c = torch.randn(4, Z, device='cuda'), onehot([0, 1, 2, 0]).cuda()
    a, b = G32(z, c, noise_mode='const'), G16(z, c, noise_mode='const')
    assert b.dtype == torch.float32 and float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    assert torch.allclose(G16(z, c, noise_mode="const", force_fp32=True), a, atol=1e-4)
    D32 = make_D(32, seed=4, conv_clamp=256).cuda()
    D16 = make_D(32, seed=4, conv_clamp=256, num_fp16_res=2, block_kwargs=dict(fp16_channels_last=True)).cuda()
    assert torch.allclose(D32(a, c), D16(a, c), atol=0.05, rtol=0.05)
