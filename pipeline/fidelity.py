"""Triplet fidelity: how close generated positives and negatives are to the seed's human reference translation.

Retrieval on held-out text has a few dozen queries a language; every triplet whose anchor has a reference is a
sample here, so fidelity separates strategies and generators before any training, and says why an encoder did or
did not improve. Per (strategy, language), on every parsed triplet with a reference, under an English encoder:

- positive_cos: mean cosine(positive, reference); a faithful positive is close to 1;
- positive_nearest: share of positives whose nearest reference, among every reference of the language, is their
  own anchor's; a positive "about human rights" but not about its anchor scores near 1 / references;
- chrf: mean sentence chrF (sacrebleu, 0-100) of positive against reference: surface overlap, no encoder;
- negative_cos: mean cosine(negative, reference): how on-topic, so how hard, the negatives are;
- negative_below_positive: share of triplets whose negative is less like the reference than their positive is:
  the order training relies on (a "negative" closer to the reference than the positive teaches the wrong thing).
"""

from __future__ import annotations

import numpy as np

MEASURES = ("positive_cos", "positive_nearest", "chrf", "negative_cos", "negative_below_positive")
MEASURE_LABELS = {"positive_cos": "cos(pos, ref)", "positive_nearest": "pos nearest own ref", "chrf": "chrF(pos, ref)",
                  "negative_cos": "cos(neg, ref)", "negative_below_positive": "neg below pos"}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def chrf_scores(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Sentence-level chrF (sacrebleu's defaults: character 6-grams, beta 2) of each hypothesis against its reference."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return np.array([chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)])


def fidelity_scores(positive: np.ndarray, negative: np.ndarray, reference: np.ndarray, own: list[int],
                    pool: np.ndarray, chrf: np.ndarray) -> dict[str, np.ndarray]:
    """Per-triplet fidelity vectors.

    Args:
        positive, negative, reference: [n, d] embeddings of each triplet's positive, negative and own reference.
        own: index of each triplet's own reference in `pool`.
        pool: [m, d] every distinct reference of the language (the candidates of positive_nearest).
        chrf: [n] chrF of each positive against its reference.
    """
    pos, neg, ref, cands = _unit(positive), _unit(negative), _unit(reference), _unit(pool)
    pos_cos = (pos * ref).sum(1)  # [n]
    neg_cos = (neg * ref).sum(1)  # [n]
    nearest = (pos @ cands.T).argmax(1)  # [n]
    return {"positive_cos": pos_cos, "positive_nearest": (nearest == np.asarray(own)).astype(float), "chrf": chrf,
            "negative_cos": neg_cos, "negative_below_positive": (neg_cos < pos_cos).astype(float)}


def summarise_group(scores: dict[str, np.ndarray], pool_size: int) -> dict:
    """Means of one (strategy, language) group, its size, and the chance level of positive_nearest."""
    n = len(scores["positive_cos"])
    return {"n": n, "references": pool_size, "chance_nearest": 1.0 / max(1, pool_size),
            **{m: float(np.mean(scores[m])) for m in MEASURES}}


def measure(rows: list[dict], encoder_path: str, batch_size: int = 64) -> dict:
    """Fidelity of generations rows (status ok, with a reference) per strategy and language, and per strategy.

    Returns {"per_group": [{strategy, lang, n, ...measures}], "per_strategy": {strategy: means over languages},
    "skipped": reason or None}.
    """
    rows = [r for r in rows if r.get("reference") and r.get("positive") and r.get("negative")]
    if not rows:
        return {"per_group": [], "per_strategy": {}, "skipped": "no parsed triplet has a reference translation (give "
                "seeds an `eng` reference, or use the bundled UDHR)"}
    from pipeline.models import load_inference_encoder

    model = load_inference_encoder(encoder_path)
    texts = sorted({t for r in rows for t in (r["positive"], r["negative"], r["reference"])})
    vectors = dict(zip(texts, model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)))
    emb = lambda col, group: np.stack([vectors[r[col]] for r in group])  # noqa: E731
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["lang"]), []).append(r)
    pools = {lang: sorted({r["reference"] for r in rows if r["lang"] == lang}) for lang in {r["lang"] for r in rows}}
    per_group = []
    for (strategy, lang), group in sorted(groups.items()):
        pool = pools[lang]
        index = {ref: i for i, ref in enumerate(pool)}
        scores = fidelity_scores(emb("positive", group), emb("negative", group), emb("reference", group),
                                 [index[r["reference"]] for r in group], np.stack([vectors[t] for t in pool]),
                                 chrf_scores([r["positive"] for r in group], [r["reference"] for r in group]))
        per_group.append({"strategy": strategy, "lang": lang, **summarise_group(scores, len(pool))})
    per_strategy = {}
    for strategy in dict.fromkeys(g["strategy"] for g in per_group):
        mine = [g for g in per_group if g["strategy"] == strategy]
        per_strategy[strategy] = {"n": sum(g["n"] for g in mine), "languages": len(mine),
                                  "chance_nearest": float(np.mean([g["chance_nearest"] for g in mine])),
                                  **{m: float(np.mean([g[m] for g in mine])) for m in MEASURES}}
    return {"per_group": per_group, "per_strategy": per_strategy, "skipped": None}
