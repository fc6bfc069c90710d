import numpy as np
import pytest

from pipeline.evaluation import Skipped
from pipeline.evaluation import metrics as m

# --- ranking: acc@1, MRR@10, nDCG@10 ----------------------------------------------------------------


def test_identical_embeddings_retrieve_perfectly_and_shuffled_ids_do_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    ids = list(range(20))
    assert m.retrieval_accuracy(x, ids, x, ids) == 1.0
    assert m.retrieval_accuracy(x, ids, x, list(rng.permutation(20))) <= 0.15


def test_identity_embeddings_rank_first_and_mrr_counts_lower_ranks():
    x = np.random.default_rng(0).normal(size=(15, 8))
    ids = list(range(15))
    s = m.rank_scores(x, ids, x, ids)
    assert s["hit1"].mean() == 1.0 and s["rr"].mean() == 1.0
    # query 0's right answer is the 2nd nearest: hit 0, reciprocal rank 1/2
    q = np.array([[1.0, 0.1]])
    c = np.array([[1.0, 0.0], [1.0, 0.5], [-1.0, 0.0]])
    s = m.rank_scores(q, ["b"], c, ["a", "b", "c"])
    assert s["hit1"].tolist() == [0.0] and s["rr"].tolist() == [0.5]
    assert m.rank_scores(q, ["z"], c, ["a", "b", "c"])["rr"].tolist() == [0.0]


def test_ndcg_counts_every_relevant_candidate_discounted_by_log2_rank():
    sims = np.array([[0.9, 0.8, 0.7, 0.6],    # relevant {1}: rank 2
                     [0.9, 0.8, 0.7, 0.6],    # relevant {0, 2}: ranks 1 and 3
                     [0.9, 0.8, 0.7, 0.6],    # relevant {3}: rank 4, beyond k = 3
                     [0.9, 0.8, 0.7, 0.6]])   # nothing relevant
    s = m.ranking_scores(sims, [{1}, {0, 2}, {3}, set()], k=3)
    assert s["ndcg"] == pytest.approx([1 / np.log2(3), (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 0.0, 0.0])
    assert s["hit1"].tolist() == [0.0, 1.0, 0.0, 0.0] and s["rr"] == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert s["top"].tolist() == [0, 0, 0, 0]
    # a perfect ranking of two relevant candidates is 1, whatever their number
    assert m.ranking_scores(np.array([[0.9, 0.8, 0.1]]), [{0, 1}])["ndcg"].tolist() == [1.0]


def test_ndcg_without_ties_is_sklearns_ndcg_score_and_ties_keep_candidate_order():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(3)
    sims = rng.normal(size=(40, 25))  # no ties
    relevant = [set(rng.choice(25, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(40)]
    gains = np.array([[j in rel for j in range(25)] for rel in relevant], dtype=float)
    assert m.ranking_scores(sims, relevant)["ndcg"].mean() == pytest.approx(ndcg_score(gains, sims, k=10), abs=1e-12)
    # a tie: ndcg_score averages the tied orders, ranking_scores keeps candidate order (the relevant one second)
    tied = np.array([[0.5, 0.5, 0.1]])
    assert m.ranking_scores(tied, [{1}])["ndcg"].tolist() == [1 / np.log2(3)]
    assert ndcg_score([[0, 1, 0]], tied, k=10) == pytest.approx((1 + 1 / np.log2(3)) / 2)


def test_query_doc_items_rank_every_document():
    items = m.query_doc_items(np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0]]), np.eye(2), [{0}, {1}, {0}])
    assert items["hit1"].tolist() == [1.0, 1.0, 0.0] and items["rr"].tolist() == [1.0, 1.0, 0.5]
    sims = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.9]])  # q1: A first, B third; q2: A second
    s = m.ranking_scores(sims, [{0, 1}, {0}])
    assert s["hit1"].tolist() == [1.0, 0.0] and s["rr"].tolist() == [1.0, 1 / 3]
    assert s["ndcg"] == pytest.approx([(1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 1 / np.log2(4)])


# --- bitext retrieval -----------------------------------------------------------------------------


def test_bitext_queries_are_held_out_units_and_candidates_every_unit():
    rows, vectors = [], []
    for unit in range(6):
        v = np.eye(6)[unit]
        rows += [{"lang": "eng", "unit": unit, "held_out": unit < 2}, {"lang": "yor", "unit": unit, "held_out": unit < 2}]
        vectors += [v, v if unit != 1 else np.eye(6)[5]]  # yor unit 1 looks like eng unit 5
    scores = m.bitext_scores(m.bitext_items(rows, np.array(vectors), "yor"))
    assert scores["queries"] == 2 and scores["candidates_eng"] == 6 and scores["candidates_lang"] == 6
    assert scores["to_eng"] == 0.5  # unit 0 right, unit 1 retrieves eng unit 5
    assert scores["from_eng"] == 0.5
    # yor unit 1 = eng unit 5: its English translation (unit 1, orthogonal) ties with 4 others after unit 5 -> rank 3
    assert scores["mrr10_to_eng"] == pytest.approx((1 + 1 / 3) / 2)


def test_identity_embeddings_give_acc_and_mrr_one():
    rows = [{"lang": lang, "unit": u, "held_out": True} for u in range(8) for lang in ("eng", "yor")]
    scores = m.bitext_scores(m.bitext_items(rows, np.repeat(np.eye(8), 2, axis=0), "yor"))
    assert scores["to_eng"] == scores["from_eng"] == scores["mrr10_to_eng"] == scores["mrr10_from_eng"] == 1.0


def test_bitext_f1_is_mtebs_weighted_f1_of_the_top_match():
    from sklearn.metrics import f1_score

    assert m.bitext_f1([0, 1, 2], [0, 1, 2]) == 1.0
    # queries 0 and 1 both take candidate 0: query 0 is right but shares its match (F1 2/3), query 1 is wrong
    assert m.bitext_f1([0, 1, 2], [0, 0, 2]) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert m.bitext_f1(["a", "b"], ["b", "a"]) == 0.0
    assert m.bitext_f1([], []) == 0.0 and m.bitext_f1([7], [7]) == 1.0 and m.bitext_f1([7], [8]) == 0.0
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 30, 200).tolist(), rng.integers(0, 30, 200).tolist()
    assert m.bitext_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0))


