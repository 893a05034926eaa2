"""Pearson and Spearman correlation in numpy (ties get their average rank)."""

from __future__ import annotations

import numpy as np

from icl_mech.errors import IclMechError


def ranks(values) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # ranks before each distinct value
    return (first + (counts + 1) / 2)[inverse]


def pearson(x, y) -> float:
    """Pearson's r of two equal-length sequences (nan when either is constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise IclMechError(
            f"correlation: needs two 1-D sequences of the same length >= 2, got shapes "
            f"{x.shape} and {y.shape}"
        )
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's r of the ranks)."""
    return pearson(ranks(x), ranks(y))
