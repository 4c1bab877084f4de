"""Class-knowledge transfer plugin: methods.md section 8 tests on tiny StyleGAN2 networks."""

import copy
import pickle

import pytest
import torch

import dnnlib
import plugins
from plugins import transfer
from training import networks
from training.loss import Phase

N_OLD, N_NEW, FEAT = 3, 2, 16

def _G(c_dim, seed=0):
    torch.manual_seed(seed)
    return networks.Generator(z_dim=16, c_dim=c_dim, w_dim=FEAT, img_resolution=8, img_channels=3,
                              mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=16))

def _D(c_dim, seed=0):
    torch.manual_seed(seed)
    return networks.Discriminator(c_dim=c_dim, img_resolution=8, img_channels=3, channel_base=64, channel_max=16,
                                  mapping_kwargs=dict(num_layers=1), epilogue_kwargs=dict(mbstd_group_size=2))

def _copy_matching(src, dst):
    """Name-and-shape copy, as the loop's weights-only resume does."""
    src_t = dict(src.state_dict())
    with torch.no_grad():
        for name, t in dst.state_dict().items():
            if name in src_t and src_t[name].shape == t.shape:
                t.copy_(src_t[name])

def _opts(**kwargs):
    opts = plugins.default_opts()
    opts.update(aug='noaug', methods=['transfer'], batch_size=4, batch_gpu=4)
    opts.update(kwargs)
    return opts

def _transfer(n_old=N_OLD, **kwargs):
    """(plugin, G_old, G_new, D_new, G_ema_new) after setup from an old snapshot."""
    G_old, D_old = _G(n_old, seed=1), _D(n_old, seed=2)
    resume = dict(G=copy.deepcopy(G_old).eval(), D=copy.deepcopy(D_old).eval(), G_ema=copy.deepcopy(G_old).eval())
    G_new, D_new = _G(N_NEW, seed=3), _D(N_NEW, seed=4)
    _copy_matching(resume['G'], G_new)
    _copy_matching(resume['D'], D_new)
    G_ema = copy.deepcopy(G_new).eval()
    plugin = transfer.TransferPlugin(_opts(**kwargs), 'cpu')
    G_new.requires_grad_(True)
    plugin.setup(G_new, D_new, G_ema, dnnlib.EasyDict(resume_data=resume, full_resume=False, run_dir=None))
    return plugin, G_old, G_new, D_new, G_ema

def test_E_old_columns_equal_pretrained_embed_outputs():
    _plugin, G_old, G_new, _D_new, _ = _transfer()
    E = G_new.mapping.embed.E_old
    for k in range(N_OLD):
        out = G_old.mapping.embed(torch.eye(N_OLD)[k:k + 1])[0]
        assert torch.equal(E[:, k], out)
        emb = G_old.mapping.embed
        assert torch.allclose(E[:, k], emb.weight[:, k] * emb.weight_gain + emb.bias * emb.bias_gain, atol=1e-6)

def test_one_hot_combination_reproduces_old_classes_bitwise():
    _plugin, G_old, G_new, _, _ = _transfer(transfer_sn=False)
    emb = G_new.mapping.embed
    pick = {0: 2, 1: 0}                 # new class j uses old class k
    with torch.no_grad():
        emb.A.zero_()
        for j, k in pick.items():
            emb.A[k, j] = 1
        emb.R.zero_()
        emb.a_bias.zero_()
    G_old.eval(), G_new.eval()
    z = torch.randn(4, 16)
    for j, k in pick.items():
        c_new = torch.eye(N_NEW)[[j] * 4]
        c_old = torch.eye(N_OLD)[[k] * 4]
        assert torch.equal(emb(c_new), G_old.mapping.embed(c_old))
        assert torch.equal(G_new(z, c_new, noise_mode='const'), G_old(z, c_old, noise_mode='const'))

def test_spectral_norm_of_a_one_hot_combination_is_identity():
    _plugin, _, G_new, _, _ = _transfer(transfer_sn=True)
    emb = G_new.mapping.embed
    with torch.no_grad():
        emb.A.copy_(torch.tensor([[0., 1.], [0., 0.], [1., 0.]]))
    assert torch.allclose(emb.combination_matrix(), emb.A, atol=1e-6)
    with torch.no_grad():
        emb.A.mul_(3)
    assert float(torch.linalg.matrix_norm(emb.combination_matrix().detach(), ord=2)) == pytest.approx(1, rel=1e-5)

