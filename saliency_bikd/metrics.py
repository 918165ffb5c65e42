"""Saliency metrics with the video-saliency benchmark's definitions (the MATLAB code of the
MIT saliency benchmark, as DHF1K and the saliency repos use it), per frame.

Inputs are 2-D arrays of the same shape: a predicted map ``pred`` (any non-negative scale),
the continuous ground-truth map ``gt`` and the binary fixation map ``fix``. Each function
returns NaN where the metric is undefined for that frame (an empty or constant map), so the
caller can drop the frame and count it.
"""
import numpy as np

#: MATLAB's eps, as the benchmark's KLD and the repositories' KL losses use it
MATLAB_EPS = 2.2204e-16
_trapz = getattr(np, 'trapezoid', None) or np.trapz  # numpy 2 renamed it


def _normalize01(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.full_like(x, np.nan)


def cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation of the two maps."""
    p, g = pred.astype(np.float64).ravel(), gt.astype(np.float64).ravel()
    p, g = p - p.mean(), g - g.mean()
    denom = np.sqrt((p * p).sum() * (g * g).sum())
    return float((p * g).sum() / denom) if denom > 0 else float('nan')


def nss(pred: np.ndarray, fix: np.ndarray) -> float:
    """Mean of the z-scored prediction (unbiased standard deviation) at the fixations."""
    p = pred.astype(np.float64)
    mask = fix > 0
    std = p.std(ddof=1)
    if not mask.any() or not std > 0:
        return float('nan')
    return float(((p - p.mean()) / std)[mask].mean())


def kld(pred: np.ndarray, gt: np.ndarray) -> float:
    """``sum Q log(eps + Q / (P + eps))`` with P, Q the maps divided by their sums."""
    p, q = pred.astype(np.float64), gt.astype(np.float64)
    if not p.sum() > 0 or not q.sum() > 0:
        return float('nan')
    p, q = p / p.sum(), q / q.sum()
    return float((q * np.log(MATLAB_EPS + q / (p + MATLAB_EPS))).sum())


def sim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Histogram intersection of the two maps, each min-max normalised then divided by its sum."""
    p, g = _normalize01(pred.astype(np.float64)), _normalize01(gt.astype(np.float64))
    if np.isnan(p).any() or np.isnan(g).any():
        return float('nan')
    return float(np.minimum(p / p.sum(), g / g.sum()).sum())


def auc_judd(pred: np.ndarray, fix: np.ndarray) -> float:
    """AUC-Judd: a threshold at the saliency of every fixated pixel; true positives over the
    fixations, false positives over all other pixels; trapezoid area. (The MATLAB code adds
    a 1e-7 random jitter against ties; this version is deterministic.)"""
    s = _normalize01(pred.astype(np.float64))
    mask = fix > 0
    n_fix, n_pix = int(mask.sum()), s.size
    if n_fix == 0 or n_fix == n_pix or np.isnan(s).any():
        return float('nan')
    thresholds = np.sort(s[mask])[::-1]
    flat = np.sort(s.ravel())
    above = flat.size - np.searchsorted(flat, thresholds, side='left')  # pixels >= thresh
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / (n_pix - n_fix), [1.0]])
    return float(_trapz(tp, fp))


def auc_shuffled(pred: np.ndarray, fix: np.ndarray, other_fix: np.ndarray, n_splits: int = 100,
                 step: float = 0.1, rng: np.random.Generator = None) -> float:
    """s-AUC: negatives are saliency values at fixations of other frames (``other_fix``, e.g.
    the union of 10 random frames' fixations), as many as this frame's fixations, drawn
    ``n_splits`` times; thresholds every ``step`` from 0 to the largest value; mean area."""
    rng = rng if rng is not None else np.random.default_rng(0)
    s = _normalize01(pred.astype(np.float64))
    pos = s[fix > 0]
    others = s[other_fix > 0]
    if pos.size == 0 or others.size == 0 or np.isnan(s).any():
        return float('nan')
    n_neg = min(pos.size, others.size)
    areas = []
    for _ in range(n_splits):
        neg = others[rng.permutation(others.size)[:n_neg]]
        thresholds = np.arange(0, max(pos.max(), neg.max()) + 1e-12, step)[::-1]
        tp = np.concatenate([[0.0], [(pos >= t).mean() for t in thresholds], [1.0]])
        fp = np.concatenate([[0.0], [(neg >= t).mean() for t in thresholds], [1.0]])
        areas.append(_trapz(tp, fp))
    return float(np.mean(areas))
