"""Saliency metrics against literal, loop-by-loop transcriptions of the benchmark's MATLAB
formulas (REFERENCE.md), and the evaluator's frame handling."""
import math

import numpy as np
import pytest
import torch

from saliency_bikd import metrics as M
from saliency_bikd.evaluator import SaliencyEvaluator


def frame(seed, h=12, w=16):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    gt = np.exp(-((yy - rng.uniform(0, h))**2 + (xx - rng.uniform(0, w))**2) / 20.0)
    pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, None)
    fix = (rng.random((h, w)) < 0.08).astype(np.uint8)
    fix[int(gt.argmax() // w), int(gt.argmax() % w)] = 1
    other = (rng.random((h, w)) < 0.15).astype(np.uint8)
    return pred, gt, fix, other


def ref_cc(p, g):
    p, g = p.ravel(), g.ravel()
    mp, mg = sum(p) / len(p), sum(g) / len(g)
    cov = sum((a - mp) * (b - mg) for a, b in zip(p, g))
    return cov / math.sqrt(sum((a - mp)**2 for a in p) * sum((b - mg)**2 for b in g))


def ref_nss(p, fix):
    vals = p.ravel()
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean)**2 for v in vals) / (len(vals) - 1))
    at = [(v - mean) / std for v, f in zip(vals, fix.ravel()) if f]
    return sum(at) / len(at)


def ref_kld(p, g, eps=2.2204e-16):
    P, Q = p.ravel() / p.sum(), g.ravel() / g.sum()
    return sum(q * math.log(eps + q / (pp + eps)) for pp, q in zip(P, Q))


def ref_sim(p, g):
    def norm(x):
        x = (x - x.min()) / (x.max() - x.min())
        return x / x.sum()
    return sum(min(a, b) for a, b in zip(norm(p).ravel(), norm(g).ravel()))


def ref_auc_judd(p, fix):
    S = ((p - p.min()) / (p.max() - p.min())).ravel()
    F = fix.ravel() > 0
    Sth = sorted(S[F], reverse=True)
    n_fix, n_pix = len(Sth), len(S)
    tp, fp = [0.0], [0.0]
    for i, thresh in enumerate(Sth, start=1):
        above = sum(1 for v in S if v >= thresh)
        tp.append(i / n_fix)
        fp.append((above - i) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))


def ref_auc_shuffled(p, fix, other, n_splits, rng, step=0.1):
    S = ((p - p.min()) / (p.max() - p.min())).ravel()
    Sth = S[fix.ravel() > 0]
    ind = np.flatnonzero(other.ravel() > 0)
    n_oth = min(len(Sth), len(ind))
    aucs = []
    for _ in range(n_splits):
        curfix = S[ind[rng.permutation(len(ind))][:n_oth]]
        top = max(max(Sth), max(curfix))
        threshes = [k * step for k in range(int(math.floor(top / step + 1e-9)) + 1)][::-1]
        tp, fp = [0.0], [0.0]
        for t in threshes:
            tp.append(sum(1 for v in Sth if v >= t) / len(Sth))
            fp.append(sum(1 for v in curfix if v >= t) / n_oth)
        tp.append(1.0)
        fp.append(1.0)
        aucs.append(sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1)))
    return sum(aucs) / len(aucs)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_metrics_match_the_formulas(seed):
    pred, gt, fix, other = frame(seed)
    assert M.cc(pred, gt) == pytest.approx(ref_cc(pred, gt), rel=1e-10)
    assert M.nss(pred, fix) == pytest.approx(ref_nss(pred, fix), rel=1e-10)
    assert M.kld(pred, gt) == pytest.approx(ref_kld(pred, gt), rel=1e-10)
    assert M.sim(pred, gt) == pytest.approx(ref_sim(pred, gt), rel=1e-10)
    assert M.auc_judd(pred, fix) == pytest.approx(ref_auc_judd(pred, fix), rel=1e-10)
    ours = M.auc_shuffled(pred, fix, other, 20, rng=np.random.default_rng(7))
    assert ours == pytest.approx(ref_auc_shuffled(pred, fix, other, 20, np.random.default_rng(7)),
                                 rel=1e-10)


