"""The official Mask2Former member trains on the official objective and is scored on the
official protocol, each checked against the official model itself:

- the gradient of the suite's loss (Independent control) is the gradient of the official
  model's training loss at batch 2 (normalised over the batch), and under DDP the per-process
  loss is the official model's (one all-reduce of the mask count per step);
- the per-image losses the partition compares depend on each image alone (no collective): in a
  batch of two and under two processes, each is the official loss of the image alone;
- evaluation is the official model's at batch 1 whatever the loader's batch, and PQ the
  evaluators' on those results; batching is an option, with a warning;
- ``TEST.SEMANTIC_ON`` is the config's, and training sets keep the images detectron2 keeps.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, seg_batch

pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
pytest.importorskip('panopticapi', reason='panopticapi is not installed (make d2)')
from test_panoptic import (INSTANCE, PANOPTIC, evaluate_by_hand, member, toy,  # noqa: E402,F401
                           train_batch, val_batch)

SEMANTIC = os.path.join(ROOT, 'configs/ade20k/members/maskformer2_r18_tiny.yaml')


def gradients(module):
    return {k: p.grad.detach().clone() for k, p in module.named_parameters()
            if p.grad is not None}


def official_step(model, batch, seed):
    """The official model's training loss (``sum(model(batch).values())``, as detectron2's
    trainers sum it) and its gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the criterion samples points at random
    loss = sum(model(copy.deepcopy(batch)).values())
    loss.backward()
    return loss.detach(), gradients(model)


