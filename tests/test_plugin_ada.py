"""plugins/ada.py: the adaptive-p controller steps (methods.md section 1, Tests), option
validation for ada / fixed / noaug, snapshot state and the augment hook."""

import pytest
import torch

import plugins
from torch_utils import training_stats

B = 64
STEP = B * 4 / 500000       # = 256 / 500000 per adjustment

def make(aug, **kw):
    opts = plugins.default_opts()
    opts.update(aug=aug, methods=[], ada_kimg=500, batch_size=B, batch_gpu=B, typed=[])
    opts.update(kw)
    classes = plugins.resolve(aug, [], opts)
    return plugins.PluginSet(classes, opts, 'cpu')

def iterate(plugin_set, batch_idx, sign_value):
    """One training iteration as the loop runs it: D reports signs, then end_of_iteration."""
    training_stats.report('Loss/signs/real', torch.full([B], float(sign_value)))
    from dnnlib import EasyDict
    plugin_set.end_of_iteration(EasyDict(batch_idx=batch_idx, batch_size=B, cur_nimg=batch_idx * B), None)

def test_ada_p_rises_by_exactly_one_step_per_adjustment():
    ps = make('ada', target=0.6)
    p = ps.augment_pipe.p
    assert float(p) == 0
    history = []
    for batch_idx in range(1, 17):              # adjustments at batch_idx 4, 8, 12, 16
        iterate(ps, batch_idx, 1.0)
        history.append(float(p))
    expected = [STEP * (i // 4) for i in range(1, 17)]
    assert history == pytest.approx(expected, abs=1e-8)
    deltas = [history[i] - history[i - 4] for i in range(7, 16, 4)]
    assert deltas == pytest.approx([256 / 500000] * 3, rel=1e-5)

def test_ada_p_never_below_zero_and_stays_at_zero_for_mean_zero():
    ps = make('ada')
    p = ps.augment_pipe.p
    for batch_idx in range(1, 13):
        iterate(ps, batch_idx, 0.0)             # r = 0 < 0.6: pushes down, clamped at 0
        assert float(p) == 0
    for batch_idx in range(13, 21):             # two steps up ...
        iterate(ps, batch_idx, 1.0)
    assert float(p) == pytest.approx(2 * STEP, abs=1e-8)
    for batch_idx in range(21, 41):             # ... then five down: ends at 0, never negative
        iterate(ps, batch_idx, -1.0)
        assert float(p) >= 0
    assert float(p) == 0

def test_ada_speed_follows_ada_kimg_and_state_round_trip():
    ps = make('ada', ada_kimg=100)
    for batch_idx in range(1, 5):
        iterate(ps, batch_idx, 1.0)
    assert float(ps.augment_pipe.p) == pytest.approx(B * 4 / 100000, abs=1e-8)
    state = ps.state_for_snapshot()
    assert state['ada']['p'] == pytest.approx(B * 4 / 100000, abs=1e-8)
    other = make('ada', ada_kimg=500)            # a resumed run keeps the original speed and p
    other.load_state(state)
    assert float(other.augment_pipe.p) == pytest.approx(B * 4 / 100000, abs=1e-8)
    assert other['ada'].controller.speed_kimg == 100

def test_fixed_keeps_p_and_noaug_has_no_pipe():
    ps = make('fixed', p=0.3)
    for batch_idx in range(1, 9):
        iterate(ps, batch_idx, 1.0)
    assert float(ps.augment_pipe.p) == pytest.approx(0.3)
    ps.load_state({'fixed': {'p': 0.9}})         # the command-line constant wins on resume
    assert float(ps.augment_pipe.p) == pytest.approx(0.3)
    assert make('noaug').augment_pipe is None

def test_p_zero_is_identity_and_progress_is_reported():
    ps = make('ada')
    x = torch.randn([4, 3, 16, 16])
    assert torch.allclose(ps.augment_D_input(x, True, 'Dmain'), x, atol=1e-5)
    collector = training_stats.Collector(regex='Progress/augment')
    ps.report_stats()
    collector.update()
    assert collector.num('Progress/augment') == 1 and collector.mean('Progress/augment') == 0

NOT_READ = '--{0} is an option of {1}, which is not on: add {2}, or drop --{0}'

@pytest.mark.parametrize('aug, kw, message', [
    ('ada', dict(p=0.2), NOT_READ.format('p', 'fixed', '--aug=fixed') + ' (ada adapts p itself; use --target to steer it)'),
    ('apa', dict(p=0.2), NOT_READ.format('p', 'fixed', '--aug=fixed') + ' (with --aug=apa, --apa-fixed-p holds the APA probability constant)'),
    ('ada', dict(augpipe='nope'), 'unknown --augpipe "nope"'),
    ('ada', dict(target=1.5), '--target must be between 0 and 1'),
    ('fixed', dict(), '--aug=fixed needs --p'),
    ('fixed', dict(p=0.2, target=0.5), NOT_READ.format('target', 'ada / apa', '--aug=ada or --aug=apa')),
    ('fixed', dict(p=1.5), '--p must be between 0 and 1'),
    ('noaug', dict(augpipe='bgc'), NOT_READ.format('augpipe', 'ada / apa / fixed', '--aug=ada or --aug=apa or --aug=fixed')),
    ('noaug', dict(target=0.6), NOT_READ.format('target', 'ada / apa', '--aug=ada or --aug=apa')),
    ('diffaug', dict(target=0.6), NOT_READ.format('target', 'ada / apa', '--aug=ada or --aug=apa')),
    ('noaug', dict(p=0.1), NOT_READ.format('p', 'fixed', '--aug=fixed')),
    ('apa', dict(augpipe='bgc'), '--augpipe only matters with --aug=apa --with-dataaug=true'),
])
def test_validation_messages(aug, kw, message):
    """The options typed (given) are checked as train.py checks them: each one names the fix."""
    import dnnlib
    c = dnnlib.EasyDict(batch_size=8, batch_gpu=8, total_kimg=1)
    with pytest.raises(ValueError) as err:
        plugins.configure(c, aug, [], kw, given=kw)
    assert str(err.value).startswith(message)

def test_shared_options_are_declared_once_for_their_readers():
    from plugins import ada, apa
    assert plugins.registry()['ada'].options == [ada.TARGET, ada.AUGPIPE]
    assert ada.TARGET in apa.APAPlugin.options and ada.AUGPIPE in apa.APAPlugin.options
    readers = {opt.key: names for names, opt in plugins.all_options()}
    assert readers['p'] == ['fixed'] and readers['target'] == ['ada', 'apa'] and readers['augpipe'] == ['ada', 'apa', 'fixed']
    assert sum(opt.key == 'target' for _names, opt in plugins.all_options()) == 1
    assert (plugins.default_opts().target, plugins.default_opts().augpipe, plugins.default_opts().p) == (0.6, 'bgc', None)

def test_registered_as_aug_family_with_order_and_tags():
    reg = plugins.registry()
    for name in ['ada', 'fixed', 'noaug']:
        assert reg[name].kind == 'aug' and reg[name].order == 20
    assert reg['ada'].provides_augment_pipe and reg['fixed'].provides_augment_pipe
    assert reg['ada'].describe(dict(target=0.6, augpipe='bgc')) == 'ada'
    assert reg['ada'].describe(dict(target=0.7, augpipe='bgcfnc')) == 'ada-target0.7-bgcfnc'
    assert reg['fixed'].describe(dict(p=0.25, augpipe='bgc')) == 'fixed-p0.25'

def test_an_option_declared_twice_is_refused_at_registration():
    import plugins
    plugins.registry()
    class Copycat(plugins.Plugin):
        options = [plugins.Option('alpha', type=float, default=1.0)]     # UTLO's --alpha
    with pytest.raises(ValueError, match='option.*alpha.*"utlo" already declares'):
        plugins.register('copycat')(Copycat)
    assert 'copycat' not in plugins.registry()
    from plugins import ada
    class Sharer(plugins.Plugin):     # listing the family's own Option object is sharing it, not a second declaration
        options = [ada.TARGET]
    try:
        plugins.register('sharer')(Sharer)
        assert [names for names, opt in plugins.all_options() if opt.key == 'target'] == [['ada', 'apa', 'sharer']]
    finally:
        plugins._registry.pop('sharer', None)

def test_configure_fills_every_default_and_prefixes_configure_errors():
    import dnnlib
    import plugins
    c = dnnlib.EasyDict(batch_size=8, batch_gpu=4, total_kimg=1, training_set_kwargs=dict(use_labels=False))
    active, opts = plugins.configure(c, 'ada', [], {'target': None, 'augpipe': 'bgc'}, given=['augpipe'], resuming=True)
    assert [cls.name for cls in active] == c.plugin_names == ['ada']
    assert (opts.target, opts.augpipe, opts.p, opts.ada_kimg, opts.batch_size) == (0.6, 'bgc', None, 100, 8)
    assert opts.typed == c.plugin_opts['typed'] == ['augpipe']      # what the user typed, beside the defaults
    assert set(plugins.default_opts()) <= set(c.plugin_opts)
    with pytest.raises(ValueError, match='^utlo: UTLO is class-conditional'):
        plugins.configure(dnnlib.EasyDict(c), 'noaug', ['utlo'], {})
