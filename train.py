"""Train a GAN on a (limited) image dataset: StyleGAN2-ADA plus the method plugins.

Parses and validates the command line, builds the training config (`c`), creates the run
directory `{id:05d}-{desc}` and launches training_loop on 1..N processes (or under torchrun).

\b
Examples:
    python train.py --outdir=runs --data=data/cifar10.zip --cfg=cifar --aug=ada --metrics=none
    python train.py --outdir=runs --data=tiny.zip --cfg=tiny --kimg=2 --metrics=none   # CPU, minutes
"""

import datetime
import glob
import json
import os
import re
import tempfile

import click
import torch

import dnnlib
import plugins as plugin_registry

#----------------------------------------------------------------------------
# Presets (methods.md section 0). fmaps scales channel_base = fmaps * 32768.

_CFG_FIELDS = ('ref_gpus', 'kimg', 'mb', 'mbstd', 'fmaps', 'lrate', 'gamma', 'ema', 'ramp', 'map')
_CFG_TABLE = [  # -1: derived from the resolution and GPU count ('auto')
    # name        ref_gpus  kimg     mb  mbstd  fmaps  lrate   gamma  ema   ramp  map
    ('auto',      -1,       25000,   -1, -1,    -1,    -1,     -1,    -1,   0.05, 2),
    ('stylegan2', 8,        25000,   32, 4,     1,     0.002,  10,    10,   None, 8),
    ('paper256',  8,        25000,   64, 8,     0.5,   0.0025, 1,     20,   None, 8),
    ('paper512',  8,        25000,   64, 8,     1,     0.0025, 0.5,   20,   None, 8),
    ('paper1024', 8,        25000,   32, 4,     1,     0.002,  2,     10,   None, 8),
    ('cifar',     2,        100000,  64, 32,    1,     0.0025, 0.01,  500,  0.05, 2),
    ('low_shot',  -1,       300,     8,  4,     1,     0.002,  10,    10,   None, 2),
    ('tiny',      1,        20,      8,  4,     1/64,  0.01,   0.01,  1,    0.05, 2),
]
CFG_SPECS = {row[0]: dict(zip(_CFG_FIELDS, row[1:])) for row in _CFG_TABLE}
# DiffAugment's few-shot preset (its StyleGAN2 PyTorch code); ref_gpus -1: the batch is split over --gpus.
CFG_SPECS['low_shot'].update(snap=10)
# CPU preset, tuned so that the demo (conditional, 16x16 shapes) learns in minutes: 64-dim latents, 64
# channels up to 8x8 and 32 at 16x16, a high learning rate (at the demo's batch 32, 0.01 reached 80% recognised
# in 80 kimg, 0.005 72%, and 0.02 stalled for 20 kimg), a small R1 gamma, 2-layer mappings in G and D (D's class
# embedding too) learning 10x faster than upstream's, no style mixing and no path-length regulariser
# (they pay off in long runs, not in minutes); ticks every 0.1 kimg (~12 iterations), 8x8 grids. The box
# resampling filter [1, 1] (nearest-neighbour up, 2x2 mean down) instead of [1, 3, 3, 1]: at 16x16 the
# smoother filter rounds the shapes' corners and washes out their stripes (the demo: 82% recognised
# at 80 kimg against 80%, and 67% against 53% at 40).
CFG_SPECS['tiny'].update(channel_max=64, zdim=64, map_lr=0.1, tick=0.1, snap=10, grid=8, resample_filter=[1, 1])

RESUME_SPECS = {   # upstream's pretrained networks, by their usual short names
    'ffhq256':     'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512':     'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024':    'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256':  'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl',
}

#----------------------------------------------------------------------------
# Resolving --resume.

def list_snapshots(root):
    """Snapshots below `root` (a run dir or an outdir of run dirs), oldest first by (run id, kimg)."""
    found = []
    for path in glob.glob(os.path.join(root, 'network-snapshot-*.pkl')) + glob.glob(os.path.join(root, '*', 'network-snapshot-*.pkl')):
        run = os.path.basename(os.path.dirname(path))
        m_run = re.match(r'^(\d+)', run)
        m_kimg = re.search(r'network-snapshot-(\d+)\.pkl$', path)
        found.append((int(m_run.group(1)) if m_run else -1, int(m_kimg.group(1)), os.path.getmtime(path), path))
    return [item[-1] for item in sorted(found)]

