"""tools/find_partners.py on the digits pool: every number of its table is recomputed from
the per-sample outcomes it writes, and a copy of the target adds nothing and ranks last."""
import csv
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, run_tool

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')


@pytest.fixture(scope='module')
def partners(digits_root, tmp_path_factory):
    """The demo's four members (random weights of their own, and saved as checkpoints so that
    the pool can name them) and a copy of the target planted in the pool."""
    import classification_bikd  # noqa: F401
    from bikd.method.meta_arch import build_member
    tmp = tmp_path_factory.mktemp('partners')
    pool = []
    for seed, (name, arch) in enumerate([('resnet', 'resnet10t'), ('convnext', 'convnext_atto'),
                                         ('regnet', 'regnetx_002'),
                                         ('mobilenet', 'mobilenetv3_small_100')]):
        torch.manual_seed(seed)
        member = build_member(dict(type='TimmMember', name=name, model_name=arch,
                                   num_classes=10, input_size=[32, 32], pretrained=False))
        member.export(str(tmp), name)
        if name not in ('resnet', 'convnext'):
            pool.append(dict(type='TimmMember', name=name, model_name=arch, num_classes=10,
                             input_size=[32, 32], checkpoint=str(tmp / f'{name}.pth')))
    pool.append(dict(type='TimmMember', name='resnet_copy', model_name='resnet10t',
                     num_classes=10, input_size=[32, 32], checkpoint=str(tmp / 'resnet.pth')))
    # a model of the pool not made yet (as after `make demo`, before the K-way demo)
    pool.append(dict(type='TimmMember', name='ghost', model_name='resnet10t', num_classes=10,
                     input_size=[32, 32], checkpoint=str(tmp / 'not_made_yet.pth')))
    (tmp / 'pool.yaml').write_text(yaml.safe_dump(pool))
    out = tmp / 'out'
    data = [f'val_dataloader.dataset.data_root={digits_root}', 'val_dataloader.num_workers=0',
            f'model.members.0.checkpoint={tmp / "resnet.pth"}',
            f'model.members.1.checkpoint={tmp / "convnext.pth"}']
    proc = run_tool('find_partners.py', '--config-file', CONFIG, '--target', 'resnet',
                    '--pool', tmp / 'pool.yaml', '--k', 3, '--output-dir', out, *data)
    with open(out / 'partners.csv') as f:
        rows = list(csv.DictReader(f))
    return out, rows, proc.stdout


def test_the_table_is_computed_from_the_per_sample_outcomes(partners):
    out, rows, stdout = partners
    samples = np.load(out / 'per_sample.npz')
    target = samples['correct/resnet']
    assert len(target) == 539
    assert 100 * target.mean() == pytest.approx(float(rows[0]['target']))
    for r in rows:
        cand = samples[f'correct/{r["candidate"]}']
        assert float(r['own']) == pytest.approx(100 * cand.mean())
        assert float(r['adds']) == pytest.approx(np.mean(cand & ~target))
        assert float(r['takes']) == pytest.approx(np.mean(target & ~cand))
        # the candidate teaches where its loss is lower or equal (it is second in the pair)
        loss_t, loss_c = samples['loss/resnet'], samples[f'loss/{r["candidate"]}']
        assert float(r['teaches']) == pytest.approx(np.mean(loss_c <= loss_t))
        assert float(r['gap']) == pytest.approx(float(r['ensemble']) - float(r['target']))
    # the ranking follows what the candidates add, then the ensemble gap
    keys = [(-float(r['adds']), -float(r['gap'])) for r in rows]
    assert keys == sorted(keys) and [int(r['rank']) for r in rows] == [1, 2, 3, 4]
    assert f'| 1 | {rows[0]["candidate"]} |' in stdout


def test_a_copy_of_the_target_adds_nothing_and_ranks_last(partners):
    out, rows, _ = partners
    copy = rows[-1]
    assert copy['candidate'] == 'resnet_copy'
    assert float(copy['adds']) == 0 and float(copy['takes']) == 0 and float(copy['gap']) == 0
    assert float(copy['teaches']) == 1.0  # exact ties go to the later member (Eq. 3)
    assert all(float(r['adds']) > 0 for r in rows[:-1])


def test_ready_configs_name_the_chosen_members(partners):
    out, rows, _ = partners
    from bikd.engine import load_config
    pair = load_config(str(out / f'bikd_resnet_{rows[0]["candidate"]}.yaml'))
    assert [m.name for m in pair.model.members] == ['resnet', rows[0]['candidate']]
    assert pair.model.type == 'BiKDMetaArch'
    kway = load_config(str(out / 'bikd_kway.yaml'))
    names = [m.name for m in kway.model.members]
    assert len(names) == 3 and names[0] == 'resnet' and names[1] == rows[0]['candidate']
    assert (out / 'partners.png').stat().st_size > 0 and (out / 'partners.md').is_file()


def test_a_pool_model_not_made_yet_is_left_out_saying_so(partners):
    out, rows, stdout = partners
    assert f'left out ghost of ' in stdout and 'not_made_yet.pth does not exist here' in stdout
    assert 'ghost' not in {r['candidate'] for r in rows} and len(rows) == 4


@pytest.mark.parametrize('args, message', [
    (['model.members.0.checkpoint=/nowhere/resnet.pth'], '/nowhere/resnet.pth'),
    (['val_dataloader.batchsize=4'], "val_dataloader.batchsize is not an argument of "
                                     "DataLoader; did you mean 'batch_size'?"),
    (['--target', 'nobody'], "--target 'nobody' is not a member of the config"),
])
def test_input_errors_are_one_line_and_exit_status_2(args, message, tmp_path):
    target = [] if '--target' in args else ['--target', 'resnet']
    proc = run_tool('find_partners.py', '--config-file', CONFIG, *target, '--output-dir',
                    tmp_path / 'out', *args, expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert message in proc.stdout and 'Traceback' not in proc.stdout