def independent(config, **member_kw):
    """The Independent control over one official member."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('bikd')
    torch.manual_seed(0)
    return MODELS.build(dict(type='IndependentMetaArch', members=[
        dict(type='Mask2FormerMember', name='m', config=config, pretrained=False,
             **member_kw)])).train()


def semantic_batch():
    """Two images with different numbers of classes (6 and 3), as the suite's mmseg loader
    gives them, and the same as the official model takes them (``instances`` as
    Mask2Former's semantic mapper makes them)."""
    from test_mask2former_d2 import official_batch
    inputs, samples = seg_batch(2)
    samples[1].gt_sem_seg.data.clamp_(max=2)
    return inputs, samples, official_batch


@pytest.mark.parametrize('kind', ['panoptic', 'instance', 'semantic'])
def test_the_independent_controls_gradient_is_the_official_training_losss_at_batch_2(toy,
                                                                                    kind):
    model = independent({'panoptic': PANOPTIC, 'instance': INSTANCE, 'semantic': SEMANTIC}[kind])
    m = model.members[0]
    if kind == 'semantic':
        inputs, samples, official_batch = semantic_batch()
        official = official_batch(inputs, samples, m)
    else:
        b = train_batch(toy, n=2, kind=kind, config=INSTANCE if kind == 'instance' else PANOPTIC)
        inputs, samples, official = b['inputs'], None, b['inputs']
    counts = [len(x['instances']) for x in official]
    assert counts[0] != counts[1]  # the batch's normalisation is not the images' own
    official_step(m.model, official, 0)  # a process's first backward differs by an ulp
    loss, theirs = official_step(m.model, official, 1)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(copy.deepcopy(inputs), samples, mode='loss')
    total = out.total()
    total.backward()
    ours = gradients(m.model)
    assert total.item() == pytest.approx(loss.item(), rel=1e-6)
    assert set(ours) == set(theirs) and len(ours) > 50
    for k in theirs:
        assert (ours[k] - theirs[k]).norm() <= 1e-6 * theirs[k].norm() + 1e-12, k
    # the mean of the images' own losses (each normalised by its own masks) is another
    # objective, which this batch tells apart from the official one (10x the tolerance above)
    torch.manual_seed(1)
    per_image = m.forward_train(copy.deepcopy(inputs), samples).loss
    assert abs(per_image.mean().item() - loss.item()) > 1e-5 * loss.item()


@pytest.fixture
def same_points(monkeypatch):
    """The criterion's random points made the same for every image and mask, so that an
    image's loss can be compared across batches (the official code draws them for the batch's
    images and masks together)."""
    real = torch.rand

    def rand(*size, device=None, dtype=None, **kw):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        row = real(size[1:], generator=torch.Generator().manual_seed(0),
                   dtype=dtype or torch.float32)
        return row.expand(size).contiguous().to(device)
    monkeypatch.setattr(torch, 'rand', rand)


def pretend_two_processes(monkeypatch, other_masks):
    """torch.distributed as one of two processes sees it, the other's batch holding
    ``other_masks`` target masks; returns the list of all-reduces made."""
    from mask2former.modeling import criterion
    calls = []

    def all_reduce(tensor, *args, **kwargs):
        calls.append(tensor.clone())
        tensor += other_masks
    monkeypatch.setattr(criterion, 'is_dist_avail_and_initialized', lambda: True)
    monkeypatch.setattr(criterion, 'get_world_size', lambda: 2)
    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    return calls


def test_per_image_losses_are_each_images_own_official_loss_in_any_batch_and_process(
        toy, same_points, monkeypatch):
    m = member().train()
    b = train_batch(toy, n=2)
    assert len({tuple(x['image'].shape) for x in b['inputs']}) == 1  # nothing padded
    with torch.no_grad():
        alone = [sum(m.model([copy.deepcopy(x)]).values()).item() for x in b['inputs']]
        # the two images' losses must differ by more than the comparison's tolerance below
        # (1e-5), or an image given the other's loss would pass; how far apart they lie
        # depends on the matching, which a CPU's kernels can tip (2.8e-4 apart on one machine)
        assert alone[0] != pytest.approx(alone[1], rel=1e-4)
        calls = pretend_two_processes(monkeypatch, other_masks=23)
        out = m.forward_train(copy.deepcopy(b['inputs']), None)
        ours_calls = len(calls)
        official = sum(m.model(copy.deepcopy(b['inputs'])).values())
    # the partition's losses: each image's official loss alone at batch 1 on one process
    assert out.loss.shape == (2, )
    for i in range(2):
        assert out.loss[i].item() == pytest.approx(alone[i], rel=1e-5), i
    # what trains: the official model's loss of this process, normalised by the mask count of
    # both processes (DDP's mean of the processes' gradients then gives the official
    # objective), with the official model's one all-reduce per step, not one per image
    assert out.objective.item() == pytest.approx(official.item(), rel=1e-6)
    assert ours_calls == 1 and len(calls) == 2
    assert calls[0].item() == sum(len(x['instances']) for x in b['inputs'])


def test_evaluation_is_the_official_models_at_batch_1_and_pq_the_evaluators(toy):
    from detectron2.evaluation import COCOPanopticEvaluator  # noqa: F401  (panopticapi)
    from mask2former_bikd import Detectron2Metric
    m = member().eval()
    b = val_batch(toy)
    assert len({tuple(x['image'].shape) for x in b['inputs']}) == 2  # a batch pads
    with torch.no_grad():
        alone = [m.model([x])[0] for x in copy.deepcopy(b['inputs'])]
        padded = m.model(copy.deepcopy(b['inputs']))
        pred = m.predict(b['inputs'], None)
    # every result is the official model's at batch 1, bit for bit
    for ours, theirs in zip(pred.extra, alone):
        assert torch.equal(ours['panoptic_seg'][0], theirs['panoptic_seg'][0])
        assert ours['panoptic_seg'][1] == theirs['panoptic_seg'][1]
        assert torch.equal(ours['instances'].pred_masks, theirs['instances'].pred_masks)
        assert torch.equal(ours['instances'].scores, theirs['instances'].scores)
        assert torch.equal(ours['sem_seg'], theirs['sem_seg'])
    # and the scores are detectron2's evaluators' on them
    metric = Detectron2Metric('ade20k_panoptic_val', toy)
    metric.process(b, [dict(names=['m'], preds=[('m', pred)])])
    scores = metric.evaluate(2)
    official = evaluate_by_hand(toy, b['inputs'], copy.deepcopy(alone))
    for key in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'):
        assert scores[f'm/{key}'] == pytest.approx(official['panoptic_seg'][key]), key
    assert scores['m/mIoU'] == pytest.approx(official['sem_seg']['mIoU'])
    # batching (an option) pads the smaller image, which changes its results: it warns
    assert not torch.equal(alone[1]['sem_seg'], padded[1]['sem_seg'])
    batched = member(batched_inference=True).eval()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match='padded to its largest image'):
        pred = batched.predict(b['inputs'], None)
    for ours, theirs in zip(pred.extra, padded):
        assert torch.equal(ours['sem_seg'], theirs['sem_seg'])