def resolve_resume(resume, outdir):
    """--resume value -> path/URL or None. 'latest' = newest snapshot under --outdir."""
    if resume is None or resume == 'noresume':
        return None
    if resume in RESUME_SPECS:
        return RESUME_SPECS[resume]
    if resume == 'latest':
        snaps = list_snapshots(outdir) if os.path.isdir(outdir) else []
        if not snaps:
            raise click.UsageError(f'--resume=latest: no network-snapshot-*.pkl found under --outdir={outdir}')
        return snaps[-1]
    if dnnlib.util.is_url(resume):
        return resume
    if os.path.isdir(resume):
        snaps = list_snapshots(resume)
        if not snaps:
            raise click.UsageError(f'--resume={resume}: the directory holds no network-snapshot-*.pkl')
        return snaps[-1]
    if not os.path.isfile(resume):
        raise click.UsageError(f'--resume={resume}: no such file; give a snapshot .pkl, a run directory, "latest" '
                               f'or one of {", ".join(RESUME_SPECS)}')
    return resume

#----------------------------------------------------------------------------
# Building the training config.

def load_training_set(data, labels, cond, mirror, subset, seed):
    """Open the dataset once to validate it; returns (training_set_kwargs, dataset name, length)."""
    if data is None:
        raise click.UsageError('--data is required (a dataset ZIP or directory made by dataset_tool.py)')
    if not os.path.exists(data):
        raise click.UsageError(f'--data={data}: no such file or directory')
    kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=True, max_size=None, xflip=False)
    if labels is not None:
        kwargs.label_file = labels
    try:
        training_set = dnnlib.util.construct_class_by_name(**kwargs)
        kwargs.resolution = training_set.resolution
        kwargs.use_labels = training_set.has_labels
        kwargs.max_size = len(training_set)
        name = training_set.name
        has_labels = training_set.has_labels
        del training_set
    except (IOError, OSError, ValueError, KeyError) as err:
        raise click.UsageError(f'--data={data}: cannot read the dataset: {err}')
    if cond:
        if not has_labels:
            raise click.UsageError(f'--cond=True needs labels, but {data} has none; add them to dataset.json (dataset_tool.py) '
                                   f'or name a label file with --labels')
    else:
        kwargs.use_labels = False
    if subset is not None:
        if not 1 <= subset <= kwargs.max_size:
            raise click.UsageError(f'--subset must be between 1 and {kwargs.max_size} (the number of images)')
        if subset < kwargs.max_size:
            kwargs.max_size = subset
            kwargs.random_seed = seed
    if mirror:
        kwargs.xflip = True
    return kwargs, name, kwargs.max_size

