"""Panoptic and instance segmentation on the official Mask2Former: data read as detectron2
registers ADE20K's panoptic layout and mapped by Mask2Former's own mappers, per-image losses
equal to the official training loss, inference equal to the official model's, detectron2's
evaluators wired per member (PQ of predictions equal to the ground truth is 100), Bi-KD steps
that move both members, the export and lean mode, and bad annotations named."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
pytest.importorskip('panopticapi', reason='panopticapi is not installed (make d2)')
from mask2former_bikd import Detectron2Dataset, Detectron2Metric, Mask2FormerMember  # noqa: E402
from mask2former_bikd import d2, detectron2_collate  # noqa: E402

MEMBERS = os.path.join(ROOT, 'configs/ade20k_panoptic/members')
PANOPTIC = os.path.join(MEMBERS, 'maskformer2_r18_tiny.yaml')
WIDE = os.path.join(MEMBERS, 'maskformer2_r18_wide.yaml')
INSTANCE = os.path.join(MEMBERS, 'maskformer2_r18_tiny_instance.yaml')


@pytest.fixture(scope='session')
def toy(tmp_path_factory):
    """The toy scenes in ADE20K's panoptic and instance layout: 4 training, 2 validation."""
    from tools.make_ade20k_toy import make_ade20k_toy
    root = tmp_path_factory.mktemp('ade_panoptic')
    make_ade20k_toy(str(root), n_train=4, n_val=2, size=64)
    return str(root)


def member(config=PANOPTIC, name='m2f', seed=0, **kw):
    torch.manual_seed(seed)
    return Mask2FormerMember(config, name=name, pretrained=False, **kw)


def train_batch(toy, n=2, kind='panoptic', config=PANOPTIC, seed=0):
    dataset = {'panoptic': 'ade20k_panoptic_train', 'instance': 'ade20k_instance_train'}[kind]
    ds = Detectron2Dataset(dataset, toy, config, mapper=kind)
    torch.manual_seed(seed)  # the mapper's random augmentation
    np.random.seed(seed)
    return detectron2_collate([ds[i] for i in range(n)])


def val_batch(toy, n=2):
    ds = Detectron2Dataset('ade20k_panoptic_val', toy, PANOPTIC, mapper='test')
    return detectron2_collate([ds[i] for i in range(n)])


def test_the_mapper_gives_detectron2s_targets_for_every_segment(toy):
    b = train_batch(toy)
    record = json.load(open(os.path.join(toy, 'ADEChallengeData2016',
                                         'ade20k_panoptic_train.json')))['annotations'][0]
    item = b['inputs'][0]
    assert b['data_samples'] is None and item['image'].dtype == torch.uint8
    assert tuple(item['image'].shape[1:]) == (128, 128)  # the config's crop
    inst = item['instances']
    # every segment of the image that survives the crop, one mask each, thing or stuff
    assert len(inst) <= len(record['segments_info'])
    assert set(inst.gt_classes.tolist()) <= {s['category_id'] for s in record['segments_info']}
    assert inst.gt_masks.shape[1:] == (128, 128)


@pytest.mark.parametrize('kind, config', [('panoptic', PANOPTIC), ('instance', INSTANCE)])
def test_per_image_loss_is_the_official_models_training_loss(toy, kind, config):
    m = member(config).train()
    b = train_batch(toy, n=1, kind=kind, config=config)
    torch.manual_seed(1)  # the criterion samples points at random
    ours = m.forward_train(b['inputs'], b['data_samples'])
    torch.manual_seed(1)
    theirs = m.model(copy.deepcopy(b['inputs']))
    assert ours.loss.shape == (1, )
    assert ours.loss[0].item() == pytest.approx(sum(theirs.values()).item(), rel=1e-5)
    # distilled: the semantic inference at 1/4 of the crop, a distribution over the classes
    classes = 150 if kind == 'panoptic' else 100
    assert ours.logits.shape == (1, classes, 32, 32)
    assert torch.allclose(ours.logits.exp().sum(1), torch.ones(1, 32, 32), atol=1e-3)


