"""Statistics for comparing encoders on the same items: bootstrap intervals, tests, detectable effects, ratios of gains.

Every function takes per-language item vectors (one array per language, the same items in the same order for every
model) and works on the report's average: the mean over languages of per-language means.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

POWER = 0.8  # the power at which the smallest detectable difference is stated


def _pairs(model: list, base: list) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(a, float), np.asarray(b, float)) for a, b in zip(model, base) if len(a)]


def _resample(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(samples, n))


def bootstrap_mean_ci(per_lang: list[np.ndarray], samples: int = 1000, level: float = 0.95, seed: int = 0) -> list[float] | None:
    """Interval of the mean over languages of per-language means, items resampled within each language."""
    per_lang = [np.asarray(v, dtype=float) for v in per_lang if len(v)]
    if not per_lang or samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.mean([v[_resample(len(v), samples, rng)].mean(axis=1) for v in per_lang], axis=0)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def bootstrap_delta_ci(model: list[np.ndarray], base: list[np.ndarray], samples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> list[float] | None:
    """Paired interval of (model - base) on the same resampled items (the items are the same queries)."""
    pairs = _pairs(model, base)
    if not pairs or samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for a, b in pairs:
        idx = _resample(len(a), samples, rng)
        stats.append(a[idx].mean(axis=1) - b[idx].mean(axis=1))
    lo, hi = np.quantile(np.mean(stats, axis=0), [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def average_difference(model: list, base: list) -> float:
    return float(np.mean([a.mean() - b.mean() for a, b in _pairs(model, base)]))


def paired_permutation_p(model: list, base: list, samples: int = 1000, seed: int = 0) -> float | None:
    """Two-sided p value of (model - base) on the average, by a paired sign-flip permutation test.

    Under the null hypothesis the two models are exchangeable on each item, so each item's difference is as likely
    with either sign; signs are flipped at random within each language. With binary items (hit@1) this is an exact
    McNemar test in the limit of many samples. The smallest p it can give is 1 / (samples + 1).
    """
    pairs = _pairs(model, base)
    if not pairs or samples <= 0:
        return None
    diffs = [a - b for a, b in pairs]
    observed = abs(np.mean([d.mean() for d in diffs]))
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    stats = np.mean([(rng.choice((-1.0, 1.0), size=(samples, len(d))) * d).mean(axis=1) for d in diffs], axis=0)  # [samples]
    return float((np.sum(np.abs(stats) >= observed - 1e-12) + 1) / (samples + 1))


def standard_error(model: list, base: list) -> float:
    """Standard error of the average paired difference (items independent, languages weighted equally)."""
    pairs = _pairs(model, base)
    if not pairs:
        return 0.0
    variance = sum(np.var(a - b, ddof=1) / len(a) if len(a) > 1 else 0.0 for a, b in pairs)
    return float(np.sqrt(variance) / len(pairs))


def unpaired_standard_error(base: list) -> float:
    """The same for two independent models with the base's item variance: used when no model differs from the base
    on any item, so the paired differences say nothing about the noise."""
    vectors = [np.asarray(b, float) for b in base if len(b) > 1]
    if not vectors:
        return 0.0
    return float(np.sqrt(sum(2 * np.var(b, ddof=1) / len(b) for b in vectors)) / len(vectors))


def detectable_difference(standard_errors: list[float], base: list, level: float = 0.95) -> float | None:
    """The smallest difference on the average that a two-sided paired test at 1 - `level` finds with POWER, given the
    noise seen in the models' differences to the base (the largest of their standard errors)."""
    se = max([s for s in standard_errors if s > 0], default=0.0) or unpaired_standard_error(base)
    if se == 0:
        return None
    return float((norm.ppf(1 - (1 - level) / 2) + norm.ppf(POWER)) * se)


def bootstrap_ratio(model: list, reference: list, base: list, samples: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict | None:
    """How much of the reference model's gain over the base the model closes: (model - base) / (reference - base) on
    the average, with a percentile interval from resampling items within each language (the same items for all three).

    Returns {"value", "ci", "undefined_share"}; resamples where the reference gains nothing are left out of the
    interval and counted in undefined_share. None when the reference gains nothing at all.
    """
    triples = [(np.asarray(m, float), np.asarray(r, float), np.asarray(b, float))
               for m, r, b in zip(model, reference, base) if len(m)]
    if not triples:
        return None
    gain = np.mean([r.mean() - b.mean() for _, r, b in triples])
    if gain <= 0:
        return None
    value = float(np.mean([m.mean() - b.mean() for m, _, b in triples]) / gain)
    if samples <= 0:
        return {"value": value, "ci": None, "undefined_share": 0.0}
    rng = np.random.default_rng(seed)
    num, den = np.zeros(samples), np.zeros(samples)
    for m, r, b in triples:
        idx = rng.integers(0, len(m), size=(samples, len(m)))
        num += (m[idx].mean(axis=1) - b[idx].mean(axis=1)) / len(triples)
        den += (r[idx].mean(axis=1) - b[idx].mean(axis=1)) / len(triples)
    defined = den > 0
    ratios = num[defined] / den[defined]
    ci = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2]).tolist() if len(ratios) else None
    return {"value": value, "ci": [float(x) for x in ci] if ci else None, "undefined_share": float(1 - defined.mean())}