def _step_and_changed(G, plugin):
    """One Adam step on the parameters left trainable; names of parameters that changed."""
    before = {n: p.detach().clone() for n, p in G.named_parameters()}
    w_avg = G.mapping.w_avg.clone()
    opt = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=0.01)
    G.train()
    img = G(torch.randn(4, 16), torch.eye(N_NEW)[[0, 1, 0, 1]])
    img.square().mean().backward()
    opt.step()
    plugin.before_ema(G, None)
    changed = {n for n, p in G.named_parameters() if not torch.equal(p, before[n])}
    return changed, torch.equal(G.mapping.w_avg, w_avg)

def test_trainable_set_stage_bn():
    plugin, _, G_new, _, _ = _transfer(transfer_stage='bn')
    comb = {'mapping.embed.E_old', 'mapping.embed.A', 'mapping.embed.a_bias', 'mapping.embed.R'}
    assert {n for n, p in G_new.named_parameters() if p.requires_grad} == comb
    changed, w_avg_kept = _step_and_changed(G_new, plugin)
    assert changed == comb and w_avg_kept

def _ft_after_bn(**kwargs):
    """(plugin, G) of stage ft set up from a stage-bn generator (its snapshot)."""
    _, _, G_bn, D_bn, _ = _transfer(transfer_stage='bn')
    snapshot = dict(G=copy.deepcopy(G_bn), D=copy.deepcopy(D_bn), G_ema=copy.deepcopy(G_bn))
    G_new, D_new = _G(N_NEW, seed=5), _D(N_NEW, seed=6)
    _copy_matching(snapshot['G'], G_new)
    plugin = transfer.TransferPlugin(_opts(transfer_stage='ft', **kwargs), 'cpu')
    G_new.requires_grad_(True)
    plugin.setup(G_new, D_new, copy.deepcopy(G_new), dnnlib.EasyDict(resume_data=snapshot, full_resume=False))
    return plugin, G_new

def test_trainable_set_stage_ft():
    plugin, G_new = _ft_after_bn()
    frozen = {'mapping.embed.E_old', 'mapping.embed.A', 'mapping.embed.a_bias'}
    names = {n for n, _ in G_new.named_parameters()}
    assert {n for n, p in G_new.named_parameters() if p.requires_grad} == names - frozen
    changed, _ = _step_and_changed(G_new, plugin)
    assert not (changed & frozen) and 'mapping.embed.R' in changed and 'mapping.fc0.weight' in changed

def test_regulariser_values_on_hand_set_tensors():
    plugin, _, G_new, _, _ = _transfer(transfer_comb_l1=0.01, transfer_res_l2=0.1)
    emb = G_new.mapping.embed
    with torch.no_grad():
        emb.A.copy_(torch.tensor([[1., -2.], [3., 0.], [0., 0.]]))    # mean |A| = 1
        emb.a_bias.copy_(torch.tensor([0.5, -0.5, 1.0]))             # mean |b| = 2/3
        emb.R.fill_(2.0)                                             # mean R^2 = 4
    comb_l1, res_l2 = transfer.regularizers(emb)
    assert float(comb_l1.detach()) == pytest.approx(1 + 2 / 3) and float(res_l2.detach()) == pytest.approx(4)
    term = plugin.extra_loss(Phase('Gmain'), dnnlib.EasyDict(G=G_new))
    assert float(term.detach()) == pytest.approx(0.01 * (1 + 2 / 3) + 0.1 * 4)
    assert plugin.extra_loss(Phase('Dmain'), dnnlib.EasyDict(G=G_new)) is None

@pytest.mark.parametrize('bias', [True, False])
def test_new_parameter_count(bias):
    _, _, G_new, _, _ = _transfer(transfer_comb_bias=bias)
    expected = N_NEW * (N_OLD + FEAT) + (N_OLD if bias else 0)
    assert transfer.new_parameter_count(G_new.mapping.embed) == expected
    old_total = sum(p.numel() for p in _G(N_OLD).parameters())
    embed_old = FEAT * N_OLD + FEAT
    new_total = sum(p.numel() for p in G_new.parameters())
    assert new_total - (old_total - embed_old) - FEAT * N_OLD == expected     # E_old replaces the old embed

