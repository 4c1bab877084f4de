"""Registry of training-method plugins and the hook interface the training loop calls.

Each method lives in one module of this package and registers a `Plugin` subclass under a
short name with `@register(...)`. The loop only talks to `PluginSet`, never to a method by
name (see docs/architecture.md for where each hook fires).
"""

import importlib
import pkgutil
import re

import numpy as np

import dnnlib
from torch_utils import misc, training_stats

#----------------------------------------------------------------------------
# Options and registry.

class Option:
    """One command-line option a plugin adds to train.py (`--name`, stored as opts.name_with_underscores)."""
    def __init__(self, name, type=str, default=None, help=''):
        self.name = name                  # CLI spelling, e.g. 'diffaug-policy'
        self.key = name.replace('-', '_') # key in the opts dict
        self.type = type
        self.default = default
        self.help = help

_registry = {}      # name -> Plugin subclass
_loaded = False

def register(name):
    """Class decorator: make a Plugin subclass selectable by `name`."""
    def decorator(cls):
        assert issubclass(cls, Plugin)
        if cls.__module__.startswith('_imported_module_'):
            # A snapshot's embedded copy of a plugin module (torch_utils.persistence re-executes
            # module source on load): the real module already registered this name.
            return cls
        if name in _registry and _registry[name] is not cls:
            raise ValueError(f'plugin name "{name}" registered twice')
        for other_name, other in _registry.items():
            # A family of plugins shares an option by listing the same Option object; a second
            # declaration of the name would be a second default and a second help text.
            taken = {opt.key for opt in cls.options} & {opt.key for opt in other.options if opt not in cls.options}
            if other_name != name and taken:
                raise ValueError(f'plugin "{name}" declares option(s) {", ".join(sorted(taken))} that "{other_name}" '
                                 f'already declares: an option is declared once, and every plugin of the family '
                                 f'that reads it lists that same Option')
        cls.name = name
        _registry[name] = cls
        return cls
    return decorator

def _load_all():
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith('_'):
                importlib.import_module(f'{__name__}.{info.name}')
        _loaded = True

def registry():
    """All registered plugin classes by name, every plugin module imported."""
    _load_all()
    return dict(_registry)

def names(kind):
    """Registered names of one kind ('aug' or 'method'), sorted."""
    return sorted(name for name, cls in registry().items() if cls.kind == kind)

def all_options():
    """[(names of the plugins that read it, Option)]: every plugin option once, sorted by its first reader."""
    readers = {}
    for name, cls in sorted(registry().items()):
        for opt in cls.options:
            readers.setdefault(opt.key, ([], opt))[0].append(name)
    return [(names, opt) for names, opt in readers.values()]

def default_opts():
    """Dict of every plugin option's default value, keyed by option key."""
    return dnnlib.EasyDict({opt.key: opt.default for _names, opt in all_options()})

def switch_of(cls):
    """The command-line switch that turns a plugin on, e.g. '--method=utlo' or '--aug=apa'."""
    return f'--aug={cls.name}' if cls.kind == 'aug' else f'--method={cls.name}'

def check_given_options(active, given):
    """Every plugin option the user gave must be read by an active plugin: otherwise it would
    be dropped without a word. `given`: the option keys typed on the command line. An active
    plugin may add a hint for an option it does not read (Plugin.option_hints)."""
    read = {opt.key for cls in active for opt in cls.options}
    reg = registry()
    for readers, opt in sorted(all_options(), key=lambda item: item[1].key):
        if opt.key in given and opt.key not in read:
            hints = [cls.option_hints[opt.key] for cls in active if opt.key in cls.option_hints]
            raise ValueError(f'--{opt.name} is an option of {" / ".join(readers)}, which is not on: '
                             f'add {" or ".join(switch_of(reg[r]) for r in readers)}, or drop --{opt.name}'
                             + ''.join(f' ({hint})' for hint in hints))

def resolve(aug, methods, opts, given=()):
    """Return the active plugin classes, sorted by `order`, after validation.

    aug: the --aug value; methods: list of --method names; opts: dict of all plugin options;
    given: keys of the plugin options the user typed (each must belong to an active plugin).
    Raises ValueError with a readable message for unknown names or invalid combinations.
    """
    reg = registry()
    augs = names('aug')
    if aug not in augs:
        raise ValueError(f'unknown --aug "{aug}"; choose one of: {", ".join(augs)}')
    known_methods = names('method')
    for m in methods:
        if m not in known_methods:
            raise ValueError(f'unknown --method "{m}"; choose from: {", ".join(known_methods) or "(none registered)"}')
    active = [cls for cls in reg.values() if cls.is_active(aug, methods, opts)]
    active.sort(key=lambda cls: (cls.order, cls.name))
    check_given_options(active, given)
    for cls in active:
        cls.validate(aug, methods, opts)
    return active

