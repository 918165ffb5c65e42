"""The README's example of a new member (one file, classification_bikd/torchvision_member.py):
a torchvision classifier trains with a timm member through train_net and exports."""
import json
import os

import torch

from conftest import ROOT, digits_overrides, run_tool

CONFIG = '''_base_: {base}
model:
  members:
    - {{type: TimmMember, name: resnet, model_name: resnet10t, num_classes: 10,
       input_size: [32, 32]}}
    - {{type: TorchvisionMember, name: mobilenet, arch: mobilenet_v3_small, num_classes: 10,
       input_size: [32, 32]}}
train_cfg: {{max_epochs: 1, val_interval: 1}}
'''


def test_torchvision_member_trains_beside_a_timm_member_and_exports(digits_root, tmp_path):
    config = tmp_path / 'tv_bikd.yaml'
    config.write_text(CONFIG.format(base=os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')))
    work = tmp_path / 'run'
    run_tool('train_net.py', '--config-file', config, *digits_overrides(digits_root, work),
             'train_dataloader.batch_size=64')
    summary = json.loads((work / 'summary.json').read_text())
    assert set(summary['members']) == {'resnet', 'mobilenet'}
    assert sum(summary['teacher_share'].values()) > 0.99
    out = tmp_path / 'export'
    run_tool('export_members.py', '--config-file', config, '--output-dir', out,
             f'work_dir={work}', 'model.random_init=true')
    info = json.loads((out / 'mobilenet.json').read_text())
    assert info['format'] == 'torchvision' and info['arch'] == 'mobilenet_v3_small'
    # what the description says loads the weights into torchvision's own model
    import torchvision
    model = torchvision.models.get_model('mobilenet_v3_small', **info['model_kwargs'])
    model.load_state_dict(torch.load(out / info['checkpoint'], weights_only=True))
    assert model.classifier[-1].out_features == 10
