"""Speed levers of the training step: how a phase is executed, never what it computes.

train.py resolves the options into `c.speed` (plus optimizer and network keyword edits) with
`apply_levers`; training_loop runs every phase through `PhaseRunner` and calls `on_tick`.
Which lever keeps the arithmetic bitwise and which only up to rounding: docs/architecture.md,
section Speed.
"""

import contextlib
import os

import torch

DEFAULTS = dict(compile=False, cuda_graphs=False, bf16=False, channels_last=False, optim='foreach', cpu_threads=None)
OPTIM_IMPLS = ('loop', 'foreach', 'fused')

# Phases whose backward is taken once. Greg and Dreg (and the *both phases) differentiate the
# gradient itself (path length d|J^T y|/dw, R1 d|dD/dx|^2/dtheta): AOTAutograd's compiled
# backward is not differentiable again, so those phases run the eager networks.
COMPILED_PHASES = ('Gmain', 'Dmain')
COMPILE_BACKEND = 'inductor'    # the tests swap in 'aot_eager' (same tracing, no code generation)

#----------------------------------------------------------------------------
# Resolving the options (train.py and the tests share this).

def parse_cpu_threads(value):
    """'auto' | positive int | None -> the stored setting; ValueError names the fix."""
    if value is None or value == '':
        return None
    if str(value).lower() == 'auto':
        return 'auto'
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f'--cpu-threads={value}: give a positive number of threads or "auto"')
    return n

def apply_levers(c, **levers):
    """Fold the levers into the training config `c` (an EasyDict of training_loop kwargs).

    Optimizer levers go into G_opt_kwargs / D_opt_kwargs, channels-last into the network
    kwargs (NHWC in every block, fp32 ones too), the rest into c.speed for the loop.
    """
    unknown = set(levers) - set(DEFAULTS)
    if unknown:
        raise ValueError(f'unknown speed levers: {", ".join(sorted(unknown))}')
    speed = dict(DEFAULTS, **{k: v for k, v in levers.items() if v is not None})
    if speed['optim'] not in OPTIM_IMPLS:
        raise ValueError(f'--optim-impl={speed["optim"]}: choose one of {", ".join(OPTIM_IMPLS)}')
    speed['cpu_threads'] = parse_cpu_threads(speed['cpu_threads'])
    for key in ('G_opt_kwargs', 'D_opt_kwargs'):
        c[key] = type(c[key])(c[key], **optimizer_flags(speed['optim'], speed['cuda_graphs']))
    if speed['channels_last']:
        c.G_kwargs.synthesis_kwargs.channels_last = True
        c.D_kwargs.setdefault('block_kwargs', {})['channels_last'] = True
    c.speed = speed
    return c

def optimizer_flags(impl, capturable=False):
    """Adam keyword arguments of an implementation. 'loop' and 'foreach' give bitwise the same
    steps (same operations, applied per tensor or per list); 'fused' is one kernel with its own
    rounding. A CUDA graph needs the step counter on the device (capturable)."""
    flags = dict(loop=dict(foreach=False), foreach=dict(foreach=True), fused=dict(fused=True))[impl]
    if capturable:
        flags = dict(flags, capturable=True)
    return flags

def check_device(speed, device):
    """Refuse levers the device cannot run, before anything is built."""
    if speed.get('cuda_graphs') and torch.device(device).type != 'cuda':
        raise ValueError('--cuda-graphs needs a CUDA device; drop it on the CPU')

#----------------------------------------------------------------------------
# CPU threads.

def auto_threads(own_threads=0, cores=None, load=None):
    """Threads for a CPU run: the cores not busy with other processes (at least 1).

    The 1-minute load average counts runnable threads; our own (`own_threads`, 0 before the
    first iteration) are subtracted. With more threads than free cores every parallel op
    waits at its barrier for a descheduled thread, which costs far more than the thread gains.
    """
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    load = load if load is not None else os.getloadavg()[0]
    others = max(0.0, load - own_threads)
    return int(max(1, min(cores, round(cores - others))))

class CpuThreads:
    """Applies --cpu-threads: a fixed count once, 'auto' at the start and again at every tick."""
    def __init__(self, setting, device):
        self.setting = setting if torch.device(device).type == 'cpu' else None
        self.current = None
        self.update(start=True)

    def update(self, start=False):
        if self.setting is None:
            return
        n = self.setting if self.setting != 'auto' else auto_threads(0 if start else torch.get_num_threads())
        if n != self.current:
            torch.set_num_threads(n)
            self.current = n

#----------------------------------------------------------------------------
# bf16 autocast in the convolution layers only.

# Module classes (by name, so nothing here imports the networks) and whether their forward
# runs under bf16 autocast. On: the conv layers, where the arithmetic is. Off again inside
# them: the affine style layers (FullyConnectedLayer), whose styles scale whole feature maps.
# Everything else stays fp32: the mapping network (w and its running average), toRGB (the
# image), minibatch-stddev (a variance of small differences), the D epilogue, the
# augmentation (sampling coordinates) and the losses with their R1 / path-length norms.
BF16_CLASSES = dict(SynthesisLayer=True, Conv2dLayer=True, FullyConnectedLayer=False, ToRGBLayer=False,
                    MinibatchStdLayer=False)

