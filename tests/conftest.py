import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope='session')
def digits_root(tmp_path_factory):
    """The digits as PNG files in the ImageFolder layout (real data, written once per session)."""
    from tools.make_digits_dataset import make_digits
    root = str(tmp_path_factory.mktemp('data') / 'digits')
    make_digits(root)
    return root


def digits_overrides(data_root, work_dir):
    """Overrides of a digits config for tests: given data and work dir, random members,
    no loader workers."""
    return [f'train_dataloader.dataset.data_root={data_root}',
           f'val_dataloader.dataset.data_root={data_root}',
           'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
           'train_dataloader.batch_size=32', 'model.random_init=true',
           f'work_dir={work_dir}']


def run_tool(tool, *args, cwd=ROOT, expect_ok=True):
    """Run tools/<tool> as a user would; return the completed process (stdout+stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool), *map(str, args)],
                          cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{tool} {" ".join(map(str, args))} failed:\n{proc.stdout[-6000:]}')
    return proc
