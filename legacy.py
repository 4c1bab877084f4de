"""Network files on the command line: `python legacy.py --source FILE --dest NAME` converts any
network file (our snapshot, a stylegan2-ada-pytorch pickle, the safe format) into the safe
format or into a pickle of our own classes.

The library lives in training/snapshot.py; its loaders are re-exported here under the names
upstream code imports (`legacy.load_network_pkl`) and ours (`legacy.load_network`, ...).
"""

import os
import pickle

import click

import dnnlib
from training.snapshot import (NETWORK_KEYS, InvalidSnapshotError, UnsafeFormatError, export_safe,  # noqa: F401
                               load_network, load_network_pkl, load_safe)

#----------------------------------------------------------------------------
# Command line.

@click.command()
@click.option('--source', callback=dnnlib.util.expand_user, help='Network file to read (pickle, upstream pickle, or safe format; path or URL)', required=True, metavar='PATH')
@click.option('--dest', callback=dnnlib.util.expand_user, help='Output: NAME or NAME.safetensors writes the safe format; NAME.pkl writes a pickle', required=True, metavar='PATH')
@click.option('--force-fp16', help='Rebuild G and D with fp16 in the 4 highest resolutions [default: false]',
              type=bool, default=False, is_flag=False, flag_value=True, metavar='BOOL')
def convert_network(source, dest, force_fp16):
    """Convert a network file into the safe format (or into a pickle of our own classes).

    \b
    python legacy.py --source=network-snapshot-000200.pkl --dest=model
    python legacy.py --source=upstream-ffhq.pkl --dest=ffhq-ours.pkl
    """
    # Import every plugin module first, so that persistent classes a plugin put into G / D (the
    # transfer plugin's embedding) resolve to the live, importable module rather than an anonymous
    # copy of its source, which the safe format could not name. Plain loading (generate.py,
    # calc_metrics.py) needs no plugin code.
    import plugins
    plugins.registry()
    try:
        data = load_network(source, force_fp16=force_fp16)
    except FileNotFoundError as e:
        raise click.UsageError(f'--source: {e}')
    except (ValueError, IOError) as e:
        raise click.ClickException(f'cannot convert --source={source}: {e}')
    if dest.endswith('.pkl'):
        data = {key: data[key] for key in NETWORK_KEYS + ('training_set_kwargs',)}
        with open(dest + '.tmp', 'wb') as f:
            pickle.dump(data, f)
        os.replace(dest + '.tmp', dest)
        print(f'Wrote {dest}')
    else:
        st_path, json_path = export_safe(data, dest)
        print(f'Wrote {st_path} and {json_path}')

if __name__ == '__main__':
    convert_network() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