@contextlib.contextmanager
def bf16_autocast(device_type):
    """Within the block, module calls switch autocast per BF16_CLASSES (nested calls stack)."""
    stack = []
    def enter(module, _args):
        enabled = BF16_CLASSES.get(type(module).__name__)
        if enabled is not None:
            ctx = torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)
            ctx.__enter__()
            stack.append(ctx)
    def leave(module, _args, out):
        enabled = BF16_CLASSES.get(type(module).__name__)
        if enabled is not None:
            stack.pop().__exit__(None, None, None)
            if enabled and isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16:
                return out.float()   # between layers (residual sums, resampling, the blocks' dtype checks): fp32
    handles = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
               torch.nn.modules.module.register_module_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while stack:   # an exception inside a module left its context open
            stack.pop().__exit__(None, None, None)

#----------------------------------------------------------------------------
# torch.compile of the forward passes.

class _CompiledView:
    """Stands in for G or D in the loss during the phases in COMPILED_PHASES: the parts the loss
    calls (G.mapping, G.synthesis, D.features, D.head) compiled, every other attribute the
    module's own. The module itself is untouched, so snapshots pickle the plain network."""
    def __init__(self, module, names):
        self._module = module
        for name in names:
            setattr(self, name, torch.compile(getattr(module, name), backend=COMPILE_BACKEND, dynamic=False))

    def __getattr__(self, name):
        return getattr(self._module, name)

    def __call__(self, *args, **kwargs):
        return self._module(*args, **kwargs)

#----------------------------------------------------------------------------
# Running one phase: eager, compiled, bf16 or replayed from a CUDA graph.

class PhaseRunner:
    """Calls `step(phase, real_img, real_c, gen_z, gen_c, cur_nimg)`, the loop's phase step,
    with the levers of `speed` around it. Under --cuda-graphs the very same function is
    captured once per phase (after eager warm-up runs) and replayed from then on."""

    def __init__(self, step, speed, loss, device, augment_pipe=None):
        self.step = step
        self.speed = {**DEFAULTS, **(speed or {})}
        self.loss = loss
        self.device = torch.device(device)
        self.augment_pipe = augment_pipe
        self.views = None
        if self.speed['compile']:
            # Draw the noise with torch's own generator, so the random streams stay those of an
            # eager run (inductor's default RNG draws other numbers).
            from torch._inductor import config as inductor_config
            inductor_config.fallback_random = True
            self.views = (_CompiledView(loss.G, ['mapping', 'synthesis']), _CompiledView(loss.D, ['features', 'head']))
        self.graphs = CudaGraphs(self) if self.speed['cuda_graphs'] else None

    def __call__(self, phase, real_img, real_c, gen_z, gen_c, cur_nimg):
        if self.graphs is not None:
            return self.graphs.run(phase, real_img, real_c, gen_z, gen_c, cur_nimg)
        return self.eager(phase, real_img, real_c, gen_z, gen_c, cur_nimg)

    def eager(self, phase, *inputs):
        with self.context(phase):
            self.step(phase, *inputs)

    @contextlib.contextmanager
    def context(self, phase):
        """The compiled networks (main phases only) and bf16 autocast, around one phase step."""
        G, D = self.loss.G, self.loss.D
        if self.views is not None and phase.name in COMPILED_PHASES:
            self.loss.G, self.loss.D = self.views
        try:
            with bf16_autocast(self.device.type) if self.speed['bf16'] else contextlib.nullcontext():
                yield
        finally:
            self.loss.G, self.loss.D = G, D

class CudaGraphs:
    """One CUDA graph per phase of PhaseRunner.step, for one host-side state at a time.

    Inputs are copied into static buffers before every replay. What the step decides on the
    host is part of the state: the augmentation probability (AugmentPipe skips all work at
    p = 0 and turns p into launch parameters), so a graph is dropped and recaptured when p
    changes (train.py therefore allows graphs only where p is fixed). Warm-up: WARMUP eager
    runs on a side stream (lazy initialisation, optimizer state, cuDNN autotuning) before the
    capture; the capture records without computing, so the capturing call replays once.
    """
    WARMUP = 3

    def __init__(self, runner):
        self.runner = runner
        self.graphs = {}    # phase name -> (state, eager runs in this state, graph or None, static inputs)

    def state(self):
        pipe = self.runner.augment_pipe
        if pipe is None or not hasattr(pipe, 'p'):
            return None
        from torch_utils import misc
        return misc.host_value(pipe.p)

    def run(self, phase, *inputs):
        state = self.state()
        entry = self.graphs.get(phase.name)
        if entry is None or entry[0] != state:
            entry = (state, 0, None, None)
        state, runs, graph, static = entry
        if graph is not None:
            _copy_into(static, inputs[:-1])
            graph.replay()
            return
        device = self.runner.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            if runs < self.WARMUP:
                self.runner.eager(phase, *inputs)
            else:
                static = _clone_inputs(inputs[:-1])
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.runner.eager(phase, *static, inputs[-1])
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graphs[phase.name] = (state, runs + 1, graph, static)
        if graph is not None:
            graph.replay()

def _clone_inputs(inputs):
    """Static copies of (real_img rounds, real_c rounds, gen_z rounds, gen_c rounds)."""
    return tuple(tuple(t.clone() for t in rounds) for rounds in inputs)

def _copy_into(static, inputs):
    for static_rounds, rounds in zip(static, inputs):
        for s, t in zip(static_rounds, rounds):
            s.copy_(t, non_blocking=True)
