import json

import numpy as np
import pytest

from pipeline.evaluate import bitext_scores, plot_retrieval, report_markdown, retrieval_accuracy


def test_identical_embeddings_retrieve_perfectly_and_shuffled_ids_do_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    ids = list(range(20))
    assert retrieval_accuracy(x, ids, x, ids) == 1.0
    assert retrieval_accuracy(x, ids, x, list(rng.permutation(20))) <= 0.15


def test_bitext_queries_are_held_out_units_and_candidates_every_unit():
    rows, vectors = [], []
    for unit in range(6):
        v = np.eye(6)[unit]
        rows += [{"lang": "eng", "unit": unit, "held_out": unit < 2}, {"lang": "yor", "unit": unit, "held_out": unit < 2}]
        vectors += [v, v if unit != 1 else np.eye(6)[5]]  # yor unit 1 looks like eng unit 5
    scores = bitext_scores(rows, np.array(vectors), "yor")
    assert scores["queries"] == 2 and scores["candidates_eng"] == 6 and scores["candidates_lang"] == 6
    assert scores["to_eng"] == 0.5  # unit 0 right, unit 1 retrieves eng unit 5
    assert scores["from_eng"] == 0.5


@pytest.fixture
def metrics():
    per = lambda a, b: {"to_eng": a, "from_eng": b, "queries": 23, "candidates_eng": 58, "candidates_lang": 56}  # noqa: E731
    return {
        "languages": ["yor", "kha"], "config_hash": "abc", "skipped": {},
        "models": {
            "base": {"per_language": {"yor": per(0.3, 0.2), "kha": per(0.1, 0.1)}, "average": {"to_eng": 0.2, "from_eng": 0.15}},
            "trained": {"per_language": {"yor": per(0.4, 0.2), "kha": per(0.05, 0.3)}, "average": {"to_eng": 0.225, "from_eng": 0.25}},
        },
    }


def test_report_puts_models_side_by_side_with_deltas_and_best_marked(metrics):
    text = report_markdown(metrics, {"filter counts": {"kept": 10}, "examples": [
        {"lang": "yor", "anchor": "a|b", "positive": "p", "negative": "n"}]})
    assert "| yor | 0.300 | **0.400** | +0.100 | 23 |" in text
    assert "| kha | **0.100** | 0.050 | -0.050 | 23 |" in text
    assert "| average | 0.200 | **0.225** | +0.025 | 46 |" in text
    assert "| yor | a\\|b | p | n |" in text
    assert "filter counts: {'kept': 10}" in text


def test_plot_is_written_as_png(metrics, tmp_path):
    path = tmp_path / "r.png"
    plot_retrieval(metrics, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
