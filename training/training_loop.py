"""The training loop (methods.md section 0): phases Gmain / Greg / Dmain / Dreg with lazy
regularisation, EMA of G, ticks with logs, image grids, snapshots that resume exactly, and
metrics. Methods never edit this file; they implement the hooks of plugins.Plugin, which
fire where docs/architecture.md says.
"""

import copy
import functools
import os
import random
import time

import numpy as np
import psutil
import torch

import dnnlib
import plugins as plugin_registry
from torch_utils import misc
from torch_utils import training_stats
from training import image_grid, snapshot
from training import speed as speed_levers
from training.loss import Phase
from training.run_log import StatsWriter

#----------------------------------------------------------------------------
# Small helpers.

def sanitize_and_reduce_grads(params, num_gpus):
    """Average gradients over ranks (data parallelism) and replace NaN -> 0, +-inf -> +-1e5.

    All gradients go through one flat buffer (one all-reduce, one nan_to_num launch instead of
    one per tensor) and come back as views of it.
    """
    params = [p for p in params if p.grad is not None and p.numel() > 0]
    if len(params) == 0:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    if num_gpus > 1:   # sum over ranks, then the mean
        torch.distributed.all_reduce(flat)
        flat.div_(num_gpus)
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.reshape(p.shape)

def broadcast_module(module):
    """Make every rank start from rank 0's parameters and buffers."""
    for tensor in misc.params_and_buffers(module):
        torch.distributed.broadcast(tensor.data, src=0)

def make_optimizer_phases(G, D, G_opt_kwargs, D_opt_kwargs, G_reg_interval, D_reg_interval):
    """Phases in run order. Lazy regularisation every k iterations: Adam lr * k/(k+1) and
    betas ** (k/(k+1)) so that the main + reg pair matches a non-lazy step (methods.md §0).
    Only parameters with requires_grad=True at this point are trained (Freeze-D, plugins)."""
    phases = []
    for name, module, opt_kwargs, reg_interval in [('G', G, G_opt_kwargs, G_reg_interval), ('D', D, D_opt_kwargs, D_reg_interval)]:
        trainable = [p for p in module.parameters() if p.requires_grad]
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        if 'betas' in opt_kwargs:   # torch's Adam rejects a mix of int and float betas
            opt_kwargs.betas = [float(beta) for beta in opt_kwargs.betas]
        if reg_interval is None:
            opt = dnnlib.util.construct_class_by_name(params=trainable, **opt_kwargs)
            phases.append(dnnlib.EasyDict(name=Phase(name + 'both'), module=module, opt=opt, interval=1, lr=opt_kwargs.lr, trainable=trainable))
            continue
        ratio = reg_interval / (reg_interval + 1)
        opt_kwargs.lr = opt_kwargs.lr * ratio
        opt_kwargs.betas = [beta ** ratio for beta in opt_kwargs.betas]
        opt = dnnlib.util.construct_class_by_name(params=trainable, **opt_kwargs)
        phases.append(dnnlib.EasyDict(name=Phase(name + 'main'), module=module, opt=opt, interval=1, lr=opt_kwargs.lr, trainable=trainable))
        phases.append(dnnlib.EasyDict(name=Phase(name + 'reg'), module=module, opt=opt, interval=reg_interval, lr=opt_kwargs.lr, trainable=trainable))
    return phases

