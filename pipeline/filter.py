"""Stage `filter`: generated rows -> clean triplets, with every dropped row and its reason kept.

Each check is a small function returning None (keep) or a reason; the first reason drops
the row. Counts per reason go to the manifest, the dropped rows to dropped.parquet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pycountry

from pipeline.config import FilterConfig, RunConfig
from pipeline.manifest import StageOutput, join

TRIPLET_SCHEMA = pa.schema([(c, pa.string()) for c in ("id", "lang", "strategy", "anchor", "positive", "negative")])
DROPPED_SCHEMA = pa.schema([(c, pa.string()) for c in ("id", "lang", "strategy", "anchor", "positive", "negative", "reason")])


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=None)
def langid_code(iso639_3: str) -> str | None:
    """py3langid's two-letter label for an ISO 639-3 code, or None when it does not know the language."""
    lang = pycountry.languages.get(alpha_3=iso639_3)
    code = getattr(lang, "alpha_2", None)
    return code if code in _identifier().nb_classes else None


def identify(text: str) -> tuple[str, float]:
    label, prob = _identifier().classify(text)
    return label, float(prob)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?")


def check_generated(row: dict, cfg: FilterConfig) -> str | None:
    return None if row["status"] == "ok" else f"generation:{row['status']}"


def check_lengths(row: dict, cfg: FilterConfig) -> str | None:
    for role in ("positive", "negative"):
        n = len(row[role] or "")
        if n < cfg.min_chars:
            return f"{role}_too_short"
        if n > cfg.max_chars:
            return f"{role}_too_long"
    return None


def check_copies(row: dict, cfg: FilterConfig) -> str | None:
    anchor, pos, neg = _norm(row["anchor"]), _norm(row["positive"]), _norm(row["negative"])
    if pos == anchor:
        return "positive_copies_anchor"
    if neg == anchor:
        return "negative_copies_anchor"
    if pos == neg:
        return "positive_equals_negative"
    return None


def make_language_check(expected_of: Callable[[dict], str]) -> Callable[[dict, FilterConfig], str | None]:
    def check_language(row: dict, cfg: FilterConfig) -> str | None:
        if not cfg.language_check:
            return None
        expected = langid_code(expected_of(row))
        if expected is None:  # py3langid does not know the language: it cannot judge
            return None
        for role in ("positive", "negative"):
            label, prob = identify(row[role])
            if label != expected and prob >= cfg.min_language_confidence:
                return f"{role}_wrong_language"
        return None

    return check_language


def filter_rows(rows: list[dict], cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """(kept, dropped-with-reason); exact duplicate triplets after normalisation are dropped too."""
    expected = (lambda row: "eng") if cfg.synthesis.output_language == "eng" else (lambda row: row["lang"])
    checks = [check_generated, check_lengths, check_copies, make_language_check(expected)]
    kept, dropped, seen = [], [], set()
    for row in rows:
        reason = next((r for check in checks if (r := check(row, cfg.filter))), None)
        if reason is None:
            key = (row["strategy"], row["lang"], _norm(row["anchor"]), _norm(row["positive"]), _norm(row["negative"]))
            reason = "duplicate" if key in seen else None
            seen.add(key)
        triplet = {c: row[c] for c in TRIPLET_SCHEMA.names}
        (kept.append(triplet) if reason is None else dropped.append({**triplet, "reason": reason}))
    return kept, dropped


def margins(rows: list[dict], encoder_path: str, prefix: str) -> list[float]:
    """cos(anchor, positive) - cos(anchor, negative) per row, by the given (base) encoder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(encoder_path, device="cpu")
    emb = {col: model.encode([r[col] for r in rows], prompt=prefix, normalize_embeddings=True, convert_to_numpy=True)
           for col in ("anchor", "positive", "negative")}
    return ((emb["anchor"] * emb["positive"]).sum(1) - (emb["anchor"] * emb["negative"]).sum(1)).tolist()


def apply_margin(kept: list[dict], cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """Drop triplets the base encoder does not rank positive-over-negative by at least filter.margin."""
    from pipeline.models import resolve_model

    if cfg.filter.margin is None or not kept:
        return kept, []
    scores = margins(kept, resolve_model(cfg.train.encoder, cfg.cache_dir), cfg.train.prefix)
    passed = [r for r, m in zip(kept, scores) if m >= cfg.filter.margin]
    failed = [{**r, "reason": "margin_below_threshold"} for r, m in zip(kept, scores) if m < cfg.filter.margin]
    return passed, failed


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    rows = pads.dataset(inputs["generations"], format="parquet").to_table().to_pylist()
    kept, dropped = filter_rows(rows, cfg)
    kept, below_margin = apply_margin(kept, cfg)
    dropped += below_margin
    triplets_path, dropped_path = join(out_dir, "triplets.parquet"), join(out_dir, "dropped.parquet")
    pq.write_table(pa.Table.from_pylist(sorted(kept, key=lambda r: r["id"]), schema=TRIPLET_SCHEMA), triplets_path)
    pq.write_table(pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA), dropped_path)
    reasons = Counter(r["reason"].split(";")[0] if r["reason"].startswith("generation:") else r["reason"] for r in dropped)
    return StageOutput(
        outputs={"triplets": triplets_path, "dropped": dropped_path},
        counts={"input": len(rows), "kept": len(kept), "dropped": len(dropped)},
        details={
            "drop_reasons": dict(sorted(reasons.items())),
            "kept_per_language": dict(sorted(Counter(r["lang"] for r in kept).items())),
            "kept_per_strategy": dict(sorted(Counter(r["strategy"] for r in kept).items())),
            "drop_reasons_per_strategy": {
                s: dict(sorted(Counter(r["reason"].split(";")[0] for r in dropped if r["strategy"] == s).items()))
                for s in sorted({r["strategy"] for r in rows})},
        },
    )