def make_config(gpus, batch, cfg, gamma, kimg, snap, tick, res, seed, batch_gpu=None, map_layers=None, pl_weight=None,
                reg_gain='interval'):
    """Network / optimizer / loss config from the --cfg preset and the overrides."""
    if cfg not in CFG_SPECS:
        raise click.UsageError(f'unknown --cfg "{cfg}"; choose one of: {", ".join(CFG_SPECS)}')
    spec = dnnlib.EasyDict(CFG_SPECS[cfg])
    if spec.ref_gpus == -1:
        spec.ref_gpus = gpus
    if cfg == 'auto':
        spec.mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
        spec.mbstd = min(spec.mb // gpus, 4)
        spec.fmaps = 1 if res >= 512 else 0.5
        spec.lrate = 0.002 if res >= 1024 else 0.0025
        spec.gamma = 0.0002 * (res ** 2) / spec.mb
        spec.ema = spec.mb * 10 / 32
    if map_layers is not None:
        if map_layers < 1:
            raise click.UsageError(f'--map={map_layers}: the mapping network needs at least 1 layer')
        spec.map = map_layers
    if pl_weight is not None and pl_weight < 0:
        raise click.UsageError(f'--pl-weight={pl_weight:g} must be >= 0 (0 turns path-length regularisation off)')

    c = dnnlib.EasyDict()
    c.num_gpus = gpus
    c.random_seed = seed
    c.total_kimg = spec.kimg if kimg is None else kimg
    c.batch_size = spec.mb
    c.batch_gpu = max(spec.mb // spec.ref_gpus, 1)
    if batch is not None:
        if batch < 1 or batch % gpus != 0:
            raise click.UsageError(f'--batch={batch} must be a positive multiple of --gpus={gpus}')
        c.batch_size = batch
        c.batch_gpu = batch // gpus
    if c.batch_size % gpus != 0:
        raise click.UsageError(f'the batch of --cfg={cfg} ({c.batch_size}) is not divisible by --gpus={gpus}; set --batch')
    if batch_gpu == 'all':
        batch_gpu = c.batch_size // gpus
    if batch_gpu is not None:
        if batch_gpu < 1 or (c.batch_size // gpus) % batch_gpu != 0:
            raise click.UsageError(f'--batch-gpu={batch_gpu} must divide the per-GPU batch {c.batch_size // gpus} '
                                   f'(--batch={c.batch_size} over --gpus={gpus})')
        c.batch_gpu = batch_gpu
    c.batch_gpu = min(c.batch_gpu, c.batch_size // gpus)
    while (c.batch_size // gpus) % c.batch_gpu != 0:
        c.batch_gpu -= 1
    mbstd = min(spec.mbstd, c.batch_gpu)
    if c.batch_gpu % mbstd != 0:
        raise click.UsageError(f'the per-GPU batch {c.batch_gpu} is not a multiple of the minibatch-stddev group {mbstd}; '
                               f'choose --batch so that batch / gpus is a multiple of {mbstd}')

    channel_base = int(spec.fmaps * 32768)
    channel_max = spec.get('channel_max', 512)
    c.G_kwargs = dnnlib.EasyDict(class_name='training.networks.Generator', z_dim=spec.get('zdim', 512), w_dim=spec.get('zdim', 512),
        mapping_kwargs=dnnlib.EasyDict(num_layers=spec.map),
        synthesis_kwargs=dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4, conv_clamp=256))
    c.D_kwargs = dnnlib.EasyDict(class_name='training.networks.Discriminator', architecture='resnet',
        channel_base=channel_base, channel_max=channel_max, num_fp16_res=4, conv_clamp=256,
        block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=mbstd))
    c.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=spec.lrate, betas=[0.0, 0.99], eps=1e-8)
    c.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=spec.lrate, betas=[0.0, 0.99], eps=1e-8)
    c.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma if gamma is None else gamma,
                                    style_mixing_prob=0.9, pl_weight=2)
    c.ema_kimg = spec.ema
    c.ema_rampup = spec.ramp
    if cfg == 'cifar':
        c.loss_kwargs.pl_weight = 0
        c.loss_kwargs.style_mixing_prob = 0
        c.D_kwargs.architecture = 'orig'
    if cfg == 'tiny':   # float32 everywhere: the CPU has no fast fp16
        c.G_kwargs.synthesis_kwargs.num_fp16_res = c.D_kwargs.num_fp16_res = 0
        c.loss_kwargs.style_mixing_prob = c.loss_kwargs.pl_weight = 0
        c.G_kwargs.synthesis_kwargs.conv_clamp = c.D_kwargs.conv_clamp = None
        c.G_kwargs.mapping_kwargs.lr_multiplier = spec.map_lr
        c.D_kwargs.mapping_kwargs.update(num_layers=spec.map, lr_multiplier=spec.map_lr)
        c.G_kwargs.synthesis_kwargs.resample_filter = list(spec.resample_filter)
        c.D_kwargs.block_kwargs.resample_filter = list(spec.resample_filter)
    if pl_weight is not None:
        c.loss_kwargs.pl_weight = pl_weight
    c.loss_kwargs.reg_gain = reg_gain
    c.kimg_per_tick = spec.get('tick', 4) if tick is None else tick
    c.image_snapshot_ticks = c.network_snapshot_ticks = spec.get('snap', 50) if snap is None else snap
    c.image_grid_max = spec.get('grid', 32)
    if c.image_snapshot_ticks is not None and c.image_snapshot_ticks < 1:
        raise click.UsageError('--snap must be at least 1')
    return c

def parse_comma_list(value):
    if value is None or value.strip().lower() in ('', 'none'):
        return []
    return [item.strip() for item in value.split(',') if item.strip()]

#----------------------------------------------------------------------------
# Launching processes.

def init_distributed(rank, world_size, init_method, backend, timeout_sec):
    """Join the process group; a failure or timeout names this rank instead of hanging."""
    timeout = datetime.timedelta(seconds=timeout_sec)
    try:
        torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                             world_size=world_size, timeout=timeout)
    except Exception as err:
        raise RuntimeError(f'rank {rank}/{world_size}: could not join the process group via {init_method} '
                           f'({backend}) within {timeout_sec} s: {err}') from err

def _use_cuda(c):
    return torch.cuda.is_available() and c.get('device') in (None, 'cuda')

def join_process_group(c, rank, local_rank, init_method):
    """Pick the device and backend of this process and join the group (NCCL on GPU, gloo on CPU)."""
    # The first optimizer imports torch._dynamo, which keeps references to any process group that
    # exists at that moment: the group then outlives destroy_process_group(), and its gloo worker
    # threads, still running while Python shuts down, can abort the process at exit (SIGABRT,
    # "terminate called without an active exception"). Imported before the group exists, it holds none.
    import torch._dynamo  # noqa: F401
    use_cuda = _use_cuda(c)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:   # several CPU processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // c.num_gpus))
    init_distributed(rank, c.num_gpus, init_method, 'nccl' if use_cuda else 'gloo', c.get('dist_timeout', 600))

