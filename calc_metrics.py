"""Compute quality metrics of a trained network, or of a folder of generated images.

    python calc_metrics.py --network=runs/00000-x/network-snapshot-000100.pkl --metrics=fid50k_full,kid50k_full
    python calc_metrics.py --network=snap.pkl --metrics=pr50k3_full --data=data/full.zip --mirror=1
    python calc_metrics.py --images=fakes/ --data=data/cifar10.zip --metrics=fid50k_full,kid50k_full   # folder mode

Results are printed and appended to `metric-<name>.jsonl` beside the snapshot, like train.py
does. Detectors come from --detector / --vgg16 (path or URL), else from the default URLs
through the download cache ($DNNLIB_CACHE_DIR, default ~/.cache/dnnlib).
"""

import copy
import os
import re
import tempfile

import click
import torch

import dnnlib
from metrics import metric_main
from metrics.detectors import DetectorError

#----------------------------------------------------------------------------

def parse_metric_list(value):
    """'fid50k_full, kid50k_full' -> ['fid50k_full', 'kid50k_full'] (each checked)."""
    names = [m.strip() for m in (value or '').split(',') if m.strip()]
    if not names:
        raise click.BadParameter('give at least one metric', param_hint='--metrics')
    bad = [m for m in names if not metric_main.is_valid_metric(m)]
    if bad:
        raise click.BadParameter(f'unknown metric(s) {", ".join(bad)}. Valid metrics: '
                                 f'{", ".join(metric_main.list_valid_metrics())} (counts may vary, e.g. fid100_full)',
                                 param_hint='--metrics')
    return names

def metric_for_count(name, num_gen):
    """The metric whose name states `num_gen` generated images: --num-gen=32 turns fid50k_full
    into fid32_full, so the result never lands beside real 50k results under the 50k name.
    (A legacy name also takes the count for its reals: fid50k -> fid32.)"""
    spec = metric_main.parse_metric(name)
    if spec.kind == 'ppl':
        raise click.UsageError(f'--num-gen does not apply to {name}: its name has no count to carry it; drop --num-gen')
    if spec.kind in ('fid_shots', 'kid_shots'):
        renamed = re.sub(r'^(fid|kid)(\d+k?)?_shots', lambda m: f'{m.group(1)}{num_gen}_shots', name)
    elif spec.kind == 'pr':
        renamed = re.sub(r'^pr\d+k?(?=\d(_full)?$)', f'pr{num_gen}', name)
    else:
        renamed = re.sub(r'^(fid|kid|is)\d+k?', lambda m: f'{m.group(1)}{num_gen}', name)
    new = metric_main.parse_metric(renamed)
    assert new is not None and new.kind == spec.kind and new.num_gen == num_gen, (name, renamed)
    return renamed

def metric_dataset_kwargs(data, training_set_kwargs, G, mirror, labels):
    """Dataset kwargs the metrics compare against.

    Starts from the snapshot's training_set_kwargs (path replaced by --data), or from --data
    alone; resolution and use_labels follow the generator; --mirror sets xflip.
    """
    if data is None and training_set_kwargs is None:
        raise click.UsageError('--data is required: the network file records no training set')
    if training_set_kwargs is not None:
        kwargs = dnnlib.EasyDict(training_set_kwargs)
        if data is not None and os.path.abspath(data) != os.path.abspath(str(kwargs.get('path'))):
            kwargs.path = data
            kwargs.pop('label_file', None)  # the training split's label file belongs to the old path
            kwargs.pop('fname', None)
    else:
        kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data)
    kwargs.setdefault('class_name', 'training.dataset.ImageFolderDataset')
    if not os.path.exists(kwargs.path):
        raise click.UsageError(f'metric dataset not found: "{kwargs.path}"; pass it with --data')
    if G is not None:
        kwargs.resolution = G.img_resolution
        kwargs.use_labels = G.c_dim != 0
    else:
        kwargs.use_labels = False
    if labels is not None:
        kwargs.label_file = labels
    if mirror is not None:
        kwargs.xflip = bool(mirror)
    kwargs.max_size = None
    return kwargs

def load_generator(network, safe):
    """(G_ema, training_set_kwargs) from any network file legacy.py reads."""
    import legacy
    try:
        data = legacy.load_network(network, safe=safe)
    except FileNotFoundError as e:
        raise click.UsageError(f'--network: {e}')
    except (ValueError, IOError) as e:
        raise click.ClickException(f'cannot load --network={network}: {e}')
    return data['G_ema'], data.get('training_set_kwargs')

#----------------------------------------------------------------------------

def run_metrics(rank, args, temp_dir):
    """Compute every metric on one rank (process); rank 0 reports."""
    if args.num_gpus > 1:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        if backend == 'nccl':   # NCCL's barrier and object collectives use the current device, not cuda:0 on every rank
            torch.cuda.set_device(rank)
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        torch.distributed.init_process_group(backend=backend, init_method=f'file://{init_file}',
                                             rank=rank, world_size=args.num_gpus)
    device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
    G = copy.deepcopy(args.G).eval().requires_grad_(False).to(device) if args.G is not None else None
    for metric in args.metrics:
        if rank == 0:
            print(f'Calculating {metric}...')
        result = metric_main.calc_metric(metric=metric, G=G, dataset_kwargs=args.dataset_kwargs,
                                         num_gpus=args.num_gpus, rank=rank, device=device, detector=args.detector,
                                         progress=True if rank == 0 and args.verbose else None,
                                         fake_images=args.images)
        if rank == 0:
            metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network)
    if args.num_gpus > 1:
        # Leave together: a rank exiting with the group alive aborts the other ranks (gloo).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank == 0 and args.verbose:
        print('Exiting...')

