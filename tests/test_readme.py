"""The README stays true: every `python <script>.py ...` command it shows names an existing
script and only options that script accepts, and the short commands run as written."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')

def readme_commands():
    """Each shell command of the README's ```bash blocks, continuation lines joined."""
    text = open(README, encoding='utf-8').read()
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' #')[0].strip()
            if line and not line.startswith('#'):
                commands.append(line)
    return commands

def python_invocations():
    """(script, args) for every `python X.py ...` and `torchrun ... X.py ...` in the README."""
    result = []
    for command in readme_commands():
        for part in command.split('&&'):
            words = shlex.split(part)
            scripts = [i for i, w in enumerate(words) if w.endswith('.py')]
            if words and words[0] in ('python', 'torchrun') and scripts:
                i = scripts[0]
                result.append((words[i], words[i + 1:]))
    return result

def click_command(script):
    folder, name = os.path.split(script)
    sys.path.insert(0, os.path.join(ROOT, folder))
    module = __import__(name[:-3])
    if script == 'train.py':
        return module.build_cli()
    return [obj for obj in vars(module).values() if obj.__class__.__module__.startswith('click') and hasattr(obj, 'params')][0]

def test_readme_python_commands_use_existing_scripts_and_options():
    invocations = python_invocations()
    assert len(invocations) >= 25
    for script, args in invocations:
        assert os.path.isfile(os.path.join(ROOT, script)), script
        known = {opt for param in click_command(script).params for opt in param.opts + param.secondary_opts}
        for arg in args:
            if arg.startswith('--'):
                assert arg.split('=')[0] in known, f'README: {script} has no option {arg}'

def run(args, cwd):
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout

@pytest.mark.slow
def test_readme_short_commands_run_as_written(tmp_path):
    """The demo dataset, the tiny CPU run, generate, the safe export and loading it with --safe."""
    commands = [shlex.split(c) for c in readme_commands() if c.startswith('python ')]
    def find(*needles):
        return next(c[1:] for c in commands if all(n in c for n in needles))
    def in_root(args):
        return [os.path.join(ROOT, args[0]), *args[1:]]

    run(in_root(find('--source=builtin:shapes')), cwd=tmp_path)
    assert (tmp_path / 'data' / 'shapes-32.zip').is_file()
    run(in_root(find('--cfg=tiny', '--kimg=2')), cwd=tmp_path)
    run_dirs = sorted((tmp_path / 'runs').iterdir())
    snapshots = sorted(run_dirs[-1].glob('network-snapshot-*.pkl'))
    assert snapshots[-1].name == 'network-snapshot-000002.pkl'

    # The network paths in the README are examples: substitute the snapshot just trained.
    def with_network(args, network):
        return [re.sub(r'^(--(?:network|source))=.*', rf'\1={network}', a) for a in args]
    run(in_root(with_network(find('generate.py', '--seeds=0-63', '--grid'), snapshots[-1])), cwd=tmp_path)
    assert len(list((tmp_path / 'out').glob('seed*.png'))) == 64 and (tmp_path / 'out' / 'grid.png').is_file()
    run(in_root(with_network(find('legacy.py', '--dest=models/c10'), snapshots[-1])), cwd=tmp_path)
    run(in_root(find('generate.py', '--safe')), cwd=tmp_path)
    assert len(list((tmp_path / 'out').glob('seed*.png'))) == 64
