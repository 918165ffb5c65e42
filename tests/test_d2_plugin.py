"""Bi-KD as a detectron2 plug-in: built by detectron2's build_model from a detectron2 config
and loaded by a checkpointer step (build, then load, as detectron2 does), trained by
detectron2's trainer on data in its DatasetCatalog, evaluated by its
SemSegEvaluator and inference_on_dataset; and the suite's SegmentationEvaluator against
detectron2's on the same predictions."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
pytest.importorskip('mmseg')
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

TINY = os.path.join(ROOT, 'configs/ade20k/members/maskformer2_r18_tiny.yaml')


@pytest.fixture(scope='module')
def toy_datasets(tmp_path_factory):
    """The toy scenes in ADE20K's layout, registered in detectron2's catalogs as a detectron2
    user registers a dataset."""
    from detectron2.data.datasets import load_sem_seg
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    from tools.make_ade20k_toy import make_ade20k_toy
    out = str(tmp_path_factory.mktemp('d2') / 'toy')
    make_ade20k_toy(out, n_train=4, n_val=2, size=64)
    root = os.path.join(out, 'ADEChallengeData2016')
    names = {}
    for split, folder in (('train', 'training'), ('val', 'validation')):
        name = f'bikd_toy_{split}_{os.getpid()}'
        images = os.path.join(root, 'images', folder)
        gts = os.path.join(root, 'annotations_detectron2', folder)
        DatasetCatalog.register(name, lambda x=images, y=gts: load_sem_seg(y, x))
        MetadataCatalog.get(name).set(stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:], ignore_label=255,
                                      evaluator_type='sem_seg', image_root=images,
                                      sem_seg_root=gts)
        names[split] = name
    return names


def d2_config(names, arch='D2BiKDMetaArch'):
    """A detectron2 config of a Bi-KD model: the members' data settings from Mask2Former's
    config, ``MODEL.BIKD`` naming the members' own configs."""
    from mask2former_bikd import d2
    from mask2former_bikd.d2_plugin import add_bikd_config
    cfg = d2.load_d2_config(TINY)
    add_bikd_config(cfg)
    cfg.merge_from_list([
        'MODEL.META_ARCHITECTURE', arch, 'MODEL.DEVICE', 'cpu',
        'MODEL.BIKD.MEMBERS', f"['{TINY}', '{TINY}']", 'MODEL.BIKD.NAMES', "['a', 'b']",
        'DATASETS.TRAIN', f"('{names['train']}',)", 'DATASETS.TEST', f"('{names['val']}',)",
        'INPUT.MIN_SIZE_TRAIN', '(64, 80)', 'INPUT.MAX_SIZE_TRAIN', '256',
        'INPUT.CROP.SIZE', '(64, 64)', 'INPUT.SIZE_DIVISIBILITY', '64',
        'INPUT.MIN_SIZE_TEST', '64', 'SOLVER.IMS_PER_BATCH', '2', 'DATALOADER.NUM_WORKERS', '0'])
    return cfg


def built_and_loaded(cfg):
    """detectron2's two steps: build the model, then give it its weights."""
    from detectron2.modeling import build_model

    from mask2former_bikd.d2_plugin import BiKDCheckpointer
    model = build_model(cfg)
    BiKDCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    return model


def test_build_model_builds_bikd_over_official_members(toy_datasets):
    from detectron2.modeling import build_model

    import bikd
    torch.manual_seed(0)
    model = build_model(d2_config(toy_datasets))
    assert type(model).__name__ == 'D2BiKDMetaArch' and isinstance(model.bikd, bikd.BiKDMetaArch)
    assert [m.name for m in model.members] == ['a', 'b']
    assert model.bikd.partition == 'loss' and model.bikd.detach_teacher
    control = build_model(d2_config(toy_datasets, 'D2IndependentMetaArch'))
    assert isinstance(control.bikd, bikd.IndependentMetaArch)
    # built, not loaded: a model whose members have not taken their weights refuses to run
    assert all(m.weights_from is None for m in model.members)
    with pytest.raises(RuntimeError, match='have not taken their weights'):
        model.eval()([dict(image=torch.zeros(3, 64, 64, dtype=torch.uint8), height=64,
                           width=64)])