def configure(c, aug, methods, values, given=(), resuming=False):
    """The one place plugin options are resolved, for train.py and the tests alike.

    values: {option key: value} (None or absent = the option's default); given: the keys the
    user typed (each must be read by an active plugin; recorded as opts.typed). Fills every
    default, validates, lets each active plugin edit the config `c` (which needs batch_size,
    batch_gpu, total_kimg) and records c.plugin_names and c.plugin_opts. resuming: ADA / APA
    adapt p 5x faster (ada_kimg 100 instead of 500), as upstream does for a resumed run.
    Returns (active plugin classes in run order, opts). Raises ValueError naming the fix.
    """
    opts = default_opts()
    opts.update({k: v for k, v in values.items() if v is not None})
    opts.update(aug=aug, methods=list(methods), ada_kimg=100 if resuming else 500, typed=sorted(set(given) & set(opts)),
                batch_size=c.batch_size, batch_gpu=c.batch_gpu, total_kimg=c.total_kimg)
    active = resolve(aug, opts.methods, opts, given=opts.typed)
    for cls in active:
        try:
            cls.configure(c, opts)
        except ValueError as err:
            raise ValueError(f'{cls.name}: {err}') from None
    c.plugin_names = [cls.name for cls in active]
    c.plugin_opts = dict(opts)
    return active, opts

#----------------------------------------------------------------------------
# Base class: every hook is a no-op, so a plugin implements only what it needs.

class Plugin:
    name = None         # set by @register
    kind = 'method'     # 'aug' (chosen by --aug) or 'method' (chosen by --method)
    order = 50          # run order: batch replacement < 20 <= augmentation < 40 <= others
    options = []        # list of Option (an Option read by several plugins is listed by each)
    option_hints = {}   # {option key: advice} when that option is given but this plugin is on instead
    provides_augment_pipe = False   # True if `self.augment_pipe` is the snapshot's augment_pipe

    # --- class-level, before any network exists -------------------------------------------
    @classmethod
    def is_active(cls, aug, methods, opts):
        return (cls.kind == 'aug' and aug == cls.name) or (cls.kind == 'method' and cls.name in methods)

    @classmethod
    def validate(cls, aug, methods, opts):
        """Raise ValueError with a message naming the fix if the options do not fit together."""

    @classmethod
    def configure(cls, c, opts):
        """Edit the training config `c` (G_kwargs, D_kwargs, loss_kwargs, ...) before networks are built."""

    @classmethod
    def resume_mode(cls, data, c, opts):
        """'weights' to start from the weights of the full snapshot `data` only (counters, optimizers,
        plugin states and RNG fresh), else 'full'. Asked by train.py while it builds the config c."""
        return 'full'

    @classmethod
    def describe(cls, opts):
        """Tag appended to the run directory name, e.g. 'apa-wdataaug'."""
        return cls.name

    # --- instance hooks, called by the training loop -----------------------------------------
    def __init__(self, opts, device, rank=0, num_gpus=1):
        self.opts = opts
        self.device = device
        self.rank = rank
        self.num_gpus = num_gpus
        self.augment_pipe = None

    def setup(self, G, D, G_ema, ctx):
        """Called once after networks exist (before resume state is loaded); ctx.full_resume says
        whether the run continues a snapshot in full."""

    def on_iteration_start(self, state):
        """Schedules (Re-GAN phase and learning rate, transfer stage)."""

    def replace_real_batch(self, real_img, phase):
        """Return the real batch D should see in Dmain / Dreg (APA)."""
        return real_img

    def augment_D_input(self, img, is_real, phase):
        """The augmentation A applied to every D input (ADA, DiffAugment)."""
        return img

    def synthesis_kwargs(self, phase):
        """Extra keyword arguments for G.synthesis in the loss (UTLO asks for add_uc=True)."""
        return {}

    def main_loss_weight(self, phase):
        """Multiplier on the base adversarial term of Gmain / Dmain (UTLO, AdvAug)."""
        return 1.0

    def extra_loss(self, phase, ctx):
        """Return a scalar tensor added to the phase loss, or None. Loss terms only: what a plugin
        wants to observe of the phase belongs in after_phase."""
        return None

    def after_phase(self, phase, ctx):
        """One round of a phase was computed and back-propagated: observe its ctx (APA keeps G's
        fakes, the lottery its loss); nothing to return."""

    def after_backward(self, phase, module):
        """After loss.backward(), before the optimizer step (mask gradients)."""

    def after_step(self, phase, module):
        """After the optimizer step (re-apply masks)."""

    def before_ema(self, G, G_ema):
        """Just before the G_ema update."""

    def end_of_iteration(self, state, stats):
        """After the EMA update: p controllers, schedules, logging."""

    def on_D_rewind(self):
        """D was just reset to its initial weights (lottery rounds): adaptive augmentation restarts."""

    def state_for_snapshot(self):
        """Training-only state needed to resume (picklable, CPU tensors)."""
        return {}

    def load_state(self, state):
        """Inverse of state_for_snapshot()."""

    def report_stats(self):
        """Report per-tick statistics with training_stats.report0 (called once per tick)."""

    def on_tick(self, state, tick):
        """At the end of every tick, where the loop writes its images and snapshots: tick.done (the
        last tick), tick.save_images (the loop writes fakes*.png now), tick.run_dir."""

    def status_text(self):
        """A few words on this plugin's state for the console's tick line, e.g. 'augment 0.125' ('' = none)."""
        return ''

