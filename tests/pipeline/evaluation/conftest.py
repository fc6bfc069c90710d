"""Fixtures of the evaluation's report and plot tests: a small metrics.json as the evaluate stage writes it."""

import pytest


@pytest.fixture
def metrics():
    """Legacy retrieval scores only (metrics.json written before the task suite): two models, two languages."""
    per = lambda a, b: {"to_eng": a, "from_eng": b, "queries": 23, "candidates_eng": 58, "candidates_lang": 56}  # noqa: E731
    return {
        "languages": ["yor", "kha"], "config_hash": "abc", "skipped": {},
        "models": {
            "base": {"per_language": {"yor": per(0.3, 0.2), "kha": per(0.1, 0.1)}, "average": {"to_eng": 0.2, "from_eng": 0.15}},
            "trained": {"per_language": {"yor": per(0.4, 0.2), "kha": per(0.05, 0.3)}, "average": {"to_eng": 0.225, "from_eng": 0.25}},
        },
    }


@pytest.fixture
def task_metrics(metrics):
    """`metrics` with one task, BLI: yor scored with intervals, kha skipped."""
    def cell(v, n, lo=None, hi=None, **extra):
        return {"P@1": v, "P@5": min(1.0, v + 0.2), "n": n, "ci": {"P@1": [lo or v - 0.1, hi or v + 0.1], "P@5": None}, **extra}

    metrics["tasks"] = {"bli": {
        "description": "Bilingual lexicon induction test description.", "metrics": ["P@1", "P@5"], "primary": "P@1",
        "confidence": 0.95, "bootstrap_samples": 1000,
        "per_language": {"yor": {"base": cell(0.2, 50, source="CLDR"), "trained": cell(0.3, 50, source="CLDR", delta_ci={"P@1": [-0.1, 0.3]})},
                         "kha": {"skipped": "no dictionary for kha"}},
        "average": {"base": {**cell(0.2, 50), "languages": 1}, "trained": {**cell(0.3, 50), "languages": 1}},
        "delta_ci": {"trained": {"P@1": [-0.05, 0.25], "P@5": None}},
    }}
    return metrics