def test_every_method_argument_is_a_model_bikd_key_and_ties_skip_is_the_authors_rule(
        toy_datasets):
    """MODEL.BIKD has a key for each argument the wrapped methods declare, each reaches the
    core, and ``TIES: skip`` gives a tied sample to nobody (the authors' rule)."""
    from detectron2.modeling import build_model

    import bikd
    from bikd.members import MemberOutput
    from bikd.partition import NO_TEACHER
    from mask2former_bikd.d2_plugin import CORES, method_keys
    cfg = d2_config(toy_datasets)
    for core in CORES:
        assert {k.lower() for k in method_keys(core)} == set(core.result_arguments)
        assert all(key in cfg.MODEL.BIKD for key in method_keys(core))
    assert {'TIES', 'DETACH_STUDENT'} <= set(method_keys(bikd.BiKDMetaArch))
    cfg.merge_from_list(['MODEL.BIKD.TIES', 'skip', 'MODEL.BIKD.TEMPERATURE', '2.0',
                         'MODEL.BIKD.DETACH_TEACHER', 'False', 'MODEL.BIKD.DETACH_STUDENT',
                         'True'])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert {key: getattr(model.bikd, key.lower()) for key in method_keys(bikd.BiKDMetaArch)} \
        == dict(PARTITION='loss', TIES='skip', TEMPERATURE=2.0, DETACH_TEACHER=False,
                DETACH_STUDENT=True)
    # sample 0: both members' losses tie; sample 1: member b's is lower
    outputs = [MemberOutput(loss=torch.tensor(loss), logits=torch.zeros(2, 3))
               for loss in ([0.5, 0.9], [0.5, 0.2])]
    _, teachers = model.bikd.partition_step(outputs)
    assert teachers.tolist() == [NO_TEACHER, 1]
    default = build_model(d2_config(toy_datasets))
    assert default.bikd.partition_step(outputs)[1].tolist() == [1, 1]  # ties: the later one


def test_the_checkpointer_resumes_a_run_without_reading_the_members_files(toy_datasets,
                                                                           tmp_path):
    """A run's checkpoint holds every member: resuming reads none of the members' own files
    (here they do not exist), and gives the saved weights back."""
    from detectron2.modeling import build_model

    from mask2former_bikd.d2_plugin import BiKDCheckpointer
    torch.manual_seed(0)
    first = built_and_loaded(d2_config(toy_datasets))
    BiKDCheckpointer(first, save_dir=str(tmp_path)).save('model_0000009')
    cfg = d2_config(toy_datasets)
    cfg.merge_from_list(['MODEL.BIKD.WEIGHTS', "['/nonexistent/a.pth', '/nonexistent/b.pth']"])
    torch.manual_seed(1)
    again = build_model(cfg)
    BiKDCheckpointer(again, save_dir=str(tmp_path)).resume_or_load('', resume=True)
    assert [m.weights_from for m in again.members] == \
        [f'the checkpoint {tmp_path}/model_0000009.pth'] * 2
    saved, loaded = first.state_dict(), again.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # without a checkpoint to resume, the members take their own files: named when missing
    with pytest.raises(FileNotFoundError, match='/nonexistent/a.pth'):
        BiKDCheckpointer(build_model(cfg), save_dir=str(tmp_path / 'empty')).resume_or_load(
            '', resume=True)


