"""SegmentationEvaluator against a confusion matrix computed independently, and against mmseg's
IoUMetric (the standard for mIoU and mACC)."""
import numpy as np
import pytest
import torch

from mask2former_bikd.evaluator import SegmentationEvaluator

C, IGNORE = 6, 255


def make_batches(seed=0):
    """Two batches of images of different sizes, padded predictions for 2 members + ensemble;
    class 5 never occurs in the ground truth but is predicted."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for sizes in ([(9, 13), (12, 7)], [(10, 10)]):
        hp, wp = max(h for h, _ in sizes), max(w for _, w in sizes)
        preds = torch.rand(3, len(sizes), C, hp, wp, generator=g)
        gts = []
        for h, w in sizes:
            gt = torch.randint(0, C - 1, (h, w), generator=g)
            gt[torch.rand(h, w, generator=g) < 0.1] = IGNORE
            gts.append(gt)
        batches.append((preds, dict(data_samples=dict(gt_sem_seg=gts))))
    return batches


def reference(batches, model, miou_over):
    conf = np.zeros((C, C), dtype=np.int64)  # [gt, pred]
    for preds, batch in batches:
        for i, gt in enumerate(batch['data_samples']['gt_sem_seg']):
            h, w = gt.shape
            pred = preds[model, i, :, :h, :w].argmax(0).numpy().ravel()
            gt = gt.numpy().ravel()
            keep = gt != IGNORE
            np.add.at(conf, (gt[keep], pred[keep]), 1)
    tp = np.diag(conf).astype(float)
    pos_gt, pos_pred = conf.sum(1).astype(float), conf.sum(0).astype(float)
    union = pos_gt + pos_pred - tp
    present = pos_gt > 0
    iou = np.array([tp[c] / union[c] if union[c] > 0 else np.nan for c in range(C)])
    acc = np.array([tp[c] / pos_gt[c] if present[c] else np.nan for c in range(C)])
    avg = union > 0 if miou_over == 'union' else present
    return dict(mIoU=100 * iou[avg].mean(), mACC=100 * acc[present].mean(),
                pACC=100 * tp.sum() / pos_gt.sum(),
                fwIoU=100 * np.sum(iou[present] * pos_gt[present] / pos_gt.sum()),
                iou=100 * iou)


def evaluate(batches, **kw):
    ev = SegmentationEvaluator(num_classes=C, ignore_index=IGNORE, **kw)
    for preds, batch in batches:
        ev.process(batch, [dict(names=['a', 'b', 'ensemble'], preds=preds)])
    return ev.compute_metrics(ev.results)


@pytest.mark.parametrize('miou_over', ['union', 'gt'])
def test_matches_confusion_matrix(miou_over):
    batches = make_batches()
    metrics = evaluate(batches, miou_over=miou_over, per_class='all')
    for m, name in enumerate(['a', 'b', 'ensemble']):
        ref = reference(batches, m, miou_over)
        for key in ('mIoU', 'mACC', 'pACC', 'fwIoU'):
            assert metrics[f'{name}/{key}'] == pytest.approx(ref[key], rel=1e-9), (name, key)
        for c in range(C):
            v = metrics[f'{name}/IoU-{c}']
            assert (np.isnan(v) and np.isnan(ref['iou'][c])) or v == pytest.approx(ref['iou'][c])
    # class 5 is predicted but absent from the ground truth: the two conventions differ
    assert metrics['a/mIoU'] != pytest.approx(evaluate(batches, miou_over='gt' if miou_over ==
                                                       'union' else 'union')['a/mIoU'])


def test_agrees_with_mmseg_iou_metric():
    from mmseg.evaluation import IoUMetric
    batches = make_batches(seed=1)
    ours = evaluate(batches)
    for m, name in enumerate(['a', 'b', 'ensemble']):
        metric = IoUMetric(ignore_index=IGNORE, iou_metrics=['mIoU'])
        metric.dataset_meta = dict(classes=[str(c) for c in range(C)])
        for preds, batch in batches:
            samples = []
            for i, gt in enumerate(batch['data_samples']['gt_sem_seg']):
                h, w = gt.shape
                samples.append(dict(pred_sem_seg=dict(data=preds[m, i, :, :h, :w].argmax(0)[None]),
                                    gt_sem_seg=dict(data=gt[None])))
            metric.process({}, samples)
        theirs = metric.compute_metrics(metric.results)  # rounded to 2 decimals
        assert ours[f'{name}/mIoU'] == pytest.approx(theirs['mIoU'], abs=0.006)
        assert ours[f'{name}/mACC'] == pytest.approx(theirs['mAcc'], abs=0.006)
        assert ours[f'{name}/pACC'] == pytest.approx(theirs['aAcc'], abs=0.006)


def test_perfect_prediction_scores_100():
    gt = torch.randint(0, C, (8, 8), generator=torch.Generator().manual_seed(3))
    onehot = torch.nn.functional.one_hot(gt, C).permute(2, 0, 1).float()
    preds = onehot[None, None].expand(3, 1, C, 8, 8)
    metrics = evaluate([(preds, dict(data_samples=dict(gt_sem_seg=[gt])))])
    assert metrics['a/mIoU'] == metrics['ensemble/pACC'] == metrics['b/fwIoU'] == 100.0
