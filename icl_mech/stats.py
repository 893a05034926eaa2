"""Uncertainty: one percentile bootstrap for every reported number.

Resampling is our own vectorised numpy code: ``n_resamples`` draws of the resampling units at
once, percentile interval (95% by default), seeded, so every table is reproducible.

Units: by default each observation (a query) is a unit. With ``clusters`` the units are the
distinct cluster labels and a unit keeps all of its observations together — use the query as
the cluster when the same queries appear under several seeds (their rows are not independent),
so the interval covers both the spread over queries and the variation the seeds bring.
A paired difference (``paired``) resamples the same units for both conditions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from icl_mech.errors import IclMechError

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval and the number of units behind it."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def format(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def as_dict(self, name: str = "value") -> dict[str, float]:
        """``{name, name_low, name_high, n}`` for a tidy table row."""
        return {name: self.value, f"{name}_low": self.low, f"{name}_high": self.high, "n": self.n}


def _units(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums and counts of the observations."""
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size == 0:
        raise IclMechError("bootstrap: no observations given")
    if np.isnan(values).any():
        raise IclMechError(f"bootstrap: {int(np.isnan(values).sum())} observations are NaN")
    if clusters is None:
        return values, np.ones_like(values)
    labels = np.asarray(pd.factorize(pd.Series(list(clusters)))[0])
    if labels.shape[0] != values.shape[0]:
        raise IclMechError(
            f"bootstrap: {values.shape[0]} observations but {labels.shape[0]} cluster labels"
        )
    sums = np.bincount(labels, weights=values)
    counts = np.bincount(labels).astype(float)
    return sums, counts


def _draws(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))


def _interval(point: float, resampled: np.ndarray, n: int, confidence: float) -> Estimate:
    if not 0 < confidence < 1:
        raise IclMechError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high), n, confidence)


