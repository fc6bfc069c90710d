"""Scores from vectors: ranking (acc@1, MRR@10, nDCG@10), MTEB's bitext-mining F1, BLI P@k, the topic probe and STS.

Every function takes embeddings (or similarities) and returns per-item score vectors (bootstrapped later by
pipeline/evaluation/summary.py) or corpus-level floats. F1 scores and the probe are scikit-learn's, correlations
SciPy's; the ranking scores are computed here because the report needs them per query (see `ranking_scores`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.evaluation import Skipped
from pipeline.records import PIVOT


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (a zero row stays zero), so that a dot product is a cosine."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- ranking

def ranking_scores(sims: np.ndarray, relevant: list[set[int]], k: int = 10) -> dict:
    """Per query (a row of sims [nq, nc]): hit@1, reciprocal rank of the first relevant candidate and nDCG@k, each 0
    when no relevant candidate is in the top k; `top` = the best candidate's index.

    nDCG uses binary gains (a relevant candidate counts 1) and the log2(rank + 1) discount, as pytrec_eval computes
    MTEB's retrieval main score; the ideal ranking puts every relevant candidate first. Ties keep candidate order.
    Computed here rather than by sklearn.metrics.ndcg_score on purpose: the report bootstraps per-query values, which
    ndcg_score does not return (it averages them), and ndcg_score averages over tied orders instead of keeping
    candidate order; without ties the two agree (tests/pipeline/evaluation/test_metrics.py).
    """
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # [nq, min(k, nc)]
    gains = np.zeros(order.shape)  # [nq, min(k, nc)]: 1 where the candidate at that rank is relevant
    for i, rel in enumerate(relevant):
        gains[i] = np.isin(order[i], list(rel))
    first = np.where(gains.any(axis=1), gains.argmax(axis=1), -1)  # [nq]
    discount = 1.0 / np.log2(np.arange(2, order.shape[1] + 2))  # [min(k, nc)]
    ideal = np.array([discount[:len(rel)].sum() for rel in relevant])  # [nq]
    return {"hit1": (first == 0).astype(float),
            "rr": np.where(first >= 0, 1.0 / np.maximum(first + 1, 1), 0.0),
            "ndcg": np.divide(gains @ discount, ideal, out=np.zeros(len(order)), where=ideal > 0),
            "top": order[:, 0] if order.shape[1] else np.zeros(len(order), dtype=int)}


def rank_scores(queries: np.ndarray, query_ids: list, candidates: np.ndarray, candidate_ids: list, k: int = 10) -> dict:
    """`ranking_scores` by cosine, a candidate being relevant to a query when it carries the query's id; `top_id` = the
    best candidate's id."""
    by_id: dict = {}
    for j, c in enumerate(candidate_ids):
        by_id.setdefault(c, set()).add(j)
    sims = normalise(queries) @ normalise(candidates).T  # [nq, nc]
    scores = ranking_scores(sims, [by_id.get(q, set()) for q in query_ids], k)
    return {**scores, "top_id": [candidate_ids[j] for j in scores["top"]]}


