"""Scalar summaries of a Bi-KD run."""
import math


def recovered(before: float, after: float, ensemble: float) -> float:
    """Share of the ensemble's gain a member recovered by training, Eq. 14, in percent.

    ``100 * (after - before) / (ensemble - before)``. It exceeds 100 when the member beats the
    ensemble of the initial members, and is negative when the member got worse (or when the
    ensemble is worse than the member). NaN when the ensemble equals the member before training.
    """
    gap = ensemble - before
    if gap == 0 or math.isnan(gap):
        return float('nan')
    return 100.0 * (after - before) / gap