def test_semantic_on_is_the_configs(toy):
    from mask2former_bikd import Detectron2Metric
    m = member(opts=['MODEL.MASK_FORMER.TEST.SEMANTIC_ON', 'False']).eval()
    assert not m.model.semantic_on
    b = val_batch(toy)
    with torch.no_grad():
        official = [m.model([x])[0] for x in copy.deepcopy(b['inputs'])]
        pred = m.predict(b['inputs'], None)
    assert not m.model.semantic_on
    assert set(official[0]) == {'panoptic_seg', 'instances'}
    for ours, theirs in zip(pred.extra, official):
        assert set(ours) == set(theirs)
        assert torch.equal(ours['panoptic_seg'][0], theirs['panoptic_seg'][0])
        assert torch.equal(ours['instances'].scores, theirs['instances'].scores)
    # the ensemble still has the member's semantic distribution
    h, w = int(b['inputs'][0]['height']), int(b['inputs'][0]['width'])
    assert torch.allclose(pred.dense[0][:, :h, :w].sum(0), torch.ones(h, w), atol=1e-5)
    metric = Detectron2Metric('ade20k_panoptic_val', toy)
    metric.process(b, [dict(names=['m'], preds=[('m', pred)])])
    scores = metric.evaluate(2)
    assert 'm/PQ' in scores and 'm/AP' in scores and 'm/mIoU' not in scores
    # and distillation still has its distribution in training
    out = m.train().forward_train(train_batch(toy, n=2)['inputs'], None)
    assert torch.allclose(out.logits.exp().sum(1), torch.ones_like(out.logits[:, 0]), atol=1e-3)


def edited_copy(toy, tmp_path, name, edit):
    """A copy of the toy whose ``<name>.json`` ``edit(data, root)`` changed."""
    import shutil
    root = tmp_path / 'edited'
    shutil.copytree(toy, root)
    path = root / 'ADEChallengeData2016' / f'{name}.json'
    data = json.loads(path.read_text())
    edit(data, root / 'ADEChallengeData2016')
    path.write_text(json.dumps(data))
    return str(root)


