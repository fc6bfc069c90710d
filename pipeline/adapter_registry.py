"""The adapters registry: which LoRA adapter synthesis uses for a (strategy, role, language).

The adapters stage writes it (adapters/registry.parquet); synthesis and `bootembed adapters list` read it. Trained
adapters are recorded relative to the registry's folder, so a moved run keeps its adapters.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

REGISTRY_SCHEMA = pa.schema([
    ("name", pa.string()), ("kind", pa.string()), ("strategy", pa.string()), ("role", pa.string()),
    ("lang", pa.string()), ("base_model", pa.string()), ("path", pa.string()), ("data", pa.string()),
    ("examples", pa.int64()), ("steps", pa.int64()), ("loss_first", pa.float64()), ("loss_last", pa.float64()),
    ("seconds", pa.float64()),
])


def read_registry(path: str) -> list[dict]:
    """Registry rows with `path` made absolute (trained adapters are recorded relative to the registry's folder)."""
    if not os.path.exists(path):
        return []
    rows = pq.read_table(path).to_pylist()
    folder = os.path.dirname(os.path.abspath(path))
    for r in rows:
        r["path"] = r["path"] if os.path.isabs(r["path"]) else os.path.join(folder, r["path"])
    return rows


def find_adapter(registry: list[dict], strategy: str, role: str, lang: str) -> dict | None:
    """The adapter synthesis uses for one (strategy, role, language); XL-LoRA adapters serve every language."""
    for r in registry:
        if r["strategy"] == strategy and r["role"] == role and r["lang"] in (lang, None):
            return r
    return None


def registry_by_language(registry: list[dict]) -> dict[str | None, list[dict]]:
    """Registry rows per language (None: adapters that serve every language), each list in registry order.

    With thousands of languages the registry has thousands of rows: a request looks only at its language's few
    and the shared ones, instead of scanning the whole registry (which made planning quadratic in languages).
    """
    by_lang: dict[str | None, list[dict]] = {}
    for r in registry:
        by_lang.setdefault(r["lang"], []).append(r)
    return by_lang


def registry_row(name: str, kind: str, strategy: str, role: str | None, lang: str | None, base: str, path: str,
                 data: str, stats: dict | None = None) -> dict:
    stats = stats or {}
    return {"name": name, "kind": kind, "strategy": strategy, "role": role, "lang": lang, "base_model": base, "path": path,
            "data": data, "examples": stats.get("examples"), "steps": stats.get("steps"),
            "loss_first": stats.get("loss_first"), "loss_last": stats.get("loss_last"), "seconds": stats.get("seconds")}


def format_registry(rows: list[dict]) -> str:
    """A table for `bootembed adapters list`."""
    if not rows:
        return "no adapters (the run uses only strategy icl, or its adapters stage has not run)"
    head = ["name", "strategy", "role", "lang", "kind", "steps", "loss first->last", "data"]
    lines = [head]
    for r in rows:
        loss = f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}" if r.get("loss_first") is not None else "-"
        lines.append([r["name"], r["strategy"] or "-", r["role"] or "-", r["lang"] or "all", r["kind"],
                      str(r["steps"] or "-"), loss, r["data"]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)