def test_inference_is_the_official_panoptic_instance_and_semantic_inference(toy):
    """Bit for bit the official model's results at batch 1, as detectron2 evaluates, whatever
    the loader's batch (the toy's validation images differ in size: a batch pads them)."""
    m = member().eval()
    b = val_batch(toy)
    assert len({tuple(x['image'].shape) for x in b['inputs']}) == 2
    with torch.no_grad():
        pred = m.predict(b['inputs'], b['data_samples'])
        official = [m.model([x])[0] for x in copy.deepcopy(b['inputs'])]
    assert len(pred.extra) == 2
    for i, (ours, theirs, item) in enumerate(zip(pred.extra, official, b['inputs'])):
        assert set(ours) == {'panoptic_seg', 'instances', 'sem_seg'}
        assert torch.equal(ours['panoptic_seg'][0], theirs['panoptic_seg'][0])
        assert ours['panoptic_seg'][1] == theirs['panoptic_seg'][1]
        for field in ('pred_masks', 'scores', 'pred_classes'):
            assert torch.equal(getattr(ours['instances'], field),
                               getattr(theirs['instances'], field)), field
        assert torch.equal(ours['sem_seg'], theirs['sem_seg'])
        # the distribution the ensemble averages: the semantic inference, normalised
        h, w = int(item['height']), int(item['width'])
        sem = theirs['sem_seg']
        assert torch.allclose(pred.dense[i][:, :h, :w], sem / sem.sum(0, keepdim=True),
                              atol=1e-6)


def ground_truth_outputs(toy, inputs):
    """Each validation image's ground truth as a perfect model's outputs: panoptic segments,
    one instance per thing (score 1) and one-hot semantic scores."""
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances
    from mask2former_bikd.d2_data import register
    meta = MetadataCatalog.get(register('ade20k_panoptic_val', toy))
    ade = os.path.join(toy, 'ADEChallengeData2016')
    records = {r['file_name']: r for r in json.load(open(
        os.path.join(ade, 'ade20k_panoptic_val.json')))['annotations']}
    outputs = []
    for item in inputs:
        stem = os.path.splitext(os.path.basename(item['file_name']))[0]
        rgb = np.asarray(Image.open(os.path.join(ade, 'ade20k_panoptic_val', stem + '.png')),
                         dtype=np.int64)
        ids = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])
        segments, masks, classes = [], [], []
        for s in records[stem + '.png']['segments_info']:
            cls = meta.stuff_dataset_id_to_contiguous_id[s['category_id']]
            thing = s['category_id'] in meta.thing_dataset_id_to_contiguous_id
            segments.append(dict(id=s['id'], category_id=cls, isthing=thing))
            if thing:
                masks.append(ids == s['id'])
                classes.append(cls)
        inst = Instances(tuple(ids.shape))
        inst.pred_masks = torch.stack(masks) if masks else torch.zeros(0, *ids.shape, dtype=bool)
        inst.pred_classes = torch.tensor(classes, dtype=torch.long)
        inst.scores = torch.ones(len(classes))
        inst.pred_boxes = Boxes(torch.zeros(len(classes), 4))  # as Mask2Former leaves them
        label = np.asarray(Image.open(os.path.join(
            ade, 'annotations_detectron2', 'validation', stem + '.png')), dtype=np.int64)
        sem = torch.zeros(150, *label.shape)
        for c in np.unique(label[label != 255]):
            sem[int(c)][torch.from_numpy(label == c)] = 1.0
        outputs.append(dict(panoptic_seg=(ids.int(), segments), instances=inst, sem_seg=sem))
    return outputs


def evaluate_by_hand(toy, inputs, outputs):
    """detectron2's COCOPanopticEvaluator and SemSegEvaluator, run directly."""
    import tempfile

    from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
    from mask2former_bikd.d2_data import register
    name = register('ade20k_panoptic_val', toy)
    with tempfile.TemporaryDirectory() as out:
        pq = COCOPanopticEvaluator(name, output_dir=out)
        sem = SemSegEvaluator(name, distributed=False)
        results = {}
        for e in (pq, sem):
            e.reset()
            e.process(inputs, outputs)
            results.update(e.evaluate())
    return results


