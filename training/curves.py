"""Training curves as a picture: the run directory's curves.png (drawn at every snapshot) and
plot_runs.py's comparison of several runs. Everything is read back from the run directory
(stats.jsonl, metric-*.jsonl), so a finished, running or copied run draws the same way.

Panels: G and D losses, regularisation, D's mean scores, E[sign D(x)] (ADA's overfitting
heuristic), augmentation p, speed, one panel per statistic a plugin reports under its own
prefix (ReGAN/, Lottery/, APA/, ...), one per metric; x is kimg.
"""

import glob
import json
import os
import re

import numpy as np

#----------------------------------------------------------------------------
# Reading a run.

def read_stats(run_dir):
    """{name: (kimg [T], mean [T])} from stats.jsonl (ticks where a statistic was not reported are skipped)."""
    series = {}
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(path):
        return series
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                tick = json.loads(line)
            except ValueError:   # a line cut short by a killed run
                continue
            kimg = tick.get('Progress/kimg', {}).get('mean')
            if kimg is None:
                continue
            for name, value in tick.items():
                if isinstance(value, dict) and value.get('mean') is not None and value.get('num', 1) > 0:
                    series.setdefault(name, ([], []))
                    series[name][0].append(kimg)
                    series[name][1].append(value['mean'])
    return {name: (np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)) for name, (x, y) in series.items()}

def read_metrics(run_dir):
    """{result name: (kimg [K], value [K])} from metric-*.jsonl; kimg from the snapshot's file name."""
    series = {}
    for path in sorted(glob.glob(os.path.join(run_dir, 'metric-*.jsonl'))):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                m = re.search(r'network-snapshot-(\d+)\.pkl', str(entry.get('snapshot_pkl')))
                if m is None:
                    continue
                for name, value in entry.get('results', {}).items():
                    if isinstance(value, (int, float)):
                        series.setdefault(name, ([], []))
                        series[name][0].append(int(m.group(1)))
                        series[name][1].append(value)
    return {name: (np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)) for name, (x, y) in series.items()}

#----------------------------------------------------------------------------
# Which statistic goes into which panel.

FIXED_PANELS = [   # (title, name pattern)
    ('G and D losses', r'Loss/[GD]/loss(_uc)?$'),
    ('regularisation', r'Loss/([GD]/reg|pl_penalty)$'),
    ("D's mean score (real / fake)", r'Loss/scores/'),
    ('E[sign D(x)] (ADA heuristic)', r'Loss/signs/'),
    ('augmentation p', r'Progress/augment$'),
    ('sec / kimg', r'Timing/sec_per_kimg$'),
]
CORE_PREFIXES = ('Loss', 'Progress', 'Timing', 'Resources')

def panel_layout(stat_names, metric_names):
    """[(title, [(name, is_part)], source)]: source 'stats' or 'metrics'; is_part marks per-layer
    lines (e.g. ReGAN/sparsity/<layer> beside ReGAN/sparsity) drawn thin and left out of the legend."""
    panels = []
    for title, pattern in FIXED_PANELS:
        names = sorted(n for n in stat_names if re.match(pattern, n))
        if names:
            panels.append((title, [(n, False) for n in names], 'stats'))
    groups = {}
    for name in sorted(stat_names):
        parts = name.split('/')
        if parts[0] in CORE_PREFIXES or len(parts) < 2:
            continue
        groups.setdefault('/'.join(parts[:2]), []).append(name)
    for key, names in groups.items():
        has_total = key in names
        panels.append((key, [(n, has_total and n != key) for n in names], 'stats'))
    for name in sorted(metric_names):
        panels.append((f'metric {name}', [(name, False)], 'metrics'))
    return panels

#----------------------------------------------------------------------------
# Drawing.

LINESTYLES = ['-', '--', ':', '-.']

def plot_runs(run_dirs, out_path, labels=None, columns=3):
    """Draw the panels of one or more runs into out_path (PNG). Several runs share each panel,
    one colour per run; a panel's statistics differ by line style. Returns out_path."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    labels = labels or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    runs = [dict(stats=read_stats(d), metrics=read_metrics(d)) for d in run_dirs]
    stat_names = set().union(*[r['stats'] for r in runs])
    metric_names = set().union(*[r['metrics'] for r in runs])
    panels = panel_layout(stat_names, metric_names)
    if not panels:
        raise ValueError(f'nothing to plot: no stats.jsonl or metric-*.jsonl with data in {", ".join(run_dirs)}')
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.2 * rows), squeeze=False)
    run_colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, (title, names, source) in zip(axes.flat, panels):
        labelled = set()
        for r, run in enumerate(runs):
            main = -1
            for name, is_part in names:
                main += not is_part   # a statistic keeps its line style in every run
                if name not in run[source]:
                    continue
                x, y = run[source][name]
                if is_part:
                    if len(runs) == 1:
                        ax.plot(x, y, color='0.75', linewidth=0.6, zorder=1)
                    continue
                if len(runs) == 1:
                    style = dict(color=run_colors[main % len(run_colors)])
                else:
                    style = dict(color=run_colors[r % len(run_colors)], linestyle=LINESTYLES[main % len(LINESTYLES)])
                ax.plot(x, y, marker='o' if source == 'metrics' or len(x) < 3 else None, markersize=3, zorder=2,
                        label=None if name in labelled else _short(name, title), **style)
                labelled.add(name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('kimg', fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and len([n for n, part in names if not part]) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis('off')
    if len(runs) > 1:
        handles = [plt.Line2D([], [], color=run_colors[r % len(run_colors)]) for r in range(len(runs))]
        fig.legend(handles, labels, loc='upper center', ncol=min(len(runs), 4), fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * rows)))
    else:
        fig.suptitle(labels[0], fontsize=11)
        fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path

def _short(name, title):
    """Legend text: the statistic's name without the panel's common prefix."""
    return name[len(title) + 1:] if name.startswith(title + '/') else name

def save_curves(run_dir):
    """Redraw <run_dir>/curves.png; returns its path, or None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return plot_runs([run_dir], os.path.join(run_dir, 'curves.png'))
