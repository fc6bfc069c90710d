import numpy as np
import pytest

from pipeline.evaluation.summary import summarise, summarise_tasks


def test_summarise_averages_languages_and_marks_skips():
    per_item = {"yor": {"base": {"hit1": np.array([1, 0, 0, 0.0])}, "trained": {"hit1": np.array([1, 1, 0, 0.0])}},
                "swh": {"base": {"hit1": np.array([1, 1.0])}, "trained": {"hit1": np.array([1, 1.0])}}}
    out = summarise(per_item, {"kha": "no dictionary for kha"}, {"P@1": "hit1"}, "P@1", ["base", "trained"], samples=200)
    assert out["per_language"]["kha"] == {"skipped": "no dictionary for kha"}
    assert out["average"]["base"]["P@1"] == pytest.approx((0.25 + 1) / 2)
    assert out["average"]["trained"]["n"] == 6 and out["average"]["trained"]["languages"] == 2
    lo, hi = out["delta_ci"]["trained"]["P@1"]
    assert lo <= 0.125 <= hi
    assert out["per_language"]["swh"]["trained"]["delta_ci"]["P@1"] == [0.0, 0.0]
    assert "delta_ci" not in out["per_language"]["swh"]["base"]


def test_a_corpus_level_metric_is_averaged_without_an_interval():
    per_item = {lang: {m: {"correct": np.array([1.0, 0.0, 1.0]), "macro_f1": f1} for m, f1 in (("base", 0.5), ("trained", 0.7))}
                for lang in ("yor", "quc")}
    out = summarise(per_item, {}, {"accuracy": "correct", "macro-F1": "=macro_f1"}, "accuracy", ["base", "trained"], samples=50)
    avg = out["average"]["trained"]
    assert avg["macro-F1"] == pytest.approx(0.7) and avg["accuracy"] == pytest.approx(2 / 3) and avg["n"] == 6
    assert "macro-F1" not in avg["ci"] and len(avg["ci"]["accuracy"]) == 2


def test_a_language_without_items_is_skipped_not_nan(make_config):
    cfg = make_config(languages=["yor", "kha"], evaluate={"tasks": [], "bootstrap_samples": 50})
    vectors = ("hit1_to", "rr_to", "ndcg_to", "hit1_from", "rr_from", "ndcg_from")
    items = {"yor": {**{k: np.ones(3) for k in vectors}, "f1_to": 1.0, "f1_from": 1.0},
             "kha": {**{k: np.zeros(0) for k in vectors}, "f1_to": 0.0, "f1_from": 0.0}}
    models = ("base", "trained")
    out = summarise_tasks(cfg, {m: {"retrieval": items} for m in models}, {m: {} for m in models}, {}, {}, {})
    assert out["retrieval"]["per_language"]["kha"]["skipped"].startswith("no items")
    assert out["retrieval"]["average"]["base"]["x->eng acc@1"] == 1.0 and out["retrieval"]["average"]["base"]["languages"] == 1