def run_worker(rank, c, init_method, local_rank=None):
    """One training process: logging, process group, training_stats, then training_loop."""
    from torch_utils import training_stats
    from training import training_loop
    local_rank = rank if local_rank is None else local_rank
    if rank == 0:
        dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    if c.num_gpus > 1:
        if not torch.distributed.is_initialized():
            join_process_group(c, rank, local_rank, init_method)
        # A single process keeps training_stats' defaults (rank 0, no all-reduce).
        training_stats.init_multiprocessing(rank=rank, sync_device=torch.device('cuda', local_rank) if _use_cuda(c) else None)
    kwargs = {k: v for k, v in c.items() if k not in ('dist_timeout',)}
    try:
        return training_loop.training_loop(rank=rank, local_rank=local_rank, options=dict(c), **kwargs)
    except Exception as err:
        if c.num_gpus > 1:
            print(f'rank {rank}: training failed: {type(err).__name__}: {err}', flush=True)
        raise
    finally:
        if c.num_gpus > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

def _spawned_worker(rank, c, init_method):
    run_worker(rank, c, init_method)

def prebuild_ops():
    """Build the custom CUDA ops once here, before workers start, so they do not race to compile."""
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, upfirdn2d  # noqa: F401  (importing an op registers its build)
    custom_ops.prebuild_all(verbose=True)

def default_workers():
    """DataLoader workers when --workers is not given: min(3, cores). Never more than the cores
    this process may use (more only contend, and DataLoader warns about it); three keep a GPU fed
    with the small PNGs of limited-data sets. Fewer is not cheaper: on two cores a tiny CPU run
    took 1.23x the CPU time with one worker as with two (farm-bench, 2 pairs, loaded machine),
    the training threads spinning while they wait for a batch."""
    try:
        cores = len(os.sched_getaffinity(0))   # what this process may use (taskset, containers)
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(3, cores))

def under_torchrun():
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ

def make_run_dir(c):
    os.makedirs(c.run_dir, exist_ok=False)
    with open(os.path.join(c.run_dir, 'training_options.json'), 'wt') as f:
        json.dump(c, f, indent=2)

def run_training(c):
    """Create the run directory, write training_options.json and train with c.num_gpus local
    processes (spawned), or as one worker of torchrun (env:// rendezvous, any number of nodes).
    Returns the loop's result (networks, counters) when training ran in this process."""
    if under_torchrun():
        rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', os.environ['RANK']))
        if c.num_gpus > 1:
            join_process_group(c, rank, local_rank, 'env://')
        run_dir = [c.run_dir]
        if rank == 0:
            make_run_dir(c)
        if c.num_gpus > 1:   # every rank writes into rank 0's run directory
            torch.distributed.broadcast_object_list(run_dir, src=0)
        c.run_dir = run_dir[0]
        return run_worker(rank, c, 'env://', local_rank=local_rank)
    make_run_dir(c)
    print('Launching processes...')
    if c.num_gpus == 1:
        return run_worker(0, c, None)
    prebuild_ops()
    with tempfile.TemporaryDirectory() as temp_dir:
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        torch.multiprocessing.spawn(fn=_spawned_worker, args=(c, 'file://' + init_file), nprocs=c.num_gpus)
    return None

def next_run_dir(outdir, desc):
    prev = [x for x in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, x))] if os.path.isdir(outdir) else []
    prev_ids = [int(m.group()) for m in (re.match(r'^\d+', x) for x in prev) if m is not None]
    cur_id = max(prev_ids, default=-1) + 1
    return os.path.join(outdir, f'{cur_id:05d}-{desc}')

#----------------------------------------------------------------------------
# The command line. Plugin options are added from the registry and grouped in --help.

class GroupedCommand(click.Command):
    """--help lists the base options first, then each plugin's options under its name."""
    def format_options(self, ctx, formatter):
        groups = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, 'plugin_group', None), []).append(record)
        with formatter.section('Options'):
            formatter.write_dl(groups.pop(None, []))
        for group in sorted(groups):
            with formatter.section(f'Options of {group}'):
                formatter.write_dl(groups[group])

class HelpShowsFirstSpelling(click.Option):
    """An option that also takes other spellings (the forks' underscores: --res_uc for --res-uc)
    while --help lists only ours."""
    def get_help_record(self, ctx):
        spellings, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = spellings

