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

from pipeline.config import FilterConfig, RunConfig
from pipeline.langid import identify, langid_code
from pipeline import fidelity
from pipeline.manifest import StageOutput, join, write_json
from pipeline.prompts import fewshot_pool

TRIPLET_SCHEMA = pa.schema([(c, pa.string()) for c in ("id", "lang", "strategy", "anchor", "positive", "negative")])
DROPPED_SCHEMA = pa.schema([(c, pa.string()) for c in ("id", "lang", "strategy", "anchor", "positive", "negative", "reason")])


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


HUMAN_STRATEGIES = {"parallel"}  # positives are human translations: not the generator's (see also FilterConfig.margin)


@lru_cache(maxsize=1)
def example_outputs() -> frozenset[str]:
    """Every few-shot example's answer, normalised: the texts a generator may echo instead of answering."""
    return frozenset(_norm(output) for pairs in fewshot_pool().values() for _, output in pairs)


def check_example_copies(row: dict, cfg: FilterConfig) -> str | None:
    """A small generator often answers with an example's answer (measured: SmolLM2-135M gave one Yoruba negative
    twelve times); such a text says nothing about its anchor, and repeated across a batch it teaches the encoder that
    different anchors mean the same. Adapters trained on the same pairs can echo them too."""
    roles = ("negative",) if row["strategy"] in HUMAN_STRATEGIES else ("positive", "negative")
    for role in roles:
        if _norm(row[role]) in example_outputs():
            return f"{role}_copies_example"
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
    checks = [check_generated, check_lengths, check_copies, check_example_copies, make_language_check(expected)]
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
    from pipeline.models import load_inference_encoder

    model = load_inference_encoder(encoder_path)
    emb = {col: model.encode([r[col] for r in rows], prompt=prefix, normalize_embeddings=True, convert_to_numpy=True)
           for col in ("anchor", "positive", "negative")}
    return ((emb["anchor"] * emb["positive"]).sum(1) - (emb["anchor"] * emb["negative"]).sum(1)).tolist()


def apply_margin(kept: list[dict], cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """Drop synthetic triplets the base encoder does not rank positive-over-negative by at least filter.margin."""
    from pipeline.models import resolve_model

    synthetic = [r for r in kept if r["strategy"] not in HUMAN_STRATEGIES]
    if cfg.filter.margin is None or not synthetic:
        return kept, []
    scores = margins(synthetic, resolve_model(cfg.train.encoder, cfg.cache_dir), cfg.train.prefix)
    passed = [r for r in kept if r["strategy"] in HUMAN_STRATEGIES] + [r for r, m in zip(synthetic, scores) if m >= cfg.filter.margin]
    failed = [{**r, "reason": "margin_below_threshold"} for r, m in zip(synthetic, scores) if m < cfg.filter.margin]
    return passed, failed


def triplet_fidelity(rows: list[dict], cfg: RunConfig) -> dict:
    """Fidelity of every parsed triplet against its reference (pipeline/fidelity.py), before any is dropped."""
    from pipeline.models import resolve_model

    parsed = [r for r in rows if r["status"] == "ok"]
    if not any(r.get("reference") for r in parsed):
        return fidelity.measure([], "")
    return {"encoder": cfg.filter.fidelity_encoder,
            **fidelity.measure(parsed, resolve_model(cfg.filter.fidelity_encoder, cfg.cache_dir))}


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    rows = pads.dataset(inputs["generations"], format="parquet").to_table().to_pylist()
    kept, dropped = filter_rows(rows, cfg)
    kept, below_margin = apply_margin(kept, cfg)
    dropped += below_margin
    scores = triplet_fidelity(rows, cfg)
    triplets_path, dropped_path = join(out_dir, "triplets.parquet"), join(out_dir, "dropped.parquet")
    fidelity_path = join(out_dir, "fidelity.json")
    write_json(fidelity_path, scores)
    pq.write_table(pa.Table.from_pylist(sorted(kept, key=lambda r: r["id"]), schema=TRIPLET_SCHEMA), triplets_path)
    pq.write_table(pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA), dropped_path)
    reasons = Counter(r["reason"].split(";")[0] if r["reason"].startswith("generation:") else r["reason"] for r in dropped)
    return StageOutput(
        outputs={"triplets": triplets_path, "dropped": dropped_path, "fidelity": fidelity_path},
        counts={"input": len(rows), "kept": len(kept), "dropped": len(dropped)},
        details={
            "drop_reasons": dict(sorted(reasons.items())),
            "kept_per_language": dict(sorted(Counter(r["lang"] for r in kept).items())),
            "kept_per_strategy": dict(sorted(Counter(r["strategy"] for r in kept).items())),
            "fidelity": scores["per_strategy"],
            "drop_reasons_per_strategy": {
                s: dict(sorted(Counter(r["reason"].split(";")[0] for r in dropped if r["strategy"] == s).items()))
                for s in sorted({r["strategy"] for r in rows})},
        },
    )