def test_D_gets_a_fresh_embedding_for_the_new_classes():
    _, _, _, D_new, _ = _transfer()
    assert D_new.mapping.embed.weight.shape[1] == N_NEW
    logits = D_new(torch.randn(2, 3, 8, 8), torch.eye(N_NEW))
    assert logits.shape == (2, 1)

def test_snapshot_pickle_generates_without_the_plugin():
    _, _, G_new, _, G_ema = _transfer()
    G_ema.mapping.embed.load_state_dict(G_new.mapping.embed.state_dict())
    G2 = pickle.loads(pickle.dumps(G_ema))
    z, c = torch.randn(3, 16), torch.eye(N_NEW)[[0, 1, 1]]
    assert torch.equal(G2(z, c, noise_mode='const'), G_ema(z, c, noise_mode='const'))
    assert type(G2.mapping.embed).__name__ == 'CombinedEmbedding'

def test_continuing_a_transfer_run_keeps_the_combination():
    _, _, G_new, D_new, G_ema = _transfer(transfer_stage='bn')
    with torch.no_grad():
        G_new.mapping.embed.A.add_(1)
    snapshot = dict(G=copy.deepcopy(G_new), D=copy.deepcopy(D_new), G_ema=copy.deepcopy(G_new))
    G2, D2 = _G(N_NEW, seed=5), _D(N_NEW, seed=6)
    G2_ema = copy.deepcopy(G2)
    plugin = transfer.TransferPlugin(_opts(transfer_stage='ft'), 'cpu')
    G2.requires_grad_(True)
    plugin.setup(G2, D2, G2_ema, dnnlib.EasyDict(resume_data=snapshot, full_resume=False))
    assert torch.equal(G2.mapping.embed.A, G_new.mapping.embed.A)
    assert not G2.mapping.embed.A.requires_grad and G2.mapping.embed.R.requires_grad

def test_unconditional_source_keeps_images_at_start():
    plugin, G_old, G_new, _, _ = _transfer(n_old=0)
    assert G_new.mapping.embed.n_old == 0
    G_old.eval(), G_new.eval()
    z = torch.randn(3, 16)
    out_new = G_new(z, torch.eye(N_NEW)[[0, 1, 0]], noise_mode='const')
    out_old = G_old(z, torch.zeros([3, 0]), noise_mode='const')
    assert torch.allclose(out_new, out_old, atol=1e-5)
    assert 'mapping.fc0.weight' in transfer.trainable_names(G_new, 'bn')

def test_state_roundtrip_and_validation():
    plugin, _, G_new, _, _ = _transfer(transfer_stage='bn')
    state = copy.deepcopy(plugin.state_for_snapshot())
    plugin2, _, _, _, _ = _transfer(transfer_stage='bn')
    plugin2.load_state(state)
    assert torch.equal(plugin2.frozen_w_avg, plugin.frozen_w_avg)
    with pytest.raises(ValueError, match='--transfer-stage'):
        transfer.TransferPlugin.validate('noaug', ['transfer'], _opts(transfer_stage='xx'))
    c = dnnlib.EasyDict(resume_pkl=None, training_set_kwargs=dict(use_labels=True))
    with pytest.raises(ValueError, match='--resume'):
        transfer.TransferPlugin.configure(c, _opts())

def _pretrained(tmp_path, weights_only):
    """A 3-class conditional snapshot from a 1-iteration run (weights_only: without resume_state,
    like an upstream network pickle)."""
    from plugin_train_util import make_dataset, tiny_config, train
    old_data = make_dataset(tmp_path / 'old', n=12, classes=3)
    _, snapshot = train(tiny_config(old_data, tmp_path / 'run_old', cond=True, kimg=0.004))
    path = sorted((tmp_path / 'run_old').glob('network-snapshot-*.pkl'))[-1]
    if weights_only:
        snapshot.pop('resume_state')
        path = tmp_path / 'pretrained.pkl'
        with open(path, 'wb') as f:
            pickle.dump(snapshot, f)
    return path