def retrieval_accuracy(queries: np.ndarray, query_ids: list, candidates: np.ndarray, candidate_ids: list) -> float:
    """Share of queries whose most similar candidate (cosine) carries the same id."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # [nq, d]
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)  # [nc, d]
    best = (q @ c.T).argmax(axis=1)  # [nq]
    return float(np.mean([query_ids[i] == candidate_ids[j] for i, j in enumerate(best)]))


def query_doc_items(query_vecs: np.ndarray, doc_vecs: np.ndarray, relevant: list[set[int]]) -> dict:
    """Per query: hit1, rr, ndcg of its relevant documents among every document (cosine)."""
    return ranking_scores(normalise(query_vecs) @ normalise(doc_vecs).T, relevant)


# ---------------------------------------------------------------- bitext retrieval

def bitext_f1(gold: list, predicted: list) -> float:
    """MTEB's BitextMining main score: sklearn's f1_score(gold, predicted, average="weighted").

    Per gold label c: F1_c = 2 * (queries of c predicted c) / (queries of c + predictions of c); the average weights
    each label by its number of queries. With one query per label (MTEB's bitext data) it is the share of queries
    matched right, each discounted by how many other queries took the same match. The per-label F1 is sklearn's; the
    weighted sum runs over labels in query order, as reports before sklearn did it (f1_score's own average sums in
    sorted order and can differ in the last bit).
    """
    from sklearn.metrics import precision_recall_fscore_support

    if not gold:
        return 0.0  # no queries: the caller reports the language as skipped
    labels = list(Counter(gold))  # each label once, in the order queries name them
    _, _, f1, support = precision_recall_fscore_support(gold, predicted, labels=labels, average=None, zero_division=0)
    return float(sum(float(f) * int(n) for f, n in zip(f1, support)) / len(gold))


def bitext_direction(queries: np.ndarray, query_ids: list, pool: np.ndarray, pool_ids: list) -> dict:
    """One retrieval direction of a bitext task: per-query hit1 / rr / ndcg, and the direction's MTEB F1."""
    s = rank_scores(queries, query_ids, pool, pool_ids)
    return {"hit1": s["hit1"], "rr": s["rr"], "ndcg": s["ndcg"], "f1": bitext_f1(list(query_ids), s["top_id"])}


def both_directions(to_eng: dict, from_eng: dict) -> dict:
    """{hit1_to, rr_to, ndcg_to, f1_to, hit1_from, ...}: the item keys the retrieval tables read."""
    return {f"{k}_to": v for k, v in to_eng.items()} | {f"{k}_from": v for k, v in from_eng.items()}


def bitext_items(rows: list[dict], embeddings: np.ndarray, lang: str) -> dict:
    """Held-out UDHR bitext retrieval between `lang` and English, both directions: per-query vectors (hit@1,
    reciprocal rank and nDCG within 10), MTEB F1, and the pool sizes.

    rows: {lang, unit, held_out} per embedding row. Queries are the held-out units of `lang` that English has; the
    pool is every unit of the other language, held out or not, so the task is not trivially small.
    """
    idx = {(r["lang"], r["unit"]): i for i, r in enumerate(rows)}
    held = sorted(r["unit"] for r in rows if r["lang"] == lang and r["held_out"] and (PIVOT, r["unit"]) in idx)
    src_all = sorted(r["unit"] for r in rows if r["lang"] == lang)
    eng_all = sorted(r["unit"] for r in rows if r["lang"] == PIVOT)

    def vectors(of: str, units: list) -> np.ndarray:
        return embeddings[[idx[(of, u)] for u in units]]

    to_eng = bitext_direction(vectors(lang, held), held, vectors(PIVOT, eng_all), eng_all)
    from_eng = bitext_direction(vectors(PIVOT, held), held, vectors(lang, src_all), src_all)
    return {**both_directions(to_eng, from_eng), "candidates_eng": len(eng_all), "candidates_lang": len(src_all)}


def bitext_scores(items: dict) -> dict:
    """The legacy retrieval entry of metrics.json (metrics["models"]) from `bitext_items`: acc@1 and MRR@10 both ways."""
    mean = lambda v: float(np.mean(v)) if len(v) else 0.0  # noqa: E731
    return {
        "to_eng": mean(items["hit1_to"]),
        "from_eng": mean(items["hit1_from"]),
        "mrr10_to_eng": mean(items["rr_to"]),
        "mrr10_from_eng": mean(items["rr_from"]),
        "queries": len(items["hit1_to"]),
        "candidates_eng": items["candidates_eng"],
        "candidates_lang": items["candidates_lang"],
    }


def parallel_items(src_vecs: np.ndarray, eng_vecs: np.ndarray, src: list[str], eng: list[str]) -> dict:
    """Both directions over one parallel file: each sentence retrieves its translation among every distinct sentence of
    the other language in the file. A sentence that occurs twice is one candidate, right for both its partners."""
    def pool(vecs: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        first: dict[str, int] = {}  # text -> its first row, in file order
        for i, t in enumerate(texts):
            first.setdefault(t, i)
        return vecs[list(first.values())], list(first)

    return both_directions(bitext_direction(src_vecs, eng, *pool(eng_vecs, eng)),
                           bitext_direction(eng_vecs, src, *pool(src_vecs, src)))


# ---------------------------------------------------------------- bilingual lexicon induction

def bli_scores(src_vecs: np.ndarray, eng_vecs: np.ndarray, eng_words: list[str], gold: list[set[str]]) -> dict:
    """Per query word: is a gold English word the nearest (P@1) / among the 5 nearest (P@5)?"""
    eng_index = {w: i for i, w in enumerate(eng_words)}
    if not any(w in eng_index for g in gold for w in g):
        raise Skipped("no overlap between the dictionary's English words and the vocabulary")
    sims = normalise(src_vecs) @ normalise(eng_vecs).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    words = np.asarray(eng_words, dtype=object)[top]
    hit1 = np.array([w[0] in g for w, g in zip(words, gold)], dtype=float)
    hit5 = np.array([any(x in g for x in w) for w, g in zip(words, gold)], dtype=float)
    return {"hit1": hit1, "hit5": hit5}


# ---------------------------------------------------------------- topic classification

def macro_f1(y_true: list, y_pred: list) -> float:
    """sklearn's macro F1: the unweighted mean of per-class F1 over the classes present in y_true or y_pred (a class
    never predicted right scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(y_true), list(y_pred), average="macro", zero_division=0))


def fit_probe(x_train: np.ndarray, y_train: list, seed: int = 0):
    """Multinomial logistic regression on L2-normalised frozen embeddings (raises Skipped for < 2 classes)."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(y_train))
    if len(classes) < 2:
        raise Skipped(f"label set has one class ({classes[0] if classes else 'none'}): nothing to classify")
    return LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(normalise(x_train), list(y_train))


def probe_scores(x_train: np.ndarray | None, y_train: list, x_test: np.ndarray, y_test: list, seed: int = 0, clf=None) -> dict:
    """Accuracy (per item) and macro-F1 of a probe on the test set; `clf` reuses a probe fitted on the same training set."""
    clf = clf if clf is not None else fit_probe(x_train, y_train, seed)
    unseen = set(y_test) - set(clf.classes_)
    if unseen:
        raise Skipped(f"test labels missing from training: {sorted(unseen)}")
    pred = clf.predict(normalise(x_test)).tolist()
    correct = np.array([p == t for p, t in zip(pred, y_test)], dtype=float)
    return {"correct": correct, "macro_f1": macro_f1(list(y_test), pred)}


# ---------------------------------------------------------------- STS

def sts_scores(vecs1: np.ndarray, vecs2: np.ndarray, gold: np.ndarray) -> dict:
    """Spearman (the paper's and MTEB's STS measure) and Pearson correlation of cosine similarity with the gold scores."""
    from scipy.stats import pearsonr, spearmanr

    if len(gold) < 3:
        raise Skipped(f"only {len(gold)} scored pair(s); a correlation needs at least 3")
    if np.ptp(gold) == 0:
        raise Skipped("every gold score is the same: a correlation is undefined")
    cos = (normalise(vecs1) * normalise(vecs2)).sum(1)
    if np.ptp(cos) == 0:
        return {"spearman": 0.0, "pearson": 0.0, "n": len(gold)}  # the model cannot tell the pairs apart
    return {"spearman": float(spearmanr(cos, gold).statistic), "pearson": float(pearsonr(cos, gold).statistic), "n": len(gold)}
