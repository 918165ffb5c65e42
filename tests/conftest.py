import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import classification_bikd  # noqa: E402,F401  (registers TimmMember for the helpers below)


@pytest.fixture(scope='session', autouse=True)
def engine():
    """The suite's changes to mmengine, as the entry points (train_net, export) apply them."""
    from bikd.engine import setup_engine
    setup_engine()


#: a ViT of one block on 16x16 images, 5 classes: the tests' small classification member
TINY_VIT = dict(type='TimmMember', model_name='vit_tiny_patch16_224', pretrained=False,
                num_classes=5, input_size=[16, 16],
                model_kwargs=dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2))


def tiny(name, **kw):
    """The config of a tiny classification member named ``name``."""
    return {**TINY_VIT, 'name': name, **kw}


def batch(n=8, classes=5, seed=0):
    """``n`` random uint8 images 20x20 and labels, as the classification loader gives them."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=g)
    return images, dict(label=torch.randint(0, classes, (n, ), generator=g))


def seg_batch(n, size=64, seed=0):
    """``n`` random images and mmseg data samples with labels 0..5, as mmseg's loader gives
    them."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
              for _ in range(n)]
    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 6, (1, size, size), generator=g))
        samples.append(s)
    return inputs, samples


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


def run_tool(tool, *args, cwd=ROOT, expect_ok=True, env=None):
    """Run tools/<tool> as a user would (``env``: more environment variables); return the
    completed process (stdout+stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool), *map(str, args)],
                          cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{tool} {" ".join(map(str, args))} failed:\n{proc.stdout[-6000:]}')
    return proc