@pytest.mark.slow
def test_training_loop_transfer_and_generate_without_plugin(tmp_path):
    import subprocess, sys, os
    from plugin_train_util import make_dataset, tiny_config, train
    old_snap = _pretrained(tmp_path, weights_only=True)
    new_data = make_dataset(tmp_path / 'new', n=8, classes=2, seed=1)
    c = tiny_config(new_data, tmp_path / 'run_new', methods=['transfer'], cond=True, kimg=0.008, resume=old_snap)
    result, snapshot = train(c)
    G = result.G
    assert type(G.mapping.embed).__name__ == 'CombinedEmbedding' and G.mapping.embed.n_old == 3 and G.c_dim == 2
    trained = {n for n, p in G.named_parameters() if id(p) in {id(q) for q in result.phases[0].trainable}}
    assert trained == {'mapping.embed.E_old', 'mapping.embed.A', 'mapping.embed.a_bias', 'mapping.embed.R'}
    # A fresh process loads the snapshot and generates with no plugin option (as generate.py does).
    snap = sorted((tmp_path / 'run_new').glob('network-snapshot-*.pkl'))[-1]
    code = ('import sys, torch, legacy\n'
            'data = legacy.load_network_pkl(open(sys.argv[1], "rb"))\n'
            'G = data["G_ema"]\n'
            'img = G(torch.randn(2, G.z_dim), torch.eye(G.c_dim), noise_mode="const")\n'
            'assert "plugins.transfer" not in sys.modules, "generation must not need the plugin"\n'
            'print(type(G.mapping.embed).__name__, tuple(img.shape), bool(torch.isfinite(img).all()))\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', code, str(snap)], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].split() == ['CombinedEmbedding', '(2,', '3,', '16,', '16)', 'True']

@pytest.mark.slow
def test_training_loop_transfer_from_a_full_snapshot(tmp_path):
    from plugin_train_util import make_dataset, tiny_config, train
    old_snap = _pretrained(tmp_path, weights_only=False)
    new_data = make_dataset(tmp_path / 'new', n=8, classes=2, seed=1)
    result, _ = train(tiny_config(new_data, tmp_path / 'run_new', methods=['transfer'], cond=True, kimg=0.008, resume=old_snap))
    assert result.cur_nimg == 8     # counted from 0, not from the pretrained run's kimg

def test_safe_format_roundtrip(tmp_path):
    import legacy
    _, _, G_new, D_new, G_ema = _transfer()
    with torch.no_grad():
        G_ema.mapping.embed.A.add_(0.5)
    data = dict(G=G_new, D=D_new, G_ema=G_ema, augment_pipe=None, training_set_kwargs=None)
    legacy.export_safe(data, str(tmp_path / 'net'))
    loaded = legacy.load_network(str(tmp_path / 'net.safetensors'), safe=True, verbose=False)
    z, c = torch.randn(3, 16), torch.eye(N_NEW)[[0, 1, 1]]
    G2 = loaded['G_ema']
    assert type(G2.mapping.embed).__name__ == 'CombinedEmbedding'
    assert torch.equal(G2(z, c, noise_mode='const'), G_ema.eval()(z, c, noise_mode='const'))

#----------------------------------------------------------------------------
# Issue 14 item 7: own learning rate, the reference's bias init, stage ft needs a stage-bn source.

def test_transfer_lr_sets_the_adam_step_of_the_combination():
    """One Adam step at G's rate 0.0025 moves every entry of A, a_bias, R and E_old by 2e-4."""
    G_lr, rate = 0.0025, 2e-4
    G_old, D_old = _G(N_OLD, seed=1), _D(N_OLD, seed=2)
    resume = dict(G=G_old, D=D_old, G_ema=copy.deepcopy(G_old))
    G_new, D_new = _G(N_NEW, seed=3), _D(N_NEW, seed=4)
    _copy_matching(G_old, G_new)
    plugin = transfer.TransferPlugin(_opts(transfer_lr=rate), 'cpu')
    G_new.requires_grad_(True)
    plugin.setup(G_new, D_new, copy.deepcopy(G_new), dnnlib.EasyDict(resume_data=resume, full_resume=False,
                                                                      G_opt_kwargs=dict(lr=G_lr)))
    emb = G_new.mapping.embed
    assert emb.lr_multiplier == pytest.approx(rate / G_lr)
    for k in range(N_OLD):          # the values are unchanged by the multiplier
        torch.testing.assert_close(emb.value('E_old')[:, k], G_old.mapping.embed(torch.eye(N_OLD)[k:k + 1])[0],
                                   rtol=1e-6, atol=1e-7)
    before = {n: emb.value(n).detach().clone() for n in transfer.COMB_TENSORS}
    opt = torch.optim.Adam([p for p in G_new.parameters() if p.requires_grad], lr=G_lr, betas=(0.0, 0.99), eps=1e-8)
    G_new(torch.randn(4, 16), torch.eye(N_NEW)[[0, 1, 0, 1]]).square().mean().backward()
    grads = {n: getattr(emb, n).grad.abs() for n in transfer.COMB_TENSORS}
    opt.step()
    for n in transfer.COMB_TENSORS:
        step = (emb.value(n).detach() - before[n]).abs()
        live = grads[n] > 1e-5                                # Adam's eps matters below that
        assert live.sum() > 0
        torch.testing.assert_close(step[live], torch.full_like(step[live], rate), rtol=2e-3, atol=0)