def update_ema(G, G_ema, cur_nimg, batch_size, ema_kimg, ema_rampup):
    """G_ema <- lerp(G, G_ema, beta), beta = 0.5 ** (batch / ema_nimg); buffers copied."""
    # Half-life in images; the ramp-up keeps it below a fraction of the images seen so far.
    half_life = ema_kimg * 1000
    if ema_rampup is not None:
        half_life = min(half_life, cur_nimg * ema_rampup)
    ema_beta = 0.5 ** (batch_size / max(half_life, 1e-8))
    with torch.no_grad():
        params = dict(G.named_parameters())
        ema_params = [p for _name, p in G_ema.named_parameters()]
        src_params = [params[name].detach() for name, _p in G_ema.named_parameters()]
        if ema_params:   # p_ema + (1 - beta) * (p - p_ema) == lerp(p, p_ema, beta), one fused launch per group
            torch._foreach_lerp_(ema_params, src_params, 1 - ema_beta)
        buffers = dict(G.named_buffers())
        ema_buffers = [b for _name, b in G_ema.named_buffers()]
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, [buffers[name] for name, _b in G_ema.named_buffers()])
    return ema_beta

#----------------------------------------------------------------------------

def training_loop(
    run_dir                 = '.',      # Output directory.
    training_set_kwargs     = {},       # Options for the training set.
    data_loader_kwargs      = {},       # Options for torch.utils.data.DataLoader.
    G_kwargs                = {},       # Options for the generator.
    D_kwargs                = {},       # Options for the discriminator.
    G_opt_kwargs            = {},       # Options for the generator optimizer.
    D_opt_kwargs            = {},       # Options for the discriminator optimizer.
    loss_kwargs             = {},       # Options for the loss (class_name + StyleGAN2Loss kwargs).
    plugin_names            = [],       # Active plugins (resolved, in run order).
    plugin_opts             = {},       # Options handed to every plugin.
    metrics                 = [],       # Metric names evaluated at each network snapshot.
    metric_set_kwargs       = None,     # Dataset for metrics (None = the whole training set, its x-flip setting kept).
    detector                = None,     # Detector path / URL for the metrics (None = default).
    random_seed             = 0,        # Global seed.
    num_gpus                = 1,        # Number of processes (world size).
    rank                    = 0,        # Rank of this process.
    local_rank              = None,     # Device index of this process (None = rank).
    device                  = None,     # Force a device ('cpu' or 'cuda:N'); None = CUDA when available.
    batch_size              = 4,        # Global batch per iteration.
    batch_gpu               = 4,        # Per-process batch per accumulation round.
    ema_kimg                = 10,       # Half-life of the G_ema average, in kimg.
    ema_rampup              = None,     # EMA ramp-up coefficient (None = off).
    G_reg_interval          = 4,        # Path-length regularisation every N iterations (None = Gboth).
    D_reg_interval          = 16,       # R1 every N iterations (None = Dboth).
    freezed                 = 0,        # Freeze-D: D layers with index < freezed are not trained.
    total_kimg              = 25000,    # Training length.
    kimg_per_tick           = 4,        # Progress print / log interval.
    image_snapshot_ticks    = 50,       # fakesNNNNNN.png every N ticks (None = never).
    network_snapshot_ticks  = 50,       # Snapshot + metrics every N ticks (None = never).
    snapshot_keep           = None,     # Keep only the newest K snapshots (None = all).
    image_grid_max          = 32,       # Largest grid side (images per row / column).
    resume_pkl              = None,     # Snapshot / network pickle to resume from.
    resume_mode             = None,     # 'full' / 'weights': how to start from resume_pkl (train.py decides it).
    cudnn_benchmark         = True,     # torch.backends.cudnn.benchmark.
    allow_tf32              = False,    # TF32 for matmul and convolutions.
    sync_timing             = False,    # Synchronise around phases for exact per-phase times (benchmarks).
    abort_fn                = None,     # Called once per tick: stop training when it returns True.
    iteration_fn            = None,     # Called at the start of every iteration: iteration_fn(batch_idx) (benchmarks).
    progress_fn             = None,     # Called once per tick: progress_fn(cur_nimg, total_nimg).
    options                 = None,     # The resolved training config, stored in snapshots.
    wandb_project           = None,     # Also log to this Weights & Biases project (None = off).
    speed                   = None,     # Speed levers (training/speed.py DEFAULTS; None = all off).
):
    """Train until total_kimg; returns an EasyDict (G, D, G_ema, plugins, loss, phases, cur_nimg, batch_idx, cur_tick)."""
    start_time = time.time()
    device = setup_device_and_seeds(device, rank, local_rank, num_gpus, random_seed, cudnn_benchmark, allow_tf32)
    speed = {**speed_levers.DEFAULTS, **(speed or {})}
    speed_levers.check_device(speed, device)
    cpu_threads = speed_levers.CpuThreads(speed['cpu_threads'], device)
    assert batch_size % (batch_gpu * num_gpus) == 0, 'batch_size must be a multiple of batch_gpu * num_gpus'
    batch_per_rank = batch_size // num_gpus
    log = print if rank == 0 else (lambda *args, **kwargs: None)

    # ---- Resume plan, training set, networks ----------------------------------------------------
    plan = snapshot.open_resume(resume_pkl, resume_mode, log)
    log('Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    log(f'Num images: {len(training_set)}, image shape: {training_set.image_shape}, label shape: {training_set.label_shape}')
    log('Constructing networks...')
    G, D, G_ema = construct_networks(training_set, G_kwargs, D_kwargs, freezed, device)

    # ---- Plugins, after the weights a plugin's setup may need (transfer) --------------------------
    plugins = plugin_registry.PluginSet.from_names(plugin_names, plugin_opts, device, rank=rank, num_gpus=num_gpus)
    setup_ctx = dnnlib.EasyDict(training_set=training_set, batch_size=batch_size, batch_gpu=batch_gpu,
        num_gpus=num_gpus, rank=rank, device=device, run_dir=run_dir, resume_data=plan.data,
        G_opt_kwargs=G_opt_kwargs, D_opt_kwargs=D_opt_kwargs, full_resume=plan.full)
    plan.load_weights(G, D, G_ema)
    G.requires_grad_(True); D.requires_grad_(True)   # plugins may switch parameters off in setup
    plugins.setup(G, D, G_ema, setup_ctx)
    plan.load_weights_after_setup(G, D, G_ema)
    augment_pipe = plugins.augment_pipe
    plan.load_augment_pipe(augment_pipe)

    # ---- Optimizers, loss, counters -------------------------------------------------------------
    phases = make_optimizer_phases(G, D, G_opt_kwargs, D_opt_kwargs, G_reg_interval, D_reg_interval)
    G.requires_grad_(False); D.requires_grad_(False)
    loss = dnnlib.util.construct_class_by_name(device=device, G=G, D=D, plugins=plugins, **loss_kwargs)
    runner = speed_levers.PhaseRunner(functools.partial(phase_step, loss=loss, plugins=plugins, num_gpus=num_gpus),
                                      speed, loss, device, augment_pipe)
    if num_gpus > 1:
        for module in [G, D, G_ema] + ([augment_pipe] if augment_pipe is not None else []):
            broadcast_module(module)
    training_set_iterator = make_data_iterator(training_set, data_loader_kwargs, batch_per_rank, rank, num_gpus,
                                               random_seed, device, skip=plan.images_to_skip(batch_per_rank), log=log)

    # ---- Outputs ------------------------------------------------------------------------------
    grid = None
    if rank == 0:
        log('Exporting sample images...')
        grid = image_grid.export_reals_and_init_fakes(training_set, G, G_ema, run_dir, random_seed, image_grid_max,
                                                      batch_gpu, device, write_init=not plan.full)
    log('Initializing logs...')
    stats_collector = training_stats.Collector(regex='.*')
    stats_metrics = dict()
    writer = StatsWriter(run_dir, start_time, log, wandb_project, options) if rank == 0 else None

    # ---- Resume: optimizers, plugin states, counters and, last, the RNG streams ------------------
    cur_nimg, cur_tick, batch_idx = plan.restore(phases, plugins, loss, rank, num_gpus)

    # ---- Train --------------------------------------------------------------------------------
    total_nimg = int(total_kimg * 1000)
    log(f'Training for {total_kimg} kimg...')
    log()
    tick_start_nimg, tick_start_time, maintenance_time = start_tick(cur_nimg, start_time)
    if progress_fn is not None:
        progress_fn(cur_nimg, total_nimg)
    state = dnnlib.EasyDict(cur_nimg=cur_nimg, batch_idx=batch_idx, cur_tick=cur_tick, batch_size=batch_size,
                            batch_gpu=batch_gpu, G=G, D=D, G_ema=G_ema, phases=phases)
    done = cur_nimg >= total_nimg
    while not done:
        if iteration_fn is not None:
            iteration_fn(batch_idx)
        state.update(cur_nimg=cur_nimg, batch_idx=batch_idx, cur_tick=cur_tick)
        plugins.on_iteration_start(state)

        real_img, real_c, all_gen_z, all_gen_c = fetch_inputs(training_set_iterator, training_set, len(phases),
                                                               batch_per_rank, batch_gpu, G.z_dim, device)
        for phase, gen_z, gen_c in zip(phases, all_gen_z, all_gen_c):
            if batch_idx % phase.interval != 0:
                continue
            run_phase(phase, runner, real_img, real_c, gen_z.split(batch_gpu), gen_c.split(batch_gpu),
                      cur_nimg, device, sync_timing)

        plugins.before_ema(G, G_ema)
        update_ema(G, G_ema, cur_nimg, batch_size, ema_kimg, ema_rampup)

        cur_nimg += batch_size
        batch_idx += 1
        state.update(cur_nimg=cur_nimg, batch_idx=batch_idx, cur_tick=cur_tick)
        plugins.end_of_iteration(state, stats_collector)

        # ---- Tick: status line, images, snapshot, metrics, logs ------------------------------
        done = cur_nimg >= total_nimg
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue
        rng_state = snapshot.get_rng_state()     # maintenance below must not disturb the training RNG streams
        tick_end_time = time.time()
        log(' '.join(tick_report(cur_tick, cur_nimg, total_nimg, tick_start_nimg, tick_start_time, tick_end_time, start_time,
                                 maintenance_time, device, plugins)))
        if abort_fn is not None and abort_fn():
            done = True
            log()
            log('Aborting...')

        save_images = image_snapshot_ticks is not None and (done or cur_tick % image_snapshot_ticks == 0)
        if rank == 0 and save_images:
            image_grid.save_fakes(G_ema, grid, os.path.join(run_dir, f'fakes{cur_nimg // 1000:06d}.png'), batch_gpu)
        plugins.on_tick(state, dnnlib.EasyDict(done=done, save_images=save_images, run_dir=run_dir))
        if network_snapshot_ticks is not None and (done or cur_tick % network_snapshot_ticks == 0):
            snapshot_pkl, snapshot_data = snapshot.save_snapshot(run_dir, G, D, G_ema, augment_pipe, training_set_kwargs, phases, plugins,
                loss, cur_nimg, cur_tick, batch_idx, rng_state, options, num_gpus, rank, snapshot_keep)
            if len(metrics) > 0:
                stats_metrics.update(evaluate_metrics(metrics, snapshot_data['G_ema'], snapshot_pkl, run_dir,
                    metric_set_kwargs or dict(training_set_kwargs, max_size=None), detector, num_gpus, rank, device, log))
            del snapshot_data

        stats_collector.update()
        if writer is not None:
            writer.write(stats_collector.as_dict(), stats_metrics, cur_nimg)
        if progress_fn is not None:
            progress_fn(cur_nimg, total_nimg)

        snapshot.set_rng_state(rng_state)
        cpu_threads.update()
        cur_tick += 1
        tick_start_nimg, tick_start_time, maintenance_time = start_tick(cur_nimg, tick_end_time)

    if writer is not None:
        writer.close()
    log()
    log('Exiting...')
    return dnnlib.EasyDict(G=G, D=D, G_ema=G_ema, plugins=plugins, loss=loss, phases=phases,
                           cur_nimg=cur_nimg, batch_idx=batch_idx, cur_tick=cur_tick)

#----------------------------------------------------------------------------
# Setting up (each step of training_loop's preamble).

def setup_device_and_seeds(device, rank, local_rank, num_gpus, random_seed, cudnn_benchmark, allow_tf32):
    """The process's device (CUDA when available unless forced) and its seeds: seed * num_gpus + rank."""
    if device is None:
        device = torch.device('cuda', rank if local_rank is None else local_rank) if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(device)
    np.random.seed(random_seed * num_gpus + rank)
    torch.manual_seed(random_seed * num_gpus + rank)
    random.seed(random_seed * num_gpus + rank)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    return device

def construct_networks(training_set, G_kwargs, D_kwargs, freezed, device):
    """G, D (training mode, no grads yet) and G_ema (a copy of G) sized for the training set."""
    common_kwargs = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution, img_channels=training_set.num_channels)
    D_kwargs = copy.deepcopy(dict(D_kwargs))
    if freezed:   # Freeze-D: the networks turn the first `freezed` D layers into buffers
        D_kwargs.setdefault('block_kwargs', {})['freeze_layers'] = int(freezed)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    return G, D, G_ema

