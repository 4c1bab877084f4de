"""Packaging tells the truth: pyproject.toml and the requirements files list the same packages,
every console command names a real entry point, and `pip install -e .` in a throwaway venv
installs commands that run."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = tomllib.load(open(os.path.join(ROOT, 'pyproject.toml'), 'rb'))

def _requirements(name):
    lines = [line.split('#')[0].strip() for line in open(os.path.join(ROOT, name), encoding='utf-8')]
    return {_normal(line) for line in lines if line}

def _normal(spec):
    return re.sub(r'\s+', '', spec).replace("'", '"')

def test_requirements_match_pyproject():
    runtime = {_normal(s) for s in PYPROJECT['project']['dependencies'] if not s.startswith('torch')}
    assert _requirements('requirements.txt') == runtime
    extras = {_normal(s) for group in PYPROJECT['project']['optional-dependencies'].values() for s in group}
    assert _requirements('requirements-dev.txt') == extras

def test_console_commands_name_click_commands():
    import click
    for command, target in PYPROJECT['project']['scripts'].items():
        module, attr = target.split(':')
        assert module in PYPROJECT['tool']['setuptools']['py-modules'], command
        entry = getattr(__import__(module), attr)
        assert isinstance(entry, click.Command) or callable(entry), command

@pytest.mark.slow
def test_editable_install_in_a_throwaway_venv(tmp_path):
    """pip install -e (no dependencies: the venv sees this one's packages through a .pth file)."""
    src = tmp_path / 'src'   # a copy: the install writes ldgan.egg-info next to pyproject.toml
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns('.git', '.venv', '__pycache__', '*.egg-info', 'runs', 'out', 'data'))
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    site = subprocess.run([str(venv / 'bin' / 'python'), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, 'parent_env.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    r = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                        '--no-index', '-e', str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for command in PYPROJECT['project']['scripts']:
        assert (venv / 'bin' / command).is_file(), command
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for command, expected in [('ldgan-generate', '--projected-w'), ('ldgan-train', '--wandb')]:
        r = subprocess.run([str(venv / 'bin' / command), '--help'], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0 and expected in r.stdout, r.stdout + r.stderr
