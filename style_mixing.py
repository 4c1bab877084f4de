"""Style mixing: rows of seeds take the styles `--styles` (layer indices of w) from columns of seeds.

Writes grid.png (top row: the column seeds' images, left column: the row seeds', each inner
cell the row's w with the column's w in the chosen layers) and every image as ROW-COL.png.

    python style_mixing.py --network=snap.pkl --rows=85,100,75 --cols=55,821 --styles=0-6 --outdir=out
"""

import os

import click
import numpy as np
import torch

import generate

#----------------------------------------------------------------------------

def seed_ws(G, seeds, c, truncation_psi, device):
    """{seed: w [num_ws, w_dim]} through the mapping network (with truncation)."""
    z = torch.cat([generate.seed_latent(seed, G.z_dim) for seed in seeds]).to(device)
    ws = G.mapping(z, c.to(device).expand(len(seeds), -1), truncation_psi=truncation_psi)
    return dict(zip(seeds, ws))

def mixed_w(w_row, w_col, styles):
    """w_row with the layers `styles` replaced by w_col's: [num_ws, w_dim]."""
    w = w_row.clone()
    w[styles] = w_col[styles]
    return w

def mixing_grid(images, rows, cols):
    """{(row, col): uint8 [H, W, C]} (the diagonal keys (s, s) are the seeds' own images) ->
    [(len(rows) + 1) * H, (len(cols) + 1) * W, C] with a black top-left cell."""
    h, w, c = next(iter(images.values())).shape
    grid = np.zeros([(len(rows) + 1) * h, (len(cols) + 1) * w, c], dtype=np.uint8)
    for x, col in enumerate(cols):
        grid[:h, (x + 1) * w:(x + 2) * w] = images[(col, col)]
    for y, row in enumerate(rows):
        grid[(y + 1) * h:(y + 2) * h, :w] = images[(row, row)]
        for x, col in enumerate(cols):
            grid[(y + 1) * h:(y + 2) * h, (x + 1) * w:(x + 2) * w] = images[(row, col)]
    return grid

def parse_styles(value, num_ws):
    """'0-6' -> [0, ..., 6], checked against the network's number of ws."""
    styles = generate.parse_seeds(value)
    bad = [s for s in styles if s >= num_ws]
    if bad:
        raise click.UsageError(f'--styles={value}: this network has {num_ws} ws (layers 0..{num_ws - 1}); '
                               f'{", ".join(map(str, bad))} is out of range')
    return styles

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network', help='Network file (snapshot, stylegan2-ada-pytorch pickle, safe export)', required=True, metavar='PATH|URL')
@click.option('--rows', 'row_seeds', help='Seeds of the rows (they give the styles not in --styles)', required=True)
@click.option('--cols', 'col_seeds', help='Seeds of the columns (they give the styles in --styles)', required=True)
@click.option('--styles', 'col_styles', help='Layers of w taken from the column seed', default='0-6', show_default=True)
@click.option('--trunc', 'truncation_psi', help='Truncation psi', type=float, default=1, show_default=True)
@click.option('--class', 'class_idx', help='Class index (required for conditional networks)', type=int)
@click.option('--noise-mode', help='Noise mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--outdir', help='Where to save the output images', type=str, required=True, metavar='DIR')
@click.option('--safe', help='Refuse network pickles (they can run code); accept only the safe export', is_flag=True)
def generate_style_mix(network, row_seeds, col_seeds, col_styles, truncation_psi, class_idx, noise_mode, outdir, safe):
    """Style-mixing grid: grid.png plus ROW-COL.png for every image in it."""
    rows, cols = generate.parse_seeds(row_seeds), generate.parse_seeds(col_seeds)
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    G = generate.load_generator(network, safe, device)
    styles = parse_styles(col_styles, G.num_ws)
    c = generate.class_label(G, class_idx)
    os.makedirs(outdir, exist_ok=True)

    images = {}
    with torch.no_grad():
        ws = seed_ws(G, list(dict.fromkeys(rows + cols)), c, truncation_psi, device)
        pairs = [(s, s) for s in dict.fromkeys(rows + cols)] + [(r, q) for r in rows for q in cols]
        print(f'Generating {len(pairs)} images...')
        for row, col in pairs:
            w = mixed_w(ws[row], ws[col], styles)
            images[(row, col)] = generate.to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0]
            generate.save_png(images[(row, col)], os.path.join(outdir, f'{row}-{col}.png'))
    generate.save_png(mixing_grid(images, rows, cols), os.path.join(outdir, 'grid.png'))
    print(f'Wrote grid.png and {len(pairs)} images to {outdir}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    generate_style_mix()
