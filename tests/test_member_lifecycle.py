"""The lifecycle every member shares through its base class: built, then loaded (a constructor
reads no weights; one explicit step takes them, in one order of precedence), and an export
that its own ``checkpoint`` argument loads back."""
import json
import os

import pytest
import torch

import classification_bikd  # noqa: F401  (registers the classification members)
import saliency_bikd  # noqa: F401  (registers the saliency members)
from bikd import Member
from bikd.members.loading import take_weights
from bikd.method.meta_arch import build_member
from bikd.registry import MEMBERS
from conftest import ROOT, TINY_VIT

TINY_SWIN = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=[2, 4, 4],
                 decoder_channels=8)
#: one small config per member type; every registered type must appear here
MEMBER_CONFIGS = {
    'TimmMember': TINY_VIT,
    'TorchvisionMember': dict(type='TorchvisionMember', arch='mobilenet_v3_small',
                              num_classes=5, input_size=[32, 32]),
    'DinoV2LinearMember': dict(type='DinoV2LinearMember', layers=1, num_classes=5,
                               input_size=[28, 28], model_kwargs=dict(depth=1)),
    'TMFINetMember': dict(type='TMFINetMember', input_size=[32, 64], arch=TINY_SWIN),
    'ViNetSMember': dict(type='ViNetSMember'),
    'ViNetAMember': dict(type='ViNetAMember', input_size=[32, 56],
                         arch=dict(width=8, layers=[1, 1, 1, 1], decoder_groups=4)),
    'MMSegMask2FormerMember': dict(type='MMSegMask2FormerMember',
                                   config=os.path.join(ROOT, 'configs/ade20k/members/'
                                                              'mask2former_r18_tiny.py')),
    'MMSegDecodeHeadMember': dict(type='MMSegDecodeHeadMember',
                                  config=os.path.join(ROOT, 'configs/ade20k/members/'
                                                             'upernet_r18_tiny.py')),
    'Mask2FormerMember': dict(type='Mask2FormerMember',
                              config=os.path.join(ROOT, 'configs/ade20k/members/'
                                                         'maskformer2_r18_tiny.yaml')),
    # ``model``: a save_pretrained folder the test writes (tests/test_transformers_members.py)
    'TransformersClassifierMember': dict(type='TransformersClassifierMember', model='tiny_vit'),
    'TransformersSegmentationMember': dict(type='TransformersSegmentationMember',
                                           model='tiny_segformer'),
}
MMSEG = ('MMSegMask2FormerMember', 'MMSegDecodeHeadMember', 'Mask2FormerMember',
         'TransformersSegmentationMember')


def registered_member_types():
    try:
        import mask2former_bikd  # noqa: F401  (registers the mmseg members)
    except ImportError:
        pass
    return sorted(k for k, v in MEMBERS.module_dict.items() if isinstance(v, type))


def member_config(kind, tmp_path):
    """MEMBER_CONFIGS[kind] named 'm'; a Hugging Face member's folder is written first."""
    cfg = dict(MEMBER_CONFIGS[kind], name='m')
    if kind.startswith('Transformers'):
        pytest.importorskip('transformers')
        import test_transformers_members as hf
        getattr(hf, cfg['model'])(str(tmp_path / 'source'))
        cfg['model'] = str(tmp_path / 'source')
    return cfg


def test_every_registered_member_type_is_covered_here():
    registered = set(registered_member_types()) - {'MMSegMember'}  # builds one of its kinds
    assert registered <= set(MEMBER_CONFIGS), registered - set(MEMBER_CONFIGS)


@pytest.mark.parametrize('kind', sorted(MEMBER_CONFIGS))
def test_export_is_what_checkpoint_loads_back(kind, tmp_path):
    if kind in MMSEG:
        pytest.importorskip('mmseg')
        import mask2former_bikd  # noqa: F401
    if kind == 'Mask2FormerMember':
        pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    cfg = member_config(kind, tmp_path)
    torch.manual_seed(0)
    first = build_member(dict(cfg, pretrained=False))
    assert first.weights_from == 'random initialisation'  # nothing to take: ready as built
    info = first.export(str(tmp_path), 'm')
    # the description names every file it wrote, and the files are there
    assert json.loads((tmp_path / 'm.json').read_text()) == json.loads(json.dumps(info))
    assert info['member'] == 'm' and info['format'] == type(first).export_format
    for key in ('checkpoint', 'config', 'head'):
        if key in info:
            assert (tmp_path / info[key]).exists(), key  # a file, or a save_pretrained folder
    extra = dict(head_file=str(tmp_path / info['head'])) if 'head' in info else {}
    torch.manual_seed(1)  # another random initialisation, replaced by the checkpoint
    exported = str(tmp_path / info['checkpoint'])  # a file, or a save_pretrained folder
    again = build_member(dict(cfg, pretrained=False, checkpoint=exported, **extra))
    assert again.weights_from is None  # built, not loaded
    assert again.take_weights() == again.weights_from == exported
    ours, theirs = first.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