def detectron2s_training_images(name, config):
    """The images detectron2's training loader keeps (``build_detection_train_loader``)."""
    from detectron2.data import get_detection_dataset_dicts
    from mask2former_bikd import d2
    cfg = d2.load_d2_config(config)
    return [d['file_name'] for d in get_detection_dataset_dicts(
        [name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)]


def test_panoptic_training_keeps_an_image_without_segments_and_trains_on_it(toy, tmp_path):
    from mask2former_bikd import Detectron2Dataset, detectron2_collate

    def no_segments(data, ade):
        record = data['annotations'][0]
        record['segments_info'] = []
        png = ade / 'ade20k_panoptic_train' / record['file_name']
        Image.fromarray(np.zeros_like(np.asarray(Image.open(png)))).save(png)
    root = edited_copy(toy, tmp_path, 'ade20k_panoptic_train', no_segments)
    ds = Detectron2Dataset('ade20k_panoptic_train', root, PANOPTIC, mapper='panoptic')
    assert [d['file_name'] for d in ds.dicts] == detectron2s_training_images(ds.name, PANOPTIC)
    assert len(ds) == 4
    torch.manual_seed(0)
    np.random.seed(0)
    b = detectron2_collate([ds[0], ds[1]])
    assert len(b['inputs'][0]['instances']) == 0 and len(b['inputs'][1]['instances']) > 0
    m = member().train()
    official_step(m.model, b['inputs'], 0)
    loss, theirs = official_step(m.model, b['inputs'], 1)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = m.forward_train(copy.deepcopy(b['inputs']), None)
    out.objective.backward()
    assert torch.isfinite(out.loss).all() and out.loss[0] > 0  # its class loss
    assert out.objective.item() == pytest.approx(loss.item(), rel=1e-6)


def test_instance_training_drops_images_whose_annotations_are_all_crowd(toy, tmp_path):
    from mask2former_bikd import Detectron2Dataset

    def all_crowd(data, ade):
        for a in data['annotations']:
            if a['image_id'] == data['images'][0]['id']:
                a['iscrowd'] = 1
    root = edited_copy(toy, tmp_path, 'ade20k_instance_train', all_crowd)
    ds = Detectron2Dataset('ade20k_instance_train', root, INSTANCE, mapper='instance')
    kept = detectron2s_training_images(ds.name, INSTANCE)
    assert [d['file_name'] for d in ds.dicts] == kept and len(kept) == 3
    # evaluation keeps every image, as detectron2's test loader
    assert len(Detectron2Dataset('ade20k_instance_train', root, INSTANCE, mapper='test')) == 4


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, port, toy, out):
    """One of two processes, with images 0 and 1 (rank 0) or 2 and 1 (rank 1): the suite's
    loss through its DDP wrapper, then the official model's through torch's DDP (as
    detectron2's trainers wrap it), from the same weights and random state; the gradients of
    each, which DDP averages over the processes."""
    import torch.distributed as dist

    from bikd.engine import BiKDDistributedDataParallel, setup_engine
    from mask2former_bikd import Detectron2Dataset, detectron2_collate
    setup_engine()
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.set_num_threads(1)
    ds = Detectron2Dataset('ade20k_panoptic_train', toy, PANOPTIC, mapper='panoptic')
    np.random.seed(rank)
    batch = detectron2_collate([ds[2 * rank], ds[1]])['inputs']
    model = independent(PANOPTIC)
    official = copy.deepcopy(model.members[0].model)
    result = {}
    ddp = BiKDDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False)
    odp = torch.nn.parallel.DistributedDataParallel(official, broadcast_buffers=False)
    for step in range(2):  # the first backward of a process differs by an ulp
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        ddp(copy.deepcopy(batch), None, mode='loss').total().backward()
        official.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        sum(odp(copy.deepcopy(batch)).values()).backward()
    result['ours'] = gradients(model.members[0].model)
    result['official'] = gradients(official)
    result['masks'] = [len(x['instances']) for x in batch]
    torch.save(result, f'{out}.{rank}')
    dist.destroy_process_group()


def test_under_ddp_the_averaged_gradient_is_the_official_models(toy, tmp_path):
    import torch.multiprocessing as mp

    from bikd.engine.launch import free_port
    out = str(tmp_path / 'grads')
    mp.start_processes(_ddp_worker, nprocs=2, start_method='spawn',
                       args=(free_port(), toy, out))
    results = [torch.load(f'{out}.{rank}') for rank in range(2)]
    assert sum(results[0]['masks']) != sum(results[1]['masks'])  # the processes' counts differ
    for r in results:
        ours, theirs = r['ours'], r['official']
        assert set(ours) == set(theirs) and len(ours) > 50
        for k in theirs:
            assert (ours[k] - theirs[k]).norm() <= 1e-6 * theirs[k].norm() + 1e-12, k
    # DDP gave both processes the same (averaged) gradient
    for k in results[0]['ours']:
        assert torch.equal(results[0]['ours'][k], results[1]['ours'][k]), k