def test_comb_bias_init_is_uniform_in_one_over_sqrt_new_classes():
    torch.manual_seed(0)
    b = transfer.CombinedEmbedding(20000, 16, 8, lr_multiplier=0.08).value('a_bias').detach().double()
    bound = 1 / 4                                             # 1 / sqrt(16)
    assert float(b.abs().max()) <= bound and float(b.abs().max()) > 0.999 * bound
    assert float(b.var()) == pytest.approx(bound ** 2 / 3, rel=0.03)    # variance of U(-a, a)
    assert abs(float(b.mean())) < 0.01

def test_stage_ft_from_a_pretrained_network_names_stage_bn():
    with pytest.raises(ValueError, match='--transfer-stage=bn'):
        _transfer(transfer_stage='ft')

def test_continuing_with_another_rate_keeps_the_values_and_asks_for_weights_only():
    _, _, G_bn, D_bn, _ = _transfer(transfer_stage='bn')       # multiplier 1 (no G lr given)
    snapshot = dict(G=copy.deepcopy(G_bn), D=copy.deepcopy(D_bn), G_ema=copy.deepcopy(G_bn))
    G2, D2 = _G(N_NEW, seed=5), _D(N_NEW, seed=6)
    _copy_matching(snapshot['G'], G2)
    plugin = transfer.TransferPlugin(_opts(transfer_stage='ft'), 'cpu')
    G2.requires_grad_(True)
    ctx = dnnlib.EasyDict(resume_data=snapshot, G_opt_kwargs=dict(lr=0.002))
    # Asked by train.py with the config c (here: only G's optimizer rate matters).
    assert transfer.TransferPlugin.resume_mode(snapshot, dnnlib.EasyDict(G_opt_kwargs=dict(lr=0.002)), plugin.opts) == 'weights'
    assert transfer.TransferPlugin.resume_mode(snapshot, dnnlib.EasyDict(G_opt_kwargs={}), plugin.opts) == 'full'    # same multiplier 1
    plugin.setup(G2, D2, copy.deepcopy(G2), dnnlib.EasyDict(ctx, full_resume=False))
    assert G2.mapping.embed.lr_multiplier == pytest.approx(0.1)
    c = torch.eye(N_NEW)
    torch.testing.assert_close(G2.mapping.embed(c), G_bn.mapping.embed(c), rtol=1e-6, atol=1e-7)

def _write_source(path):
    nets = dict(G=_G(N_OLD, seed=1), D=_D(N_OLD, seed=2))
    nets['G_ema'] = copy.deepcopy(nets['G'])
    with open(path, 'wb') as f:
        pickle.dump(nets, f)
    return str(path)

def test_cli_transfer_lr_and_stage_ft_error(tmp_path):
    """train.py as a user runs it: --transfer-lr reaches the options; ft from a pretrained network is refused."""
    import json, os, subprocess, sys
    from plugin_train_util import make_dataset
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = make_dataset(tmp_path / 'new', n=4, classes=2, res=8)
    source = _write_source(tmp_path / 'source.pkl')
    def run(*args):
        return subprocess.run([sys.executable, os.path.join(root, 'train.py'), f'--outdir={tmp_path / "runs"}',
                               f'--data={data}', '--cond=1', '--method=transfer', f'--resume={source}', '--aug=noaug',
                               '--metrics=none', *args], cwd=root, capture_output=True, text=True, timeout=300)
    out = run('--transfer-lr=1e-4', '--dry-run')
    assert out.returncode == 0, out.stderr
    options = json.loads(out.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert options['plugin_opts']['transfer_lr'] == 1e-4
    out = run('--transfer-stage=ft')
    assert out.returncode == 2 and '--transfer-stage=bn' in out.stderr and 'Traceback' not in out.stderr, out.stderr
    assert not (tmp_path / 'runs').exists()
