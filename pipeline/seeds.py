"""Stage `seeds`: seed text per language -> anchors for synthesis + a held-out evaluation split.

The held-out split is a fixed set of aligned UDHR units (the same units in every language);
no text of those units reaches synthesis or training, not even through a user's seed file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.corpus import load_udhr, udhr_languages
from pipeline.manifest import StageOutput, join

TRAIN_SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("text", pa.string()), ("source", pa.string())])
EVAL_SCHEMA = pa.schema([("lang", pa.string()), ("unit", pa.int32()), ("text", pa.string()), ("held_out", pa.bool_())])
PIVOT = "eng"  # the language held-out target text is aligned with

_SENTENCE_END = re.compile(r"(?<=[.!?;։।။።።။።॥。！？])\s+")


class SeedError(ValueError):
    """Seed input that cannot be used; the message names the file, line and field."""


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_sentences(text: str) -> list[str]:
    return [s for s in (normalise(p) for p in _SENTENCE_END.split(text)) if s]


def row_id(lang: str, text: str) -> str:
    return f"{lang}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def held_out_units(units: list[int], fraction: float, seed: int) -> set[int]:
    """A deterministic `fraction` of the aligned units, the same for every language."""
    ordered = sorted(units)
    random.Random(seed).shuffle(ordered)
    return set(ordered[: max(1, round(len(ordered) * fraction))])


def language_of_file(path: Path, languages: list[str]) -> str:
    """`seeds.yor.txt` or `yor.txt` -> 'yor'."""
    stem = path.name.split(".")[:-1]
    code = stem[-1] if stem else ""
    if code not in languages:
        raise SeedError(
            f"{path}: cannot tell its language: the file has no `lang` column and its name does not end in one of "
            f"the configured languages {shown(languages)} (name it e.g. seeds.{languages[0]}{path.suffix}, or add a `lang` column)"
        )
    return code


def read_records(path: Path) -> list[dict]:
    """Rows of a user file (.txt, .jsonl, .csv, .tsv, .parquet) as dicts, each with its 1-based `line`.

    Seed files, adapter task data and STS pairs are all read here, so their errors name file and line alike.
    """
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [{"text": t, "line": i} for i, t in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SeedError(f"{path}:{i}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise SeedError(f"{path}:{i}: expected a JSON object with a `text` field, got {type(row).__name__}")
            rows.append({**row, "line": i})
        return rows
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return [{**row, "line": i} for i, row in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), 2)]
    if suffix == ".parquet":
        return [{**row, "line": i} for i, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    raise SeedError(f"{path}: unsupported seed file type {suffix!r} (use .txt, .jsonl, .csv, .tsv or .parquet)")


def shown(languages: list[str], most: int = 12) -> str:
    """The configured languages for an error message; a list of thousands is cut."""
    return str(languages) if len(languages) <= most else f"[{', '.join(languages[:most])}, ... {len(languages)} in all]"


def read_seed_file(path_text: str, languages: list[str]) -> list[tuple[str, str]]:
    """(lang, text) pairs of one user file; raise SeedError naming file, line and field."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise SeedError(f"seeds.files: {path} does not exist")
    records = read_records(path)
    if not records:
        raise SeedError(f"{path}: the file is empty (no seed text)")
    has_lang = "lang" in records[0]
    default_lang = None if has_lang else language_of_file(path, languages)
    known, pairs = set(languages), []
    for row in records:
        if "text" not in row:
            fields = sorted(k for k in row if k != "line")
            raise SeedError(f"{path}:{row['line']}: no `text` field (fields: {fields})")
        lang = row.get("lang") if has_lang else default_lang
        if lang not in known:
            raise SeedError(f"{path}:{row['line']}: lang {lang!r} is not one of the configured languages {shown(languages)}")
        text = normalise(str(row["text"] or ""))
        if text:
            pairs.append((lang, text))
    if not pairs:
        raise SeedError(f"{path}: every row is empty (no seed text)")
    return pairs


def anchors_of(texts: list[str], cfg: RunConfig) -> list[str]:
    """Sentences within the length bounds, deduplicated, in a seeded sample of at most max_per_language."""
    pieces = [s for t in texts for s in (split_sentences(t) if cfg.seeds.split_sentences else [normalise(t)])]
    kept = [s for s in dict.fromkeys(pieces) if cfg.seeds.min_chars <= len(s) <= cfg.seeds.max_chars]
    random.Random(cfg.seed).shuffle(kept)
    return kept[: cfg.seeds.max_per_language]


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    langs = cfg.languages
    user_pairs = [pair for f in cfg.seeds.files for pair in read_seed_file(f, langs)]
    udhr_langs = [lang for lang in langs if lang in udhr_languages()] if cfg.seeds.udhr else []
    udhr = load_udhr(sorted({*udhr_langs, PIVOT})).to_pylist() if udhr_langs else []
    eval_units = held_out_units([r["unit"] for r in udhr if r["lang"] == PIVOT], cfg.seeds.eval_fraction, cfg.seed)

    held_out = [r for r in udhr if r["unit"] in eval_units or r["lang"] == PIVOT]
    held_out_text = {s for r in held_out for s in split_sentences(r["text"])} | {normalise(r["text"]) for r in held_out}
    texts: dict[str, list[str]] = {lang: [] for lang in langs}
    sources: dict[str, set[str]] = {lang: set() for lang in langs}
    for r in udhr:
        if r["lang"] in texts and r["unit"] not in eval_units:
            texts[r["lang"]].append(r["text"])
            sources[r["lang"]].add("udhr")
    for lang, text in user_pairs:
        texts[lang].append(text)
        sources[lang].add("files")

    missing = [lang for lang in langs if not texts[lang]]
    if missing:
        raise SeedError(
            f"no seed text for {missing}: not in the bundled UDHR ({len(udhr_languages())} languages) "
            f"and no file in seeds.files provides it; add a seed file such as seeds.{missing[0]}.txt"
        )

    rows, leaked = [], 0
    for lang in langs:
        for text in anchors_of(texts[lang], cfg):
            if text in held_out_text:
                leaked += 1
                continue
            rows.append({"id": row_id(lang, text), "lang": lang, "text": text, "source": "+".join(sorted(sources[lang]))})
    # Every unit is written (as retrieval candidates); only held_out ones are ever used as queries.
    eval_rows = [{"lang": r["lang"], "unit": r["unit"], "text": r["text"], "held_out": r["unit"] in eval_units} for r in udhr]

    train_path, eval_path = join(out_dir, "train.parquet"), join(out_dir, "eval.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA), train_path)
    pq.write_table(pa.Table.from_pylist(eval_rows, schema=EVAL_SCHEMA), eval_path)
    counts = Counter(r["lang"] for r in rows)  # one pass: a run may have thousands of languages
    per_lang = {lang: counts[lang] for lang in langs}
    return StageOutput(
        outputs={"train": train_path, "eval": eval_path},
        counts={"anchors": len(rows), "eval_units": len(eval_units), "dropped_held_out_copies": leaked},
        details={"anchors_per_language": per_lang, "eval_units": sorted(eval_units), "no_udhr_eval": sorted(set(langs) - set(udhr_langs))},
    )