def test_ideal_and_degenerate_frames():
    pred, gt, fix, other = frame(3)
    assert M.cc(gt, gt) == pytest.approx(1.0) and M.sim(gt, gt) == pytest.approx(1.0)
    assert M.kld(gt, gt) == pytest.approx(0.0, abs=1e-12)
    # every fixated pixel above every other one (distinct values: ties are not jittered here)
    ramp = np.linspace(0, 1, fix.size, endpoint=False).reshape(fix.shape)
    assert M.auc_judd(2.0 * fix + ramp, fix) == pytest.approx(1.0)
    empty = np.zeros_like(gt)
    assert math.isnan(M.kld(pred, empty)) and math.isnan(M.cc(pred, empty))
    assert math.isnan(M.nss(pred, empty)) and math.isnan(M.auc_judd(pred, empty))
    assert math.isnan(M.sim(pred, empty))


def test_evaluator_resizes_blurs_and_counts_dropped_frames():
    frames = [frame(s, 24, 32) for s in range(3)]
    gts = torch.tensor(np.stack([f[1] for f in frames]))
    gts[2] = 0  # an all-zero map: CC, SIM, KLD undefined for that frame
    fixs = torch.tensor(np.stack([f[2] for f in frames]))
    others = torch.tensor(np.stack([f[3] for f in frames]))
    preds = torch.rand(3, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    ev = SaliencyEvaluator(sauc_splits=5)
    batch = dict(data_samples=dict(map=gts, fixation=fixs, other_fixation=others,
                                   index=torch.arange(3)))
    ev.process(batch, [dict(names=['a', 'b', 'ensemble'], preds=preds)])
    res = ev.compute_metrics(ev.results)
    assert res['a/frames'] == 3
    assert res['a/dropped_CC'] == res['a/dropped_KLD'] == 1 and res['a/dropped_NSS'] == 0
    # the mean is over the two frames that have a map, of resized and blurred predictions
    ref = [M.cc(ev._prepare(preds[0, i], (24, 32)), gts[i].numpy()) for i in range(2)]
    assert res['a/CC'] == pytest.approx(np.mean(ref))
    assert ev._prepare(preds[0, 0], (24, 32)).shape == (24, 32)


def test_task_loss_is_kl_minus_cc_per_clip_and_distillation_is_kl_between_maps():
    from bikd.losses import distillation_loss
    from saliency_bikd.losses import map_log_probs, saliency_loss

    frames = [frame(s) for s in range(3)]
    pred = torch.tensor(np.stack([f[0] for f in frames]))
    gt = torch.tensor(np.stack([f[1] for f in frames]))
    loss = saliency_loss(pred, gt)
    for i in range(3):
        p, g = frames[i][0], frames[i][1]
        assert loss[i].item() == pytest.approx(ref_kld(p, g) - ref_cc(p, g), rel=1e-5)
    # distillation between two members' maps: KL(teacher map || student map) over pixels
    # (maps without zeros, where the eps guard of map_log_probs would matter)
    pred = pred + 0.01
    other = torch.tensor(np.stack([frame(s + 10)[0] for s in range(3)])) + 0.01
    d = distillation_loss([map_log_probs(pred), map_log_probs(other)], torch.tensor([0, 1, 0]))
    ref = 0.0
    for i, t in enumerate([0, 1, 0]):
        teacher, student = (pred, other) if t == 0 else (other, pred)
        P = teacher[i].numpy().ravel() / teacher[i].numpy().sum()
        Q = student[i].numpy().ravel() / student[i].numpy().sum()
        ref += sum(a * math.log(a / b) for a, b in zip(P, Q) if a > 0)
    assert d.item() == pytest.approx(ref / 3, rel=1e-4)
