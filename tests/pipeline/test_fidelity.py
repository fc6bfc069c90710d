"""Triplet fidelity on hand-made cases: a perfect positive, an unrelated one, a wrong-way negative."""

import numpy as np
import pytest

from pipeline import fidelity

REFERENCES = [
    "Everyone has the right to education.",
    "No one shall be held in slavery or servitude.",
    "Everyone has the right to freedom of movement within the borders of each state.",
    "Men and women of full age have the right to marry and to found a family.",
]


def rows(strategy: str, positives: list[str], negatives: list[str]) -> list[dict]:
    return [{"strategy": strategy, "lang": "yor", "reference": ref, "positive": p, "negative": n, "status": "ok"}
            for ref, p, n in zip(REFERENCES, positives, negatives)]


def test_pure_scores_on_vectors():
    ref = np.eye(3)  # three orthogonal references
    scores = fidelity.fidelity_scores(positive=np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1.0]]),
                                      negative=np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1.0]]),
                                      reference=ref, own=[0, 1, 2], pool=ref, chrf=np.zeros(3))
    assert scores["positive_cos"].tolist() == pytest.approx([1, 0, 1])
    assert scores["positive_nearest"].tolist() == [1, 0, 1]  # the second positive is nearest reference 0, not its own
    assert scores["negative_cos"].tolist() == pytest.approx([0, 1, 1])
    assert scores["negative_below_positive"].tolist() == [1, 0, 0]  # a tie is not "below"


def test_perfect_positives_score_full_marks_and_unrelated_ones_do_not(minilm_path):
    unrelated = ["The weather was lovely at the beach.", "I like to eat rice with beans.", "My phone battery is dead.",
                 "The football match ended in a draw."]
    negatives = [REFERENCES[1], REFERENCES[2], REFERENCES[3], REFERENCES[0]]  # on-topic, but other articles
    result = fidelity.measure(rows("parallel", REFERENCES, negatives) + rows("icl", unrelated, negatives), minilm_path)
    assert result["skipped"] is None
    perfect, noise = result["per_strategy"]["parallel"], result["per_strategy"]["icl"]
    assert perfect["positive_nearest"] == 1.0 and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["positive_cos"] == pytest.approx(1.0, abs=1e-5)
    assert perfect["negative_below_positive"] == 1.0
    assert noise["positive_nearest"] <= 0.5 and noise["chrf"] < 30 and noise["positive_cos"] < 0.3
    assert noise["negative_below_positive"] == 0.0  # an on-topic negative is closer to the reference than noise
    assert perfect["chance_nearest"] == pytest.approx(0.25)
    assert {(g["strategy"], g["lang"], g["n"]) for g in result["per_group"]} == {("parallel", "yor", 4), ("icl", "yor", 4)}


def test_rows_without_references_are_skipped_with_a_reason():
    result = fidelity.measure([{"strategy": "icl", "lang": "kha", "reference": None, "positive": "a", "negative": "b"}], "")
    assert result["per_group"] == [] and "reference" in result["skipped"]
