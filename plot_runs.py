"""Draw the training curves of one run directory, or of several side by side to compare them.

    python plot_runs.py runs/00003-mydata-... --out curves-00003.png
    python plot_runs.py runs/00003-* runs/00004-* --out cmp.png

The panels are those of the curves.png each run writes at its snapshots (losses, D's scores,
augmentation p, each plugin's statistics, metrics, against kimg); with several runs every
panel holds one colour per run.
"""

import os

import click

@click.command()
@click.argument('run_dirs', nargs=-1, required=True, metavar='RUN_DIR...')
@click.option('--out', help='Output PNG', default='curves.png', show_default=True, metavar='FILE')
@click.option('--labels', help='Comma-separated legend names, one per run [default: directory names]', metavar='LIST')
def plot_runs(run_dirs, out, labels):
    """Plot the curves of RUN_DIR... (directories written by train.py) into one PNG."""
    from training import curves
    for run_dir in run_dirs:
        if not os.path.isfile(os.path.join(run_dir, 'stats.jsonl')):
            raise click.UsageError(f'{run_dir}: no stats.jsonl here; give run directories written by train.py')
    labels = labels.split(',') if labels else None
    if labels is not None and len(labels) != len(run_dirs):
        raise click.UsageError(f'--labels has {len(labels)} names for {len(run_dirs)} runs')
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException('plot_runs.py needs matplotlib: pip install matplotlib')
    try:
        curves.plot_runs(list(run_dirs), out, labels=labels)
    except ValueError as err:
        raise click.ClickException(str(err))
    print(f'Wrote {out}')

if __name__ == '__main__':
    plot_runs()