def bootstrap(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval over units (see the module)."""
    sums, counts = _units(values, clusters)
    index = _draws(len(sums), n_resamples, seed)
    resampled = sums[index].sum(1) / counts[index].sum(1)
    return _interval(sums.sum() / counts.sum(), resampled, len(sums), confidence)


def paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    clusters: Sequence | None = None,
    **options,
) -> Estimate:
    """Mean of ``a - b`` over the same observations (same queries, same demonstrations)."""
    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise IclMechError(f"paired: {a.shape[0]} and {b.shape[0]} observations do not pair up")
    return bootstrap(a - b, clusters, **options)


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    n: int,
    clusters: Sequence | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Any statistic of resampled observation indices (e.g. an AUC): ``statistic(indices)``.
    Slower than ``bootstrap`` (one call per resample); NaN draws (e.g. one class only) are
    left out of the percentiles."""
    if n < 1:
        raise IclMechError("bootstrap_statistic: no observations given")
    if clusters is not None:
        labels = np.asarray(pd.factorize(pd.Series(list(clusters)))[0])
        members = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    else:
        members = [np.array([i]) for i in range(n)]
    index = _draws(len(members), n_resamples, seed)
    resampled = np.array([statistic(np.concatenate([members[k] for k in row])) for row in index])
    point = statistic(np.arange(n))
    if math.isnan(point):
        return Estimate(math.nan, math.nan, math.nan, len(members), confidence)
    return _interval(point, resampled, len(members), confidence)


def summarise(
    frame: pd.DataFrame,
    value: str,
    by: Sequence[str],
    cluster: str | None = None,
    **options,
) -> pd.DataFrame:
    """One row per group of ``by``: mean of ``value`` with ``value_low``, ``value_high``, ``n``
    (units: rows, or distinct values of the ``cluster`` column)."""
    missing = [c for c in [value, *by, *([cluster] if cluster else [])] if c not in frame]
    if missing:
        raise IclMechError(f"summarise: columns {missing} not in {list(frame.columns)}")
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        clusters = group[cluster].tolist() if cluster else None
        estimate = bootstrap(group[value].to_numpy(), clusters, **options)
        rows.append(dict(zip(by, key)) | estimate.as_dict(value))
    return pd.DataFrame(rows)


def with_intervals(frame: pd.DataFrame, value: str, digits: int = 2) -> pd.Series:
    """``"0.60 [0.52, 0.68]"`` per row of a ``summarise`` table."""
    return frame.apply(
        lambda r: Estimate(r[value], r[f"{value}_low"], r[f"{value}_high"], int(r["n"])).format(
            digits
        ),
        axis=1,
    )


def resample_weights(
    n: int,
    clusters: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """How often each observation is drawn, per resample: ``[n_resamples, n]`` counts (a unit's
    observations share its count) and the number of units. The draws are those of
    ``bootstrap`` and ``bootstrap_statistic`` with the same seed, so a statistic computed from
    weights (vectorised) resamples exactly what they resample."""
    if n < 1:
        raise IclMechError("resample_weights: no observations given")
    if clusters is None:
        labels = np.arange(n)
    else:
        labels = np.asarray(pd.factorize(pd.Series(list(clusters)))[0])
        if labels.shape[0] != n:
            raise IclMechError(f"resample_weights: {n} observations but {labels.shape[0]} labels")
    n_units = int(labels.max()) + 1
    index = _draws(n_units, n_resamples, seed)
    counts = np.zeros((n_resamples, n_units))
    np.add.at(counts, (np.arange(n_resamples)[:, None], index), 1.0)
    return counts[:, labels], n_units


def from_resamples(
    point: float, resampled: np.ndarray, n: int, confidence: float = CONFIDENCE
) -> Estimate:
    """A percentile interval from already resampled statistics (NaN draws left out)."""
    resampled = np.asarray(resampled, dtype=float)
    if math.isnan(point) or np.isnan(resampled).all():
        return Estimate(float(point), math.nan, math.nan, n, confidence)
    return _interval(point, resampled, n, confidence)


def bootstrap_columns(
    values: np.ndarray,
    clusters: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``bootstrap`` of every column of ``values`` ``[n, ...]`` at once, NaN observations left
    out per column (as ``nanmean``): (mean, low, high, units), each of shape ``values.shape[1:]``.
    One set of draws serves all columns."""
    values = np.asarray(values, dtype=float)
    shape = values.shape[1:]
    flat = values.reshape(len(values), -1)
    weights, n_units = resample_weights(len(flat), clusters, n_resamples=n_resamples, seed=seed)
    present = ~np.isnan(flat)
    sums, counts = weights @ np.where(present, flat, 0.0), weights @ present.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = sums / counts
        point = np.where(present, flat, 0.0).sum(0) / present.sum(0)
    tail = (1 - confidence) / 2 * 100
    with np.errstate(invalid="ignore"):
        low, high = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
        for j in np.flatnonzero(~np.isnan(resampled).all(0)):
            low[j], high[j] = np.nanpercentile(resampled[:, j], [tail, 100 - tail])
    return point.reshape(shape), low.reshape(shape), high.reshape(shape), n_units


def stratified(
    values: Sequence[float] | np.ndarray,
    strata: Sequence,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """The unweighted mean over strata (e.g. tasks) of each stratum's mean, with a stratified
    bootstrap: observations (queries) are resampled within their stratum, the strata are kept
    fixed. The interval is conditional on the strata chosen (the task set), and covers the
    sampling of observations within them. ``n`` counts observations."""
    return from_resamples(
        *stratified_resamples(values, strata, n_resamples=n_resamples, seed=seed),
        len(np.asarray(values).reshape(-1)),
        confidence,
    )


def stratified_resamples(
    values: Sequence[float] | np.ndarray,
    strata: Sequence,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """(point, ``[n_resamples]`` resampled means over strata) of ``stratified``; the same seed
    resamples the same observations, so the resamples of paired quantities (two conditions on
    the same queries) can be combined (differences, ratios)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    labels = np.asarray(pd.factorize(pd.Series(list(strata)))[0])
    if labels.shape[0] != values.shape[0] or values.size == 0:
        raise IclMechError(
            f"stratified: {values.shape[0]} observations and {labels.shape[0]} strata labels"
        )
    if np.isnan(values).any():
        raise IclMechError("stratified: NaN observations")
    rng = np.random.default_rng(seed)
    means, resampled = [], []
    for k in range(labels.max() + 1):
        part = values[labels == k]
        means.append(part.mean())
        resampled.append(part[rng.integers(0, len(part), (n_resamples, len(part)))].mean(1))
    return float(np.mean(means)), np.mean(resampled, axis=0)