#----------------------------------------------------------------------------
# The active plugins, called in order. Hooks a plugin does not override are skipped.

class PluginSet:
    def __init__(self, plugin_classes, opts, device, rank=0, num_gpus=1):
        self.plugins = [cls(opts, device, rank, num_gpus) for cls in plugin_classes]
        for p in self.plugins:
            p.plugin_set = self     # a plugin that resets D tells the others through on_D_rewind()
        self._impl = {}
        for hook in ['setup', 'on_iteration_start', 'replace_real_batch', 'augment_D_input',
                     'synthesis_kwargs', 'main_loss_weight', 'extra_loss', 'after_phase', 'after_backward',
                     'after_step', 'before_ema', 'end_of_iteration', 'on_D_rewind', 'report_stats', 'on_tick', 'status_text']:
            self._impl[hook] = [p for p in self.plugins if getattr(type(p), hook) is not getattr(Plugin, hook)]

    @classmethod
    def from_names(cls, plugin_names, opts, device, rank=0, num_gpus=1):
        """The set of registered plugins `plugin_names` (resolved, in run order)."""
        reg = registry()
        return cls([reg[name] for name in plugin_names], dnnlib.EasyDict(opts), device, rank=rank, num_gpus=num_gpus)

    def __iter__(self):
        return iter(self.plugins)

    def __getitem__(self, name):
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def augment_pipe(self):
        for p in self.plugins:
            if p.provides_augment_pipe and p.augment_pipe is not None:
                return p.augment_pipe
        return None

    def setup(self, G, D, G_ema, ctx):
        for p in self._impl['setup']:
            p.setup(G, D, G_ema, ctx)

    def on_iteration_start(self, state):
        for p in self._impl['on_iteration_start']:
            p.on_iteration_start(state)

    def replace_real_batch(self, real_img, phase):
        for p in self._impl['replace_real_batch']:
            real_img = p.replace_real_batch(real_img, phase)
        return real_img

    def augment_D_input(self, img, is_real, phase):
        for p in self._impl['augment_D_input']:
            img = p.augment_D_input(img, is_real, phase)
        return img

    def synthesis_kwargs(self, phase):
        kwargs = {}
        for p in self._impl['synthesis_kwargs']:
            kwargs.update(p.synthesis_kwargs(phase))
        return kwargs

    def main_loss_weight(self, phase):
        weight = 1.0
        for p in self._impl['main_loss_weight']:
            weight = weight * p.main_loss_weight(phase)
        return weight

    def extra_loss(self, phase, ctx):
        total = None
        for p in self._impl['extra_loss']:
            term = p.extra_loss(phase, ctx)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_phase(self, phase, ctx):
        for p in self._impl['after_phase']:
            p.after_phase(phase, ctx)

    def after_backward(self, phase, module):
        for p in self._impl['after_backward']:
            p.after_backward(phase, module)

    def after_step(self, phase, module):
        for p in self._impl['after_step']:
            p.after_step(phase, module)

    def before_ema(self, G, G_ema):
        for p in self._impl['before_ema']:
            p.before_ema(G, G_ema)

    def end_of_iteration(self, state, stats):
        for p in self._impl['end_of_iteration']:
            p.end_of_iteration(state, stats)

    def on_D_rewind(self):
        for p in self._impl['on_D_rewind']:
            p.on_D_rewind()

    def report_stats(self):
        for p in self._impl['report_stats']:
            p.report_stats()

    def on_tick(self, state, tick):
        for p in self._impl['on_tick']:
            p.on_tick(state, tick)

    def status_text(self):
        """The active plugins' status words, in run order, empty ones left out."""
        return [text for text in (p.status_text() for p in self._impl['status_text']) if text]

    def state_for_snapshot(self):
        return {p.name: p.state_for_snapshot() for p in self.plugins}

    def load_state(self, states):
        for p in self.plugins:
            if p.name in states:
                p.load_state(states[p.name])

