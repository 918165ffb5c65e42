"""Bad input gets an error that names what is wrong."""
import os

import pytest
import torch

import classification_bikd  # noqa: F401
from bikd import BiKDMetaArch
from bikd.errors import UserError
from classification_bikd import ImageFolderDataset, TimmMember
from conftest import ROOT, digits_overrides, run_tool

TINY = dict(type='TimmMember', model_name='resnet10t', pretrained=False, num_classes=10,
            input_size=[32, 32])


def test_unknown_member_type():
    with pytest.raises(UserError, match='NoSuchMember.*TimmMember'):
        BiKDMetaArch([TINY, dict(type='NoSuchMember')])


def test_members_with_different_class_counts():
    with pytest.raises(ValueError, match=r"'a': 10, 'b': 7"):
        BiKDMetaArch([{**TINY, 'name': 'a'}, {**TINY, 'name': 'b', 'num_classes': 7}])


def test_duplicate_member_names():
    with pytest.raises(ValueError, match='resnet10t'):
        BiKDMetaArch([TINY, TINY])


def test_one_member_is_not_bikd():
    with pytest.raises(ValueError, match='at least 2 members'):
        BiKDMetaArch([TINY])


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere' / 'train')):
        ImageFolderDataset(str(tmp_path / 'nowhere'), 'train')


def test_unreadable_image_names_its_path(tmp_path):
    folder = tmp_path / 'train' / 'cat'
    folder.mkdir(parents=True)
    bad = folder / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    ds = ImageFolderDataset(str(tmp_path), 'train', transform=dict(input_size=32))
    with pytest.raises(OSError, match=str(bad)):
        ds[0]


def test_truncated_image_names_its_path(tmp_path, digits_root):
    folder = tmp_path / 'val' / '3'
    folder.mkdir(parents=True)
    src = next(p for p in sorted(os.listdir(os.path.join(digits_root, 'val', '3'))))
    data = open(os.path.join(digits_root, 'val', '3', src), 'rb').read()
    (folder / 'cut.png').write_bytes(data[:len(data) // 2])
    ds = ImageFolderDataset(str(tmp_path), 'val', transform=dict(input_size=32))
    with pytest.raises(OSError, match='cut.png'):
        ds[0]


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(TimmMember('resnet10t', pretrained=False, num_classes=10).model.state_dict(), path)
    with pytest.raises(RuntimeError, match=r"(?s)other\.pth.*'vit'.*missing keys: .*unexpected keys"):
        TimmMember('vit_tiny_patch16_224', name='vit', num_classes=10,
                   checkpoint=str(path)).take_weights()


def test_checkpoint_with_python_objects_is_refused(tmp_path):
    path = tmp_path / 'pickled.pth'
    model = TimmMember('resnet10t', pretrained=False, num_classes=10).model
    torch.save({'state_dict': model.state_dict(), 'extra': ValueError('x')}, path)
    with pytest.raises(RuntimeError, match='refusing to load .*trust_checkpoint'):
        TimmMember('resnet10t', num_classes=10, checkpoint=str(path)).take_weights()
    TimmMember('resnet10t', num_classes=10, checkpoint=str(path),
               trust_checkpoint=True).take_weights()


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pth'):
        TimmMember('resnet10t', num_classes=10,
                   checkpoint=str(tmp_path / 'nothere.pth')).take_weights()


def test_a_misspelt_config_file_is_named_with_the_nearest_ones(monkeypatch):
    """A misspelt file name or folder: the error suggests the shipped configs it is near;
    nothing is suggested for a name near none."""
    from bikd.engine.config import check_config_path
    monkeypatch.chdir(ROOT)
    for typo in ('configs/digits/resnet_convnxt_bikd.yaml',
                 'configs/digit/resnet_convnext_bikd.yaml'):
        with pytest.raises(FileNotFoundError, match=rf'config file not found: {typo}; did you '
                                                    r'mean configs/digits/resnet_convnext_bikd'
                                                    r'\.yaml\b'):
            check_config_path(typo)
    with pytest.raises(FileNotFoundError, match=r'not found: configs/digits/zzz\.yaml$'):
        check_config_path('configs/digits/zzz.yaml')


def test_train_net_reports_missing_data_folder(tmp_path):
    proc = run_tool('train_net.py', '--config-file',
                    os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
                    *digits_overrides(str(tmp_path / 'no_digits'), str(tmp_path / 'w')),
                    expect_ok=False)
    assert proc.returncode != 0
    assert f'dataset folder not found: {tmp_path / "no_digits" / "train"}' in proc.stdout


@pytest.mark.parametrize('override, message', [
    ('trian_cfg.max_epochs=2', "unknown top-level key 'trian_cfg'; did you mean 'train_cfg'?"),
    ('model.temprature=2', "model.temprature is not an argument of BiKDMetaArch; did you mean "
                           "'temperature'?"),
    ('model.members.1.chekpoint=x.pth', "model.members.1.chekpoint is not an argument of "
                                        "TimmMember; did you mean 'checkpoint'?"),
])
def test_misspelt_config_key_is_named_with_the_closest_valid_one(tmp_path, override, message):
    proc = run_tool('train_net.py', '--config-file',
                    os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
                    *digits_overrides(str(tmp_path / 'digits'), str(tmp_path / 'w')), override,
                    expect_ok=False)
    assert proc.returncode != 0
    assert message in proc.stdout
    assert not (tmp_path / 'w').exists()  # refused before anything was written


def test_generated_data_made_with_other_settings_is_refused_or_remade(tmp_path):
    """The demos' data makers reuse data made with the same settings, refuse data made with
    others (naming the difference), and make it again with force."""
    from tools.make_dhf1k_toy import make_dhf1k_toy
    out = str(tmp_path / 'toy')
    made = make_dhf1k_toy(out, n_train=1, n_val=1, n_frames=3, size=(8, 8))
    stamp = os.path.getmtime(os.path.join(out, 'toy.json'))
    assert make_dhf1k_toy(out, n_train=1, n_val=1, n_frames=3, size=(8, 8)) == made
    assert os.path.getmtime(os.path.join(out, 'toy.json')) == stamp  # not written again
    with pytest.raises(ValueError, match=r"other settings \(frames: 3 there, 4 asked\); pass "
                                         r'--force'):
        make_dhf1k_toy(out, n_train=1, n_val=1, n_frames=4, size=(8, 8))
    again = make_dhf1k_toy(out, n_train=1, n_val=1, n_frames=4, size=(8, 8), force=True)
    assert again['frames'] == 4 and len(os.listdir(os.path.join(out, 'train', '0001',
                                                                 'images'))) == 4