def make_data_iterator(training_set, data_loader_kwargs, batch_per_rank, rank, num_gpus, random_seed, device, skip, log):
    """Endless iterator of (uint8 images [N, C, H, W], labels [N, c_dim]) for this rank.
    `skip` images are dropped first, so a resumed run reads the stream an uninterrupted run would."""
    sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus, seed=random_seed, skip=skip)
    if skip > 0:   # ~2 us per index: seconds even for long runs
        log(f'Resume: fast-forwarding the image stream by {skip} images per process')
    loader_kwargs = dict(data_loader_kwargs)
    if loader_kwargs.get('num_workers', 0) == 0:
        loader_kwargs.pop('prefetch_factor', None)
    if device.type != 'cuda':
        loader_kwargs.pop('pin_memory', None)
    return iter(torch.utils.data.DataLoader(dataset=training_set, sampler=sampler, batch_size=batch_per_rank, **loader_kwargs))

#----------------------------------------------------------------------------
# The pieces of one iteration and one tick.

def fetch_inputs(training_set_iterator, training_set, num_phases, batch_per_rank, batch_gpu, z_dim, device):
    """Reals in [-1, 1] and their labels split into rounds of batch_gpu; per phase, latents z and
    labels c of uniformly drawn training images (the empirical class frequencies)."""
    # Host-to-device copies from pinned memory (the loader pins with pin_memory=True) run
    # asynchronously with non_blocking=True; from pageable memory they are plain copies.
    real_img, real_c = next(training_set_iterator)
    real_img = (real_img.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1).split(batch_gpu)
    real_c = real_c.to(device, non_blocking=True).split(batch_gpu)
    all_gen_z = torch.randn([num_phases, batch_per_rank, z_dim], device=device)
    all_gen_c = torch.from_numpy(training_set.get_labels(np.random.randint(len(training_set), size=num_phases * batch_per_rank)))
    if device.type == 'cuda':
        all_gen_c = all_gen_c.pin_memory()
    all_gen_c = all_gen_c.to(device, non_blocking=True).reshape(num_phases, batch_per_rank, -1)
    return real_img, real_c, all_gen_z, all_gen_c