#----------------------------------------------------------------------------
# The adaptive-p controller shared by ADA and APA (methods.md sections 1 and 4).

class AdaptiveP:
    """p <- max(0, p + sign(r - target) * batch * interval / (speed_kimg * 1000)), every `interval` iterations.

    r is the mean of the statistic `stat_name` (e.g. 'Loss/signs/real') reported through
    training_stats since the last adjustment, averaged over all ranks. `p` is a 0-dim tensor
    buffer owned by someone else (the augment pipe or the APA plugin); it is updated in place.
    The controller owns its window of reports: those collected when a snapshot is taken between
    two adjustments are kept as `pending` in its state, so a resumed run makes exactly the
    adjustment the uninterrupted run would have made.
    """
    def __init__(self, p, target=0.6, speed_kimg=500, interval=4, stat_name='Loss/signs/real'):
        self.p = p
        self.target = float(target)
        self.speed_kimg = float(speed_kimg)
        self.interval = int(interval)
        self.collector = training_stats.Collector(regex=re.escape(stat_name) + '$', keep_previous=False)
        self.stat_name = stat_name
        self.pending = [0, 0.0]     # [count, sum] of reports collected but not used yet

    def step_size(self, batch_size):
        return batch_size * self.interval / (self.speed_kimg * 1000)

    def _drain(self):
        """Fold the new reports (all ranks) into `pending`; returns their count. A collective call."""
        self.collector.update()
        num = self.collector.num(self.stat_name)
        if num > 0:
            self.pending[0] += num
            self.pending[1] += self.collector.mean(self.stat_name) * num
        return num

    def update(self, batch_idx, batch_size):
        """Call once per iteration after the D phases; adjusts p every `interval` iterations."""
        if batch_idx % self.interval != 0:
            return
        pending_before = self.pending[0]
        num = self._drain()
        if pending_before == 0 and num > 0:
            r = self.collector.mean(self.stat_name)   # the common case, without re-summing
        else:
            r = self.pending[1] / self.pending[0] if self.pending[0] > 0 else float('nan')
        self.pending = [0, 0.0]
        self.adjust(r, batch_size)

    def adjust(self, r, batch_size):
        """Apply one adjustment for a measured statistic r (NaN = no reports: no change)."""
        if r is None or not np.isfinite(r):
            return
        adjust = float(np.sign(r - self.target)) * self.step_size(batch_size)
        # max(0, p + adjust) in float32, the arithmetic `(p + adjust).clamp_min(0)` does on the
        # device, computed on the host: p's new value is then known without reading it back.
        p = misc.host_value(self.p)
        misc.set_host_value(self.p, max(float(np.float32(p) + np.float32(adjust)), 0.0))

    def restart(self):
        """p back to 0 and the statistic collected so far dropped (a collective call with several ranks)."""
        self._drain()
        self.pending = [0, 0.0]
        misc.set_host_value(self.p, 0.0)

    def state_dict(self):
        """Schedule and pending window (a collective call: the window is drained first)."""
        self._drain()
        return dict(target=self.target, speed_kimg=self.speed_kimg, pending=list(self.pending))

    def load_state_dict(self, state, schedule=True):
        """Restore the pending window, and with `schedule` the target and speed too."""
        if schedule:
            self.target = float(state.get('target', self.target))
            self.speed_kimg = float(state.get('speed_kimg', self.speed_kimg))
        if state.get('pending') is not None:
            self.pending = [int(state['pending'][0]), float(state['pending'][1])]