def test_pq_of_the_wiring_equals_detectron2s_evaluators_run_by_hand(toy):
    from bikd.metrics import StructuredPrediction
    b = val_batch(toy)
    truth = ground_truth_outputs(toy, b['inputs'])
    m = member().eval()
    with torch.no_grad():
        model_pred = m.predict(b['inputs'], None)
    h, w = (max(o['sem_seg'].shape[i] for o in truth) for i in (1, 2))
    padded = torch.zeros(len(truth), 150, h, w)
    for p, o in zip(padded, truth):
        p[:, :o['sem_seg'].shape[1], :o['sem_seg'].shape[2]] = o['sem_seg']
    perfect = StructuredPrediction(padded, truth)
    metric = Detectron2Metric('ade20k_panoptic_val', toy)
    assert metric.primary_metric == 'PQ'
    metric.process(b, [dict(names=['model', 'truth'],
                            preds=[('model', model_pred), ('truth', perfect)])])
    scores = metric.evaluate(2)
    # predictions equal to the ground truth: PQ, mask AP and mIoU are all 100
    for key in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st', 'AP', 'mIoU'):
        assert scores[f'truth/{key}'] == pytest.approx(100.0), key
    # a model's predictions: the numbers detectron2's evaluators give by hand
    by_hand = evaluate_by_hand(toy, b['inputs'], copy.deepcopy(model_pred.extra))
    for key in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'):
        assert scores[f'model/{key}'] == pytest.approx(by_hand['panoptic_seg'][key]), key
    assert scores['model/mIoU'] == pytest.approx(by_hand['sem_seg']['mIoU'])
    assert scores['model/PQ'] < 100


def test_the_ensemble_gets_mIoU_alone(toy):
    from bikd.metrics import MemberPredictions
    b = val_batch(toy)
    members = [member(name='a', seed=0).eval(), member(WIDE, name='b', seed=1).eval()]
    metric = Detectron2Metric('ade20k_panoptic_val', toy)
    with torch.no_grad():
        preds = MemberPredictions(members, b['inputs'], None)
        ensemble = dict(preds)['ensemble']
        mean = (members[0].predict(b['inputs'], None).dense +
                members[1].predict(b['inputs'], None).dense) / 2
    assert torch.allclose(ensemble, mean, atol=1e-6)
    metric.process(b, [dict(names=['a', 'b', 'ensemble'], preds=preds)])
    scores = metric.evaluate(2)
    assert 'a/PQ' in scores and 'b/AP' in scores and 'ensemble/mIoU' in scores
    assert not any(k.startswith('ensemble/') and k.split('/')[1] in ('PQ', 'AP')
                   for k in scores)


def build_pair(**kw):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('bikd')
    torch.manual_seed(0)
    return MODELS.build(dict(type='BiKDMetaArch', partition='loss', members=[
        dict(type='Mask2FormerMember', name='a', config=PANOPTIC, pretrained=False),
        dict(type='Mask2FormerMember', name='b', config=WIDE, pretrained=False)], **kw))


def test_a_bikd_step_between_two_panoptic_members_moves_both(toy):
    from mmengine.optim import build_optim_wrapper
    model = build_pair().train()
    b = train_batch(toy)
    before = copy.deepcopy(model.state_dict())
    wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                              optimizer=dict(type='AdamW', lr=1e-3)))
    torch.manual_seed(0)
    losses = model(copy.deepcopy(b['inputs']), None, mode='loss')
    assert set(losses.task_losses) == {'a', 'b'} and losses.distill_loss > 0
    log = model.train_step(b, wrapper)
    assert log['loss'] > 0
    for name in ('a', 'b'):
        moved = [k for k, v in model.state_dict().items() if k.startswith(
            f'members.{"ab".index(name)}.') and v.is_floating_point() and
            not torch.equal(v, before[k])]
        assert moved, name


def test_lean_step_is_the_ordinary_step_bit_for_bit(toy):
    """As test_lean's official-member case: compared after a warm-up run (a process's first
    backward of this model differs from later ones by one ulp)."""
    from test_lean import assert_lean_equals_ordinary
    model = build_pair()
    batches = [train_batch(toy, seed=s) for s in range(2)]
    assert_lean_equals_ordinary(model, batches, warm_up=True)