def test_detectrons_trainer_trains_every_member_and_logs_the_partition(toy_datasets):
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from mask2former import MaskFormerSemanticDatasetMapper

    cfg = d2_config(toy_datasets)
    torch.manual_seed(0)
    model = built_and_loaded(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = build_detection_train_loader(cfg, mapper=MaskFormerSemanticDatasetMapper(cfg, True))
    trainer = SimpleTrainer(model, loader, torch.optim.AdamW(model.parameters(), lr=1e-3))
    trainer.train(0, 3)
    after = model.state_dict()
    for i in range(2):
        changed = [k for k in after if k.startswith(f'bikd.members.{i}.') and
                   after[k].is_floating_point() and not torch.equal(after[k], before[k])]
        assert changed, f'member {i} was not updated'
    history = trainer.storage.histories()
    assert {'task_loss/a', 'task_loss/b', 'distill_loss', 'total_loss'} <= set(history)
    shares = [history[f'teacher_share/{m}'].latest() for m in 'ab']
    assert sum(shares) == pytest.approx(1.0)
    # the loss detectron2 sums is the members' task losses plus the distillation term
    data = next(iter(loader))
    model.train()
    losses = model(data)
    assert set(losses) == {'task_loss/a', 'task_loss/b', 'distill_loss'}


def test_inference_on_dataset_scores_every_member_and_the_ensemble(toy_datasets):
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
    from detectron2.modeling import build_model

    from mask2former_bikd.d2_plugin import member_evaluators, results_by_member
    cfg = d2_config(toy_datasets)
    torch.manual_seed(0)
    model = built_and_loaded(cfg).eval()
    name = toy_datasets['val']
    loader = build_detection_test_loader(cfg, name)
    results = inference_on_dataset(
        model, loader, member_evaluators(lambda: SemSegEvaluator(name, distributed=False), model))
    by_member = results_by_member(results)
    assert set(by_member) == {'a', 'b', 'ensemble'}
    for r in by_member.values():
        assert 0 <= r['mIoU'] <= 100 and 0 <= r['pACC'] <= 100
    # the ensemble is the mean of the members' class probabilities
    batch = next(iter(loader))
    with torch.no_grad():
        (out, ) = model(batch)
    members = [r['sem_seg'] for r in out['bikd_members'].values()]
    assert torch.allclose(out['sem_seg'], (members[0] + members[1]) / 2)
    assert out['sem_seg'].shape[-2:] == (batch[0]['height'], batch[0]['width'])


def test_semseg_evaluator_equals_detectrons_on_the_same_predictions(tmp_path):
    """Ignored pixels, classes predicted but absent from the ground truth, classes never
    predicted: the suite's evaluator with miou_over='gt' gives detectron2's mIoU, fwIoU, mACC
    and pACC."""
    from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator

    from mask2former_bikd import SegmentationEvaluator
    rng = np.random.default_rng(0)
    classes, name = 6, f'bikd_eval_{os.getpid()}'
    inputs, gts, preds = [], [], []
    for i in range(3):
        gt = rng.integers(0, 4, (20, 24)).astype(np.uint8)  # classes 4, 5 never occur
        gt[rng.random((20, 24)) < 0.2] = 255  # ignored pixels
        path = str(tmp_path / f'{i}.png')
        Image.fromarray(gt).save(path)
        inputs.append(dict(file_name=path))
        gts.append(torch.from_numpy(gt.astype(np.int64)))
        logits = torch.from_numpy(rng.normal(size=(classes, 20, 24))).float()
        logits[:, gt == 1] += 1.5  # some agreement, and class 4 predicted where absent
        preds.append(logits.softmax(0))
    DatasetCatalog.register(name, lambda: [dict(file_name=x['file_name'],
                                                sem_seg_file_name=x['file_name'])
                                           for x in inputs])
    MetadataCatalog.get(name).set(stuff_classes=[str(c) for c in range(classes)],
                                  ignore_label=255, evaluator_type='sem_seg')
    theirs = D2SemSegEvaluator(name, distributed=False)
    theirs.reset()
    for x, p in zip(inputs, preds):
        theirs.process([x], [dict(sem_seg=p)])
    expected = theirs.evaluate()['sem_seg']
    ours = SegmentationEvaluator(num_classes=classes, miou_over='gt')
    stats = []
    for gt, p in zip(gts, preds):
        stats += ours.sample_stats(p[None, None], dict(data_samples=dict(gt_sem_seg=gt[None])))
    got = ours.summarize(stats, 0)
    for key in ('mIoU', 'fwIoU', 'mACC', 'pACC'):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert (np.argmax(np.stack([p.numpy() for p in preds]), 1) == 4).any()  # predicted, absent