class Recorder(Member):
    """A member that records which weight source its lifecycle used."""

    def __init__(self, name='r', **kwargs):
        super().__init__(name, **kwargs)
        self.net = torch.nn.Linear(2, 2)
        self.calls = []

    @property
    def weights_module(self):
        return self.net

    def load_pretrained(self):
        self.calls.append('pretrained')
        return 'the release'


def test_weights_are_taken_once_in_the_order_checkpoint_pretrained_random(tmp_path):
    path = tmp_path / 'w.pth'
    torch.save({'weight': torch.ones(2, 2), 'bias': torch.zeros(2)}, path)
    m = Recorder(checkpoint=str(path))  # the checkpoint wins over pretrained=True
    assert m.calls == [] and m.weights_from is None
    assert m.take_weights() == str(path) and m.calls == []
    assert torch.equal(m.net.weight, torch.ones(2, 2))
    m = Recorder()
    assert m.calls == [] and m.weights_from is None
    assert m.take_weights() == 'the release' and m.calls == ['pretrained']
    m = Recorder(pretrained=False)
    assert m.calls == [] and m.weights_from == 'random initialisation'
    assert m.take_weights() == 'random initialisation' and m.calls == []


@pytest.mark.parametrize('kind', sorted(MEMBER_CONFIGS))
def test_a_constructor_reads_no_weights(kind, tmp_path):
    """Every member type builds with checkpoint (and a DINOv2 head) naming files that do not
    exist: nothing is read until the weight step, which names the missing file."""
    if kind in MMSEG:
        pytest.importorskip('mmseg')
        import mask2former_bikd  # noqa: F401
    if kind == 'Mask2FormerMember':
        pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    missing = str(tmp_path / 'nowhere.pth')
    extra = dict(head_file=missing) if kind == 'DinoV2LinearMember' else {}
    member = build_member(dict(member_config(kind, tmp_path), checkpoint=missing, **extra))
    assert member.weights_from is None
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        member.take_weights()


def test_a_checkpoint_that_does_not_fit_names_member_file_and_keys(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'weight': torch.ones(3, 2)}, path)
    with pytest.raises(RuntimeError, match=r"(?s)checkpoint .*other.pth does not fit the model "
                                           r"for member 'r'.*missing keys: bias.*shape "
                                           r'mismatches: weight'):
        Recorder(checkpoint=str(path)).take_weights()


def test_a_model_takes_its_members_weights_in_one_step(tmp_path):
    """The meta-architecture's weight step: the builder's (train_net), or mmengine's
    init_weights; a model whose members were never given their weights refuses to run."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope

    from conftest import batch, tiny
    init_default_scope('bikd')
    source = build_member(tiny('a'))
    source.export(str(tmp_path), 'a')
    path = str(tmp_path / 'a.pth')
    members = [tiny('a', checkpoint=path), tiny('b')]
    images, samples = batch()
    data = dict(inputs=images, data_samples=samples)

    model = MODELS.build(dict(type='BiKDMetaArch', members=members))
    wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                              optimizer=dict(type='Adam', lr=1e-3)))
    with pytest.raises(RuntimeError, match=r"members \['a'\] have not taken their weights"):
        model.train_step(data, wrapper)
    model.init_weights()  # what mmengine's Runner.train calls before load_from / resume
    assert [m.weights_from for m in model.members] == [path, 'random initialisation']
    assert torch.equal(model.members[0].model.head.weight, source.model.head.weight)
    model.train_step(data, wrapper)

    # random_init: nothing is read (the file could be gone)
    os.remove(path)
    model = MODELS.build(dict(type='BiKDMetaArch', members=members, random_init=True))
    assert take_weights(model) == {'a': 'random initialisation (random_init)',
                                    'b': 'random initialisation (random_init)'}
    # a runner checkpoint that will load every member: nothing is read either
    model = MODELS.build(dict(type='BiKDMetaArch', members=members))
    assert take_weights(model, 'run.pth')['a'] == 'the checkpoint run.pth'
    # a member's file that is not there: the error names the member and its config key
    model = MODELS.build(dict(type='BiKDMetaArch', members=members))
    with pytest.raises(FileNotFoundError, match=r"^model\.members\.0\.checkpoint \(member "
                                                r"'a'\): checkpoint file not found: "):
        take_weights(model)