def plugin_click_options():
    """click.Option objects for every registered plugin option, once each, listed in --help under
    the plugins that read it ('ada / apa' for --target); each also accepts its underscore spelling."""
    params = []
    for readers, opt in plugin_registry.all_options():
        decls = [f'--{opt.name}'] + ([f'--{opt.key}'] if opt.key != opt.name else []) + [opt.key]
        param = HelpShowsFirstSpelling(decls, type=opt.type, default=opt.default, show_default=True, help=opt.help)
        param.plugin_group = ' / '.join(readers)
        params.append(param)
    return params

def typed_options():
    """Names of the parameters the user gave (command line or environment), not defaults."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return set()
    defaults = (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    return {name for name in ctx.params if ctx.get_parameter_source(name) not in defaults}

def configure_methods(kw, c):
    """Validate --aug / --method and their options, then let each active plugin edit c.
    Returns (active plugin classes, opts)."""
    values = {k: kw[k] for k in plugin_registry.default_opts() if k in kw}
    try:
        return plugin_registry.configure(c, kw.aug, parse_comma_list(kw.method), values, given=typed_options(),
                                         resuming=kw.resume not in (None, 'noresume'))
    except ValueError as err:
        raise click.UsageError(str(err))

def configure_resume(c, active, opts, fetch=True):
    """How the run starts from --resume, decided once with the rest of the config (the file is read
    here, so a broken one is refused before anything is written), and the schedule that follows:
    a weights-only start (an upstream pickle, a transfer source) runs without the EMA ramp-up. ADA's
    faster p on resume is plugins.configure's (ada_kimg). fetch=False (a dry run from a URL) leaves
    the mode undecided instead of downloading the network."""
    from training import snapshot
    if not fetch and dnnlib.util.is_url(c.resume_pkl):
        return
    try:
        c.resume_mode = snapshot.resume_mode(c.resume_pkl, active, c, opts)
    except (OSError, ValueError) as err:    # load_network's messages name the file and what is wrong with it
        raise click.UsageError(f'--resume: {err}')
    if c.resume_mode == 'weights':
        c.ema_rampup = None

def configure_metrics(kw, c):
    """--metrics (validated names), --detector and --metricdata."""
    c.metrics = parse_comma_list(kw.metrics)
    if c.metrics:
        try:
            from metrics import metric_main
        except ImportError as err:
            raise click.UsageError(f'--metrics needs the metrics package ({err}); use --metrics=none')
        bad = [m for m in c.metrics if not metric_main.is_valid_metric(m)]
        if bad:
            raise click.UsageError(f'unknown --metrics {", ".join(bad)}; choose from: {", ".join(metric_main.list_valid_metrics())}')
    c.detector = kw.detector
    c.metric_set_kwargs = None
    if kw.metricdata is not None or kw.metric_labels is not None:
        path = kw.metricdata if kw.metricdata is not None else c.training_set_kwargs.path
        if not os.path.exists(path):
            raise click.UsageError(f'--metricdata={path}: no such file or directory')
        # xflip is kept: the legacy metrics (fid50k, ...) use it as the reference does; *_full drop it.
        c.metric_set_kwargs = dnnlib.EasyDict(c.training_set_kwargs, path=path, max_size=None)
        c.metric_set_kwargs.pop('random_seed', None)
        if kw.metric_labels is not None:
            # e.g. lt_100_full.json: the balanced set with the long-tail run's class indices.
            c.metric_set_kwargs.label_file = None if kw.metric_labels == 'dataset.json' else kw.metric_labels
        try:
            dnnlib.util.construct_class_by_name(**c.metric_set_kwargs)
        except (IOError, OSError, ValueError, KeyError) as err:
            raise click.UsageError(f'--metricdata={path}: cannot read the metric dataset: {err}')

def speed_click_options():
    """The speed levers (training/speed.py; docs/architecture.md, Speed)."""
    from training import speed
    return [
        click.Option(['--optim-impl', 'optim_impl'], help='Adam implementation: foreach (bitwise the same steps as loop, '
                     'fewer launches), loop, or fused (one kernel, rounds differently)', type=click.Choice(speed.OPTIM_IMPLS),
                     default=speed.DEFAULTS['optim'], show_default=True),
        click.Option(['--cpu-threads', 'cpu_threads'], help='CPU runs: torch threads, or "auto" = the cores other processes '
                     'leave free, rechecked every tick [default: torch\'s own]', metavar='INT|auto'),
        click.Option(['--channels-last', 'channels_last'], help='NHWC activations and weights in every block (fp32 ones too)',
                     type=bool, default=False, metavar='BOOL'),
        click.Option(['--bf16'], help='bf16 autocast in the convolution layers (styles, mapping, toRGB, D epilogue, '
                     'augmentation and losses stay fp32)', type=bool, default=False, metavar='BOOL'),
        click.Option(['--compile'], help='torch.compile the networks\' forward passes in Gmain / Dmain (the R1 and '
                     'path-length phases need double backward and run eager)', type=bool, default=False, metavar='BOOL'),
        click.Option(['--cuda-graphs', 'cuda_graphs'], help='Replay each phase step from a CUDA graph (GPU only; --aug '
                     'noaug/fixed/diffaug without --method)', type=bool, default=False, metavar='BOOL'),
    ]

class BatchGpu(click.ParamType):
    """--batch-gpu: an int, or 'all' (kept as the string: the whole per-GPU batch in one round)."""
    name = 'batch_gpu'

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() != 'all':
            try:
                return int(value)
            except ValueError:
                self.fail(f'{value!r} is neither a number nor "all"', param, ctx)
        return 'all'

CUDA_GRAPH_AUGS = ('noaug', 'fixed', 'diffaug')   # p fixed: ADA / APA move it every 4 iterations

def configure_speed(kw, c):
    """Fold the speed levers into c; refuse the ones this device or configuration cannot run."""
    from training import speed
    if kw.cuda_graphs:
        if not torch.cuda.is_available():
            raise click.UsageError('--cuda-graphs needs a CUDA device; drop it on the CPU')
        if kw.aug not in CUDA_GRAPH_AUGS or parse_comma_list(kw.method):
            # Other plugins decide things on the host inside the step (loss weights, schedules),
            # which a replayed graph would freeze at their capture-time values.
            raise click.UsageError(f'--cuda-graphs supports --aug={"/".join(CUDA_GRAPH_AUGS)} without --method; drop it here')
    try:
        speed.apply_levers(c, compile=kw.compile, cuda_graphs=kw.cuda_graphs, bf16=kw.bf16, channels_last=kw.channels_last,
                           optim=kw.optim_impl, cpu_threads=kw.cpu_threads)
    except ValueError as err:
        raise click.UsageError(str(err))

def configure_performance(kw, c):
    if kw.fp32:
        c.G_kwargs.synthesis_kwargs.num_fp16_res = c.D_kwargs.num_fp16_res = 0
        c.G_kwargs.synthesis_kwargs.conv_clamp = c.D_kwargs.conv_clamp = None
    if kw.nhwc:
        c.G_kwargs.synthesis_kwargs.fp16_channels_last = c.D_kwargs.block_kwargs.fp16_channels_last = True
    c.cudnn_benchmark = not kw.nobench
    c.allow_tf32 = bool(kw.allow_tf32)

def configure_logging(kw, c):
    """--desc (checked as part of a directory name) and --wandb (checked importable)."""
    if kw.desc and not re.fullmatch(r'[A-Za-z0-9._+=-]+', kw.desc):
        raise click.UsageError(f'--desc={kw.desc!r}: use letters, digits and . _ + = - only (it becomes part of the run directory name)')
    c.wandb_project = kw.wandb
    if kw.wandb:
        try:
            import wandb  # noqa: F401 -- fail here, not after the run directory exists
        except ImportError as err:
            raise click.UsageError(f'--wandb needs the wandb package ({err}): pip install wandb')

def run_description(kw, dataset_name, active, opts):
    """The `desc` part of the run directory name, e.g. 'cifar10-cond-mirror-cifar-ada-regan-s0.3'."""
    desc = f'{dataset_name}'
    if kw.cond:
        desc += '-cond'
    if kw.subset is not None:
        desc += f'-{kw.subset}'
    if kw.mirror:
        desc += '-mirror'
    desc += f'-{kw.cfg}'
    if kw.gamma is not None:
        desc += f'-gamma{kw.gamma:g}'
    if kw.map is not None:
        desc += f'-map{kw.map}'
    if kw.pl_weight is not None:
        desc += f'-pl{kw.pl_weight:g}'
    if kw.reg_gain != 'interval':
        desc += f'-reggain-{kw.reg_gain}'
    if kw.kimg is not None:
        desc += f'-kimg{kw.kimg:g}'
    if kw.batch is not None:
        desc += f'-batch{kw.batch}'
    for cls in active:
        desc += f'-{cls.describe(opts)}'
    if kw.resume not in (None, 'noresume'):
        desc += '-resume' + (kw.resume if kw.resume in RESUME_SPECS or kw.resume == 'latest' else 'custom')
    if kw.freezed:
        desc += f'-freezed{kw.freezed}'
    if kw.desc:
        desc += f'-{kw.desc}'
    return desc

def main(**kw):
    """Validate everything, build the config, create the run directory and train."""
    kw = dnnlib.EasyDict(kw)
    if under_torchrun():   # the world size comes from torchrun
        kw.gpus = int(os.environ['WORLD_SIZE'])
    elif kw.gpus < 1 or kw.gpus & (kw.gpus - 1) != 0:
        raise click.UsageError(f'--gpus={kw.gpus} must be a power of two (1, 2, 4, 8, ...)')
    if torch.cuda.is_available() and kw.gpus > torch.cuda.device_count() and not under_torchrun():
        raise click.UsageError(f'--gpus={kw.gpus} but only {torch.cuda.device_count()} CUDA devices are visible')
    if kw.freezed < 0:
        raise click.UsageError('--freezed must be 0 or more')
    if kw.gamma is not None and kw.gamma < 0:
        raise click.UsageError(f'--gamma={kw.gamma:g}: the R1 weight must be 0 or more')
    if kw.workers is None:
        kw.workers = default_workers()
    elif kw.workers < 0:
        raise click.UsageError(f'--workers={kw.workers} must be 0 (load in the training process) or more')

    training_set_kwargs, dataset_name, num_images = load_training_set(kw.data, kw.labels, kw.cond, kw.mirror, kw.subset, kw.seed)
    c = make_config(kw.gpus, kw.batch, kw.cfg, kw.gamma, kw.kimg, kw.snap, kw.tick, training_set_kwargs.resolution, kw.seed,
                    batch_gpu=kw.batch_gpu, map_layers=kw.map, pl_weight=kw.pl_weight, reg_gain=kw.reg_gain)
    c.training_set_kwargs = training_set_kwargs
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=kw.workers, prefetch_factor=2)
    # Resolved before the plugins are configured: they may check the network they start from.
    c.resume_pkl = resolve_resume(kw.resume, kw.outdir)
    active, opts = configure_methods(kw, c)
    configure_metrics(kw, c)
    configure_performance(kw, c)
    configure_speed(kw, c)
    configure_resume(c, active, opts, fetch=not kw.dry_run)
    c.freezed = kw.freezed
    c.snapshot_keep = kw.snapshot_keep
    configure_logging(kw, c)
    c.run_dir = next_run_dir(kw.outdir, run_description(kw, dataset_name, active, opts))

    say = print if not under_torchrun() or int(os.environ['RANK']) == 0 else (lambda *args: None)
    say()
    say('Training options:')
    say(json.dumps(c, indent=2))
    say()
    say(f'Output directory:   {c.run_dir}')
    say(f'Training data:      {training_set_kwargs.path} ({num_images} images)')
    say(f'Training duration:  {c.total_kimg} kimg')
    say(f'Number of GPUs:     {c.num_gpus}')
    say(f'Methods:            {", ".join(c.plugin_names)}')
    say(f'Resolution:         {training_set_kwargs.resolution}, conditional: {training_set_kwargs.use_labels}')
    say()
    if kw.dry_run:
        say('Dry run; exiting.')
        return c
    return run_training(c)

def build_cli():
    params = [
        click.Option(['--outdir'], callback=dnnlib.util.expand_user, help='Where to save the results', required=True, metavar='DIR'),
        click.Option(['--data'], callback=dnnlib.util.expand_user, help='Training data (directory or zip)', metavar='PATH'),
        click.Option(['--gpus'], help='Number of GPUs (processes) to use [default: 1]', type=int, default=1, metavar='INT'),
        click.Option(['--batch'], help='Override batch size', type=int, metavar='INT'),
        click.Option(['--batch-gpu', 'batch_gpu'], help='Images per GPU per accumulation round, or "all" (one round) '
                     '[default: from --cfg]; larger is faster where memory allows (same batch, fewer rounds; '
                     'minibatch-stddev groups and the path-length batch follow the round)', type=BatchGpu(), metavar='INT|all'),
        click.Option(['--cfg'], help='Base config [default: auto]; low_shot is DiffAugment\'s few-shot preset (300 kimg, '
                     'batch 8, gamma 10, 2 mapping layers, snapshots every 10 ticks)', type=click.Choice(list(CFG_SPECS)), default='auto'),
        click.Option(['--gamma'], help='Override R1 gamma', type=float),
        click.Option(['--map'], help='Override the number of mapping network layers [default: from --cfg: 8; auto, cifar, '
                     'low_shot, tiny: 2]', type=int, metavar='INT'),
        click.Option(['--pl-weight', 'pl_weight'], help='Override the path-length regularisation weight [default: 2; cifar: 0]',
                     type=float, metavar='FLOAT'),
        click.Option(['--reg-gain', 'reg_gain'], help='interval: the lazy R1 / path-length losses are multiplied by their '
                     'interval (16 / 4) as in StyleGAN2-ADA; none: they are not (the UTLO code). Adam lr / betas are '
                     'scaled for lazy steps either way [default: interval]',
                     type=click.Choice(['interval', 'none']), default='interval'),
        click.Option(['--kimg'], help='Override training duration', type=float, metavar='KIMG'),
        click.Option(['--snap'], help='Snapshot interval in ticks [default: 50, tiny: 10]', type=int, metavar='INT'),
        click.Option(['--tick'], help='Ticks every KIMG kimg [default: 4, tiny: 0.1]', type=float, metavar='KIMG'),
        click.Option(['--snapshot-keep', 'snapshot_keep'], help='Keep only the newest K network snapshots', type=int, metavar='K'),
        click.Option(['--metrics'], help='Comma-separated metrics or "none" [default: fid50k_full]', default='fid50k_full'),
        click.Option(['--metricdata'], callback=dnnlib.util.expand_user, help='Dataset the metrics compare against [default: --data]', metavar='PATH'),
        click.Option(['--metric-labels', 'metric_labels'], help='Label file of the metric dataset, e.g. lt_100_full.json '
                     '(the balanced set with a long-tail run\'s class indices) [default: --labels]', metavar='FILE'),
        click.Option(['--detector'], callback=dnnlib.util.expand_user, help='Feature detector path or URL for the metrics', metavar='PATH|URL'),
        click.Option(['--seed'], help='Random seed [default: 0]', type=int, default=0, metavar='INT'),
        click.Option(['--dry-run', '-n', 'dry_run'], help='Check everything, print training options and exit', is_flag=True),
        click.Option(['--cond'], help='Train conditional model based on dataset labels [default: false]', type=bool, default=False, metavar='BOOL'),
        click.Option(['--mirror'], help='Enable dataset x-flips [default: false]', type=bool, default=False, metavar='BOOL'),
        click.Option(['--subset'], help='Train with only N images [default: all]', type=int, metavar='INT'),
        click.Option(['--labels', '--fname', 'labels'], help='Label file inside the dataset [default: dataset.json]', metavar='FILE'),
        click.Option(['--aug'], help=f'Augmentation family: {"|".join(plugin_registry.names("aug"))} [default: ada]',
                     default='ada', metavar='NAME'),
        click.Option(['--method'], help=f'Comma-separated methods: {",".join(plugin_registry.names("method"))}',
                     default='', metavar='LIST'),
        click.Option(['--resume'], callback=dnnlib.util.expand_user, help='Resume from snapshot .pkl, run dir, "latest" or a known network [default: noresume]', metavar='PKL'),
        click.Option(['--freezed'], help='Freeze-D: freeze the first N D layers [default: 0]', type=int, default=0, metavar='INT'),
        click.Option(['--fp32'], help='Disable mixed-precision training', type=bool, default=False, metavar='BOOL'),
        click.Option(['--nhwc'], help='Use NHWC memory format with FP16', type=bool, default=False, metavar='BOOL'),
        click.Option(['--nobench'], help='Disable cuDNN benchmarking', type=bool, default=False, metavar='BOOL'),
        click.Option(['--allow-tf32', 'allow_tf32'], help='Allow PyTorch to use TF32 internally', type=bool, default=False, metavar='BOOL'),
        click.Option(['--workers'], help='DataLoader worker processes [default: min(3, cores)]; 0 loads in the '
                     'training process', type=int, metavar='INT'),
        click.Option(['--desc', '--description', 'desc'], help='Text appended to the run directory name', metavar='TEXT'),
        click.Option(['--wandb', '--wandb_proj', 'wandb'], help='Also log scalars, fakes grids, curves and the config to this '
                     'Weights & Biases project (needs wandb; WANDB_MODE=offline keeps it on disk)', metavar='PROJECT'),
        *speed_click_options(),
    ]
    names = {p.name for p in params}
    for param in plugin_click_options():
        if param.name not in names:
            params.append(param)
    def callback(**kw):
        return main(**kw)
    return GroupedCommand(name='train', params=params, callback=callback, help=__doc__,
                          context_settings=dict(max_content_width=120))

def cli():
    """Entry point of `python train.py` and the `ldgan-train` command."""
    build_cli()()

if __name__ == '__main__':
    cli()