def test_bitext_f1_weights_labels_in_query_order_exactly():
    """The weighted sum runs in the order queries name labels, so reports keep their last digit (f1_score's own
    average sums in sorted order): pinned against the formula written out."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        gold = rng.integers(0, 40, 60).tolist()
        pred = [g if rng.random() < 0.6 else int(rng.integers(0, 40)) for g in gold]
        support, predictions = {g: gold.count(g) for g in gold}, {p: pred.count(p) for p in pred}
        right = {g: sum(1 for a, b in zip(gold, pred) if a == b == g) for g in support}
        expected = sum(2 * right[c] / (support[c] + predictions.get(c, 0)) * support[c] for c in support) / len(gold)
        assert m.bitext_f1(gold, pred) == expected


def test_parallel_items_score_both_directions_and_a_repeated_translation_is_one_candidate():
    src, eng = ["a", "b", "c", "d"], ["A", "B", "C", "C"]  # "C" translates both c and d
    src_vecs, eng_vecs = np.eye(4), np.eye(4)[[0, 1, 2, 2]]  # the same text, the same vector
    s = m.parallel_items(src_vecs, eng_vecs, src, eng)
    # x->eng: the pool is A, B, C; d is equally far from all three, the tie keeps pool order: A first, C third
    assert s["hit1_to"].tolist() == [1, 1, 1, 0] and s["rr_to"].tolist() == [1, 1, 1, 1 / 3]
    assert s["ndcg_to"] == pytest.approx([1, 1, 1, 1 / np.log2(4)])
    # F1 per gold label: A 1 query right, 2 predictions -> 2 * 1 / (1 + 2); B 1; C 2 queries, 1 right, 1 prediction
    # -> 2 * 1 / (2 + 1), weighted by its 2 queries of 4
    assert s["f1_to"] == pytest.approx((2 / 3 + 1 + 2 * (2 / 3)) / 4)
    # eng->x: both "C" queries retrieve c, right for the first and wrong for the second
    assert s["hit1_from"].tolist() == [1, 1, 1, 0]
    swapped = src_vecs[[1, 0, 2, 3]]  # a looks like b and b like a: both wrong x->eng
    s = m.parallel_items(swapped, eng_vecs, src, eng)
    assert s["hit1_to"].tolist() == [0, 0, 1, 0] and s["rr_to"].tolist() == [0.5, 0.5, 1.0, 1 / 3]


# --- bilingual lexicon induction ------------------------------------------------------------------


def test_bli_identity_is_perfect_and_a_shuffled_dictionary_is_near_zero():
    rng = np.random.default_rng(0)
    n = 60
    eng = [f"e{i}" for i in range(n)]
    vecs = rng.normal(size=(n, 16))
    gold = [{w} for w in eng]
    s = m.bli_scores(vecs, vecs, eng, gold)
    assert s["hit1"].mean() == 1.0 and s["hit5"].mean() == 1.0
    shuffled = [{eng[j]} for j in rng.permutation(n)]
    s = m.bli_scores(vecs, vecs, eng, shuffled)
    assert s["hit1"].mean() <= 0.05 and s["hit5"].mean() <= 0.25
    with pytest.raises(Skipped, match="no overlap"):
        m.bli_scores(np.eye(2), np.eye(2), ["x", "y"], [{"a"}, {"b"}])


# --- topic classification -------------------------------------------------------------------------


def test_probe_separates_toy_data_and_macro_f1():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 4
    y = [c for c in range(3) for _ in range(30)]
    x = centers[y] + rng.normal(scale=0.5, size=(90, 8))
    y_lab = [f"c{c}" for c in y]
    s = m.probe_scores(x, y_lab, x[::-1], y_lab[::-1])
    assert s["correct"].mean() == 1.0 and s["macro_f1"] == 1.0
    assert m.macro_f1(["a", "a", "b", "b"], ["a", "a", "a", "b"]) == pytest.approx((0.8 + 2 / 3) / 2)
    with pytest.raises(Skipped, match="one class"):
        m.probe_scores(x, ["only"] * 90, x, ["only"] * 90)


def test_macro_f1_counts_a_class_only_predicted_as_zero():
    # a: F1 2*1/(2*1+0+1) = 2/3; b: never right, F1 0; c: only predicted, never true, F1 0
    assert m.macro_f1(["a", "a", "b"], ["a", "c", "c"]) == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert m.macro_f1(["x", "y"], ["x", "y"]) == 1.0


# --- STS ------------------------------------------------------------------------------------------


def test_sts_correlation_is_one_when_cosine_orders_pairs_like_the_gold_scores():
    base = np.eye(4)
    angles = np.array([0.1, 0.5, 0.9, 1.3])  # pair i: a vector rotated by angles[i] from base[0]
    v1 = np.tile(base[0], (4, 1))
    v2 = np.stack([np.cos(a) * base[0] + np.sin(a) * base[1] for a in angles])
    assert m.sts_scores(v1, v2, np.array([5.0, 3.0, 2.0, 0.0]))["spearman"] == pytest.approx(1.0)
    assert m.sts_scores(v1, v2, np.array([0.0, 2.0, 3.0, 5.0]))["spearman"] == pytest.approx(-1.0)
    with pytest.raises(Skipped, match="every gold score is the same"):
        m.sts_scores(v1, v2, np.array([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(Skipped, match="a correlation needs at least 3"):
        m.sts_scores(v1[:2], v2[:2], np.array([1.0, 2.0]))