def run_phase(phase, runner, real_img, real_c, gen_z, gen_c, cur_nimg, device, sync_timing):
    """One optimizer step of one phase, through the speed levers' runner (training/speed.py)."""
    t0 = _timer(device, sync_timing)
    runner(phase, real_img, real_c, gen_z, gen_c, cur_nimg)
    training_stats.report('Timing/' + phase.name, _timer(device, sync_timing) - t0)

def phase_step(phase, real_img, real_c, gen_z, gen_c, cur_nimg, loss, plugins, num_gpus):
    """The step itself, accumulated over the per-GPU rounds (captured as is under --cuda-graphs)."""
    phase.opt.zero_grad(set_to_none=True)
    for p in phase.trainable:
        p.requires_grad_(True)
    for round_real_img, round_real_c, round_gen_z, round_gen_c in zip(real_img, real_c, gen_z, gen_c):
        loss.accumulate_gradients(phase=phase.name, real_img=round_real_img, real_c=round_real_c,
                                  gen_z=round_gen_z, gen_c=round_gen_c, gain=phase.interval, cur_nimg=cur_nimg)
    for p in phase.trainable:
        p.requires_grad_(False)
    plugins.after_backward(phase.name, phase.module)
    sanitize_and_reduce_grads(phase.trainable, num_gpus)
    phase.opt.step()
    plugins.after_step(phase.name, phase.module)