def _spawned(rank, args, temp_dir):
    run_metrics(rank, args, temp_dir)

@click.command()
@click.option('--network', 'network', callback=dnnlib.util.expand_user, help='Network file: our snapshot, a stylegan2-ada-pytorch pickle, or the safe export', metavar='PATH|URL')
@click.option('--metrics', 'metrics', help='Comma-separated list of metrics', default='fid50k_full', show_default=True)
@click.option('--data', '--metricdata', 'data', callback=dnnlib.util.expand_user, help='Dataset to compare against [default: the snapshot\'s training set]; '
              '--metricdata is APA\'s spelling', metavar='[ZIP|DIR]')
@click.option('--labels', help='Label file inside the dataset selecting its images (e.g. dataset.json for the full set)', metavar='FILE.json')
@click.option('--mirror', help='Use x-flips of the dataset (legacy metrics only; *_full ignore it)', type=bool, metavar='BOOL')
@click.option('--gpus', 'num_gpus', help='Number of GPUs (processes) to use', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--detector', callback=dnnlib.util.expand_user, help='Inception detector: path or URL (pytorch-fid .pth, NVIDIA TorchScript, any TorchScript extractor)', metavar='PATH|URL')
@click.option('--vgg16', callback=dnnlib.util.expand_user, help='VGG16 detector for precision/recall and PPL: path or URL', metavar='PATH|URL')
@click.option('--images', callback=dnnlib.util.expand_user, help='Folder mode: folder or ZIP of generated images to evaluate instead of --network', metavar='[ZIP|DIR]')
@click.option('--run-dir', 'run_dir', callback=dnnlib.util.expand_user, help='Where to append metric-<name>.jsonl [default: beside --network]', metavar='DIR')
@click.option('--num-gen', 'num_gen', help='Generate N images instead: each metric is computed and written under the '
              'name of that count (fid50k_full -> fidN_full); quick looks', type=click.IntRange(min=2), metavar='N')
@click.option('--safe', help='Refuse network pickles (they can run code); accept only the safe export', is_flag=True)
@click.option('--verbose', type=bool, default=True, is_flag=False, flag_value=True, metavar='BOOL',
              help='Progress bars and messages [default: true]')
@click.option('--quiet', is_flag=True, help='The same as --verbose=false')
def calc_metrics(network, metrics, data, labels, mirror, num_gpus, detector, vgg16, images, run_dir, num_gen, safe, verbose, quiet):
    """Calculate quality metrics (FID, KID, precision/recall, IS, PPL, UTLO shot metrics).

    \b
    Recommended: fid50k_full, kid50k_full, pr50k3_full, ppl2_wend, is50k.
    Small-sample variants for few-shot data: fid5k_full, kid5k_full, fid10k_full, pr5k3_full ...
    Legacy (max N reals, x-flips kept): fid50k, kid50k, pr50k3.
    Long-tail groups (needs lt_dataset.py --shot-labels files): fid_shots, kid_shots.
    Folder mode (--images): FID, KID, PR and IS of existing images; no network needed.
    Detectors: --detector / --vgg16, else downloaded once into $DNNLIB_CACHE_DIR/downloads
    (default ~/.cache/dnnlib); offline, put the file there or pass its path.
    """
    names = parse_metric_list(metrics)
    if num_gen is not None:
        names = [metric_for_count(m, num_gen) for m in names]
    args = dnnlib.EasyDict(metrics=names, num_gpus=num_gpus, network=network,
                           images=images, verbose=verbose and not quiet)
    if network is None and images is None:
        raise click.UsageError('give --network (a trained network) or --images (folder mode)')
    if network is not None and images is not None:
        raise click.UsageError('--network and --images exclude each other: --images evaluates existing images')
    if num_gpus > 1 and torch.cuda.is_available() and num_gpus > torch.cuda.device_count():
        raise click.UsageError(f'--gpus={num_gpus} but only {torch.cuda.device_count()} GPU(s) are visible')
    if images is not None:
        if not os.path.exists(images):
            raise click.UsageError(f'--images: "{images}" does not exist')
        unsupported = [m for m in args.metrics if metric_main.parse_metric(m).kind not in ('fid', 'kid', 'pr', 'is')]
        if unsupported:
            raise click.UsageError(f'folder mode supports FID, KID, precision/recall and IS; not {", ".join(unsupported)}')

    args.G, training_set_kwargs = (None, None) if network is None else load_generator(network, safe)
    needs_data = any(metric_main.parse_metric(m).kind != 'is' for m in args.metrics) or (args.G is not None and args.G.c_dim > 0)
    args.dataset_kwargs = metric_dataset_kwargs(data, training_set_kwargs, args.G, mirror, labels) if needs_data or data else None
    args.detector = {'inception': detector, 'vgg16': vgg16}
    if run_dir is None and network is not None and not dnnlib.util.is_url(network):
        run_dir = os.path.dirname(os.path.abspath(network))
    args.run_dir = run_dir
    if args.verbose:
        print(f'Metric dataset: {args.dataset_kwargs.path if args.dataset_kwargs else "(none)"}')

    try:
        with tempfile.TemporaryDirectory() as temp_dir:
            if num_gpus == 1:
                run_metrics(0, args, temp_dir)
            else:
                torch.multiprocessing.spawn(fn=_spawned, args=(args, temp_dir), nprocs=num_gpus)
    except DetectorError as e:
        raise click.ClickException(f'{e}\n(Inception: --detector=PATH|URL; VGG16: --vgg16=PATH|URL)')
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    calc_metrics()