def test_export_loads_into_a_fresh_official_panoptic_model(tmp_path, toy):
    from test_mask2former_d2 import export_and_load_fresh
    m = member()
    fresh, cfg = export_and_load_fresh(m, tmp_path)
    assert cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON and cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON
    b = val_batch(toy, n=1)
    m.eval()
    with torch.no_grad():
        ours, theirs = m.model(copy.deepcopy(b['inputs']))[0], fresh(b['inputs'])[0]
    assert torch.equal(ours['panoptic_seg'][0], theirs['panoptic_seg'][0])
    assert torch.equal(ours['instances'].scores, theirs['instances'].scores)


def corrupt(toy, tmp_path, edit):
    """A copy of the toy whose validation panoptic JSON ``edit`` changed."""
    import shutil
    root = tmp_path / 'bad'
    shutil.copytree(toy, root)
    path = root / 'ADEChallengeData2016' / 'ade20k_panoptic_val.json'
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return str(root), str(path)


def test_a_segment_missing_from_the_json_names_both_files(toy, tmp_path):
    def drop_segment(data):
        data['annotations'][0]['segments_info'].pop()
    root, json_file = corrupt(toy, tmp_path, drop_segment)
    ds = Detectron2Dataset('ade20k_panoptic_val', root, PANOPTIC, mapper='test')
    with pytest.raises(ValueError, match='does not list') as e:
        ds[0]
    assert json_file in str(e.value) and 'ADE_val_00000001.png' in str(e.value)


def test_a_category_outside_the_metadata_names_the_file(toy, tmp_path):
    def unknown_category(data):
        data['annotations'][1]['segments_info'][0]['category_id'] = 4242
    root, json_file = corrupt(toy, tmp_path, unknown_category)
    with pytest.raises(ValueError, match='4242') as e:
        Detectron2Dataset('ade20k_panoptic_val', root, PANOPTIC, mapper='test')
    assert json_file in str(e.value)