def _timer(device, sync):
    if sync and device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()

def start_tick(cur_nimg, busy_since):
    """(images, wall time) at the start of a tick, and the seconds spent outside training since
    `busy_since` (setup, or the previous tick's reports, snapshots and metrics)."""
    now = time.time()
    return cur_nimg, now, now - busy_since

def tick_report(cur_tick, cur_nimg, total_nimg, tick_start_nimg, tick_start_time, tick_end_time, start_time, maintenance_time,
                device, plugins):
    """Report per-tick statistics and return the fields of the status line."""
    tick_kimg = (cur_nimg - tick_start_nimg) / 1000
    total_sec = tick_end_time - start_time
    sec_per_tick = tick_end_time - tick_start_time
    sec_per_kimg = sec_per_tick / max(tick_kimg, 1e-8)
    cpu_mem_gb = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_mem_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else 0.0
    gpu_reserved_gb = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == 'cuda' else 0.0
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    fields = [
        f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}",
        f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<8.3f}",
        f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', total_sec)):<12s}",
        f"sec/tick {training_stats.report0('Timing/sec_per_tick', sec_per_tick):<7.1f}",
        f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', sec_per_kimg):<7.2f}",
        f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}",
        f"cpumem {training_stats.report0('Resources/cpu_mem_gb', cpu_mem_gb):<6.2f}",
        f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', gpu_mem_gb):<6.2f}",
    ]
    training_stats.report0('Resources/peak_gpu_mem_reserved_gb', gpu_reserved_gb)
    training_stats.report0('Timing/total_hours', total_sec / 3600)
    training_stats.report0('Timing/total_days', total_sec / (24 * 3600))
    plugins.report_stats()
    fields += plugins.status_text()
    fields.append(progress_bar(cur_nimg, total_nimg, sec_per_kimg))
    return fields

def progress_bar(cur_nimg, total_nimg, sec_per_kimg, width=20):
    """'[#####...............]  25% eta 3m 10s': the run's progress, ETA at the current tick's speed."""
    frac = min(max(cur_nimg / max(total_nimg, 1), 0.0), 1.0)
    filled = int(round(frac * width))
    eta = dnnlib.util.format_time(max(total_nimg - cur_nimg, 0) / 1000 * sec_per_kimg)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}% eta {eta}"

def evaluate_metrics(metrics, G_ema, snapshot_pkl, run_dir, metric_set_kwargs, detector, num_gpus, rank, device, log):
    """Compute each metric on the snapshot's G_ema; rank 0 appends metric-<name>.jsonl."""
    from metrics import metric_main
    log('Evaluating metrics...')
    results = dict()
    for metric in metrics:
        result_dict = metric_main.calc_metric(metric=metric, G=G_ema, dataset_kwargs=metric_set_kwargs,
                                              num_gpus=num_gpus, rank=rank, device=device, detector=detector)
        if rank == 0:
            metric_main.report_metric(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl)
        results.update(result_dict.results)
    return results

#----------------------------------------------------------------------------