def test_an_image_cut_short_names_the_sample_files(toy, tmp_path):
    root, _ = corrupt(toy, tmp_path, lambda data: None)
    ds = Detectron2Dataset('ade20k_panoptic_val', root, PANOPTIC, mapper='test')
    image = ds.dicts[1]['file_name']
    data = open(image, 'rb').read()
    with open(image, 'wb') as f:
        f.write(data[:len(data) // 3])
    ds[0]  # the others read
    with pytest.raises(OSError, match=f'cannot read image file {image} or its annotation '
                                      f'.*ADE_val_00000002.png'):
        ds[1]


def test_a_missing_layout_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='ade20k_panoptic_val.json'):
        Detectron2Dataset('ade20k_panoptic_val', str(tmp_path), PANOPTIC, mapper='test')


def test_train_net_runs_the_panoptic_toy_pair_and_exports(tmp_path, toy):
    """The panoptic toy's Bi-KD config through train_net (2 steps), its summary with PQ as
    the primary metric, and the export read back by Mask2Former's own train_net.py
    --eval-only."""
    from conftest import run_tool
    work = tmp_path / 'run'
    config = os.path.join(ROOT, 'configs/ade20k_panoptic_toy/r18_wide_bikd.yaml')
    overrides = [f'train_dataloader.dataset.datasets_root={toy}',
                 f'val_dataloader.dataset.datasets_root={toy}', f'val_evaluator.datasets_root={toy}',
                 'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                 'model.random_init=true', f'work_dir={work}', 'train_cfg.max_iters=2',
                 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2']
    run_tool('train_net.py', '--config-file', config, *overrides)
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['primary_metric'] == 'PQ' and summary['iterations'] == 2
    for name in ('m2f_r18', 'm2f_wide'):
        after = summary['members'][name]['after']
        assert {'PQ', 'AP', 'mIoU'} <= set(after) and 0 <= after['PQ'] <= 100
    assert 'mIoU' in summary['ensemble']['after'] and 'PQ' not in summary['ensemble']['after']
    out = tmp_path / 'export'
    run_tool('export_members.py', '--config-file', config, '--output-dir', out,
             f'work_dir={work}')
    info = json.loads((out / 'm2f_r18.json').read_text())
    # Mask2Former's own train_net.py --eval-only on the exported member, unmodified; run with
    # the stand-in for its deformable-attention op that CPUs need, and instance inference off
    # (its InstanceSegEvaluator does not run with today's detectron2)
    import subprocess
    import sys
    script = os.path.join(d2.mask2former_root(), 'train_net.py')
    runner = ('import runpy, sys; from mask2former_bikd import d2; '
              'd2.deformable_attention_backend(); sys.argv = sys.argv[1:]; '
              'runpy.run_path(sys.argv[0], run_name="__main__")')
    proc = subprocess.run(
        [sys.executable, '-c', runner, script, '--eval-only', '--config-file',
         str(out / info['config']), 'MODEL.WEIGHTS', str(out / info['checkpoint']),
         'MODEL.DEVICE', 'cpu', 'MODEL.MASK_FORMER.TEST.INSTANCE_ON', 'False',
         'DATALOADER.NUM_WORKERS', '0', 'OUTPUT_DIR', str(tmp_path / 'official')],
        cwd=d2.mask2former_root(), capture_output=True, text=True,
        env=dict(os.environ, DETECTRON2_DATASETS=toy,
                 PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'plugins'), ROOT,
                                             d2.mask2former_root()])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'PQ' in log and 'mIoU' in log


def test_the_detectron2_plugin_trains_panoptic_members_and_scores_them(toy):
    """MODEL.META_ARCHITECTURE: D2BiKDMetaArch over two panoptic members, trained by
    detectron2's SimpleTrainer on Mask2Former's panoptic mapper and scored by
    inference_on_dataset with COCOPanopticEvaluator + SemSegEvaluator per member (the
    ensemble: SemSegEvaluator)."""
    from detectron2.data import build_detection_test_loader, build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.evaluation import (COCOPanopticEvaluator, DatasetEvaluators,
                                       SemSegEvaluator, inference_on_dataset)
    from detectron2.modeling import build_model
    from mask2former import MaskFormerPanopticDatasetMapper
    from mask2former_bikd.d2_data import register
    from mask2former_bikd.d2_plugin import (BiKDCheckpointer, add_bikd_config,
                                            member_evaluators, results_by_member)
    train, val = register('ade20k_panoptic_train', toy), register('ade20k_panoptic_val', toy)
    cfg = d2.load_d2_config(PANOPTIC)
    add_bikd_config(cfg)
    cfg.merge_from_list([
        'MODEL.META_ARCHITECTURE', 'D2BiKDMetaArch', 'MODEL.DEVICE', 'cpu',
        'MODEL.BIKD.MEMBERS', f"['{PANOPTIC}', '{WIDE}']", 'MODEL.BIKD.NAMES', "['a', 'b']",
        'DATASETS.TRAIN', f"('{train}',)", 'DATASETS.TEST', f"('{val}',)",
        'SOLVER.IMS_PER_BATCH', '2', 'DATALOADER.NUM_WORKERS', '0'])
    torch.manual_seed(0)
    model = build_model(cfg)
    BiKDCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)  # build, then load
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = build_detection_train_loader(cfg, mapper=MaskFormerPanopticDatasetMapper(cfg, True))
    trainer = SimpleTrainer(model, loader, torch.optim.AdamW(model.parameters(), lr=1e-3))
    trainer.train(0, 2)
    after = model.state_dict()
    for i in range(2):
        assert any(k.startswith(f'bikd.members.{i}.') and after[k].is_floating_point() and
                   not torch.equal(after[k], before[k]) for k in after), i
    assert 'distill_loss' in trainer.storage.histories()

    import tempfile
    model.eval()
    with tempfile.TemporaryDirectory() as out:
        results = inference_on_dataset(model, build_detection_test_loader(cfg, val),
                                       member_evaluators(
            lambda: DatasetEvaluators([COCOPanopticEvaluator(val, output_dir=out),
                                       SemSegEvaluator(val, distributed=False)]), model,
            lambda: SemSegEvaluator(val, distributed=False)))
    scores = results_by_member(results)
    assert set(scores) == {'a', 'b', 'ensemble'}
    for name in 'ab':
        assert 0 <= scores[name]['PQ'] <= 100 and 0 <= scores[name]['mIoU'] <= 100
    assert 'PQ' not in scores['ensemble'] and 0 <= scores['ensemble']['mIoU'] <= 100
