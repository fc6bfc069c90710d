"""Stage `seeds`: seed text per language -> anchors for synthesis + a held-out evaluation split.

An anchor may carry a `reference`: its human translation into English, which the `parallel` strategy trains on
and triplet fidelity measures generated positives against. The bundled UDHR gives the English unit of every
training unit (sentence by sentence where both sides have as many sentences, else the whole paragraph); a user's
seed file gives an `eng` column, or a second, line-aligned text file.

The held-out split is a fixed set of aligned UDHR units (the same units in every language); no text of those
units, in any language, reaches synthesis or training, not even through a user's seed file or a reference.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.corpus import load_udhr, udhr_languages
from pipeline.langid import is_clearly_not
from pipeline.manifest import StageOutput, join
from pipeline.records import PIVOT, RecordError, aligned_text_files, read_records

TRAIN_SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("text", pa.string()), ("source", pa.string()),
                          ("reference", pa.string())])
EVAL_SCHEMA = pa.schema([("lang", pa.string()), ("unit", pa.int32()), ("text", pa.string()), ("held_out", pa.bool_())])

_SENTENCE_END = re.compile(r"(?<=[.!?;։।။።።။።॥。！？])\s+")


class SeedError(RecordError):
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


def shown(languages: list[str], most: int = 12) -> str:
    """The configured languages for an error message; a list of thousands is cut."""
    return str(languages) if len(languages) <= most else f"[{', '.join(languages[:most])}, ... {len(languages)} in all]"


Seed = tuple[str, str, "str | None"]  # (lang, text, English reference or None)


def read_seed_file(entry: str | list[str], languages: list[str]) -> list[Seed]:
    """(lang, text, reference) rows of one `seeds.files` entry; raise SeedError naming file, line and field."""
    if isinstance(entry, list):
        return read_aligned_seed_files(entry, languages)
    path = Path(entry).expanduser()
    if not path.is_file():
        raise SeedError(f"seeds.files: {path} does not exist")
    try:
        records = read_records(path)
    except RecordError as err:
        raise SeedError(str(err)) from None
    if not records:
        raise SeedError(f"{path}: the file is empty (no seed text)")
    has_lang, has_reference = "lang" in records[0], PIVOT in records[0]
    default_lang = None if has_lang else language_of_file(path, languages)
    known, rows = set(languages), []
    for row in records:
        if "text" not in row:
            fields = sorted(k for k in row if k != "line")
            raise SeedError(f"{path}:{row['line']}: no `text` field (fields: {fields})")
        lang = row.get("lang") if has_lang else default_lang
        if lang not in known:
            raise SeedError(f"{path}:{row['line']}: lang {lang!r} is not one of the configured languages {shown(languages)}")
        text = normalise(str(row["text"] or ""))
        reference = normalise(str(row.get(PIVOT) or "")) if has_reference else None
        if has_reference and bool(text) != bool(reference):
            empty, full = ("text", PIVOT) if not text else (PIVOT, "text")
            raise SeedError(f"{path}:{row['line']}: field `{empty}` is empty but `{full}` is not; each seed needs its "
                            f"English reference in the `{PIVOT}` column (leave both empty to skip the row)")
        if text:
            rows.append((lang, text, reference))
    if not rows:
        raise SeedError(f"{path}: every row is empty (no seed text)")
    return rows


def read_aligned_seed_files(entry: list[str], languages: list[str]) -> list[Seed]:
    """[sentences.yor.txt, english.txt]: line i of the second file is the English reference of line i of the first."""
    target, english = (str(Path(p).expanduser()) for p in entry)
    for p in (target, english):
        if not Path(p).is_file():
            raise SeedError(f"seeds.files: {p} does not exist")
    lang = language_of_file(Path(target), languages)
    try:
        pairs = aligned_text_files(target, english)
    except RecordError as err:
        raise SeedError(str(err)) from None
    if not pairs:
        raise SeedError(f"{target}: every line is empty (no seed text)")
    return [(lang, normalise(text), normalise(reference)) for text, reference in pairs]


def udhr_seeds(udhr: list[dict], lang: str, eval_units: set[int]) -> list[Seed]:
    """The training units of `lang` with their English units as references (never a held-out unit)."""
    english = {r["unit"]: r["text"] for r in udhr if r["lang"] == PIVOT and r["unit"] not in eval_units}
    return [(lang, r["text"], english.get(r["unit"])) for r in udhr
            if r["lang"] == lang and r["unit"] not in eval_units]


def sentence_pairs(text: str, reference: str | None, split: bool) -> list[tuple[str, str | None]]:
    """A seed as anchors: its sentences (each with the reference's sentence of the same rank when both sides have as
    many), or the whole text with the whole reference when they do not align."""
    if not split:
        return [(normalise(text), reference and normalise(reference))]
    sentences = split_sentences(text)
    if reference is None:
        return [(s, None) for s in sentences]
    references = split_sentences(reference)
    if len(references) == len(sentences):
        return list(zip(sentences, references))
    return [(normalise(text), normalise(reference))] + [(s, None) for s in sentences]


def anchors_of(seeds: list[tuple[str, str | None]], cfg: RunConfig) -> list[tuple[str, str | None]]:
    """(anchor, reference) within the length bounds, deduplicated, in a seeded sample of at most max_per_language.

    An anchor seen with and without a reference keeps the reference; a paragraph that does not align sentence by
    sentence is offered whole with its reference and as reference-less sentences, and the length bounds choose.
    """
    pieces: dict[str, str | None] = {}
    for text, reference in seeds:
        for anchor, ref in sentence_pairs(text, reference, cfg.seeds.split_sentences):
            if pieces.get(anchor) is None:
                pieces[anchor] = ref
    kept = [(a, r) for a, r in pieces.items() if cfg.seeds.min_chars <= len(a) <= cfg.seeds.max_chars]
    random.Random(cfg.seed).shuffle(kept)
    return kept[: cfg.seeds.max_per_language]


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    langs = cfg.languages
    user_seeds = [row for entry in cfg.seeds.files for row in read_seed_file(entry, langs)]
    udhr_langs = [lang for lang in langs if lang in udhr_languages()] if cfg.seeds.udhr else []
    udhr = load_udhr(sorted({*udhr_langs, PIVOT})).to_pylist() if udhr_langs else []
    eval_units = held_out_units([r["unit"] for r in udhr if r["lang"] == PIVOT], cfg.seeds.eval_fraction, cfg.seed)

    held_out = [r for r in udhr if r["unit"] in eval_units or r["lang"] == PIVOT]
    held_out_text = {s for r in held_out for s in split_sentences(r["text"])} | {normalise(r["text"]) for r in held_out}
    held_out_reference = {s for r in udhr if r["unit"] in eval_units and r["lang"] == PIVOT
                          for s in [normalise(r["text"]), *split_sentences(r["text"])]}
    seeds: dict[str, list[tuple[str, str | None]]] = {lang: [] for lang in langs}
    sources: dict[str, set[str]] = {lang: set() for lang in langs}
    for lang in udhr_langs:
        for _, text, reference in udhr_seeds(udhr, lang, eval_units):
            seeds[lang].append((text, reference))
            sources[lang].add("udhr")
    for lang, text, reference in user_seeds:
        seeds[lang].append((text, reference))
        sources[lang].add("files")

    missing = [lang for lang in langs if not seeds[lang]]
    if missing:
        raise SeedError(
            f"no seed text for {missing}: not in the bundled UDHR ({len(udhr_languages())} languages) "
            f"and no file in seeds.files provides it; add a seed file such as seeds.{missing[0]}.txt"
        )

    rows, leaked, dropped_references = [], 0, Counter()
    for lang in langs:
        for text, reference in anchors_of(seeds[lang], cfg):
            if text in held_out_text:
                leaked += 1
                continue
            if reference is not None and (reference in held_out_reference or reference_in_wrong_language(reference, cfg)):
                # the anchor stays (it has no usable reference); the parallel strategy and fidelity skip it
                dropped_references["held_out" if reference in held_out_reference else "not_english"] += 1
                reference = None
            rows.append({"id": row_id(lang, text), "lang": lang, "text": text, "source": "+".join(sorted(sources[lang])),
                         "reference": reference})
    # Every unit is written (as retrieval candidates); only held_out ones are ever used as queries.
    eval_rows = [{"lang": r["lang"], "unit": r["unit"], "text": r["text"], "held_out": r["unit"] in eval_units} for r in udhr]

    train_path, eval_path = join(out_dir, "train.parquet"), join(out_dir, "eval.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA), train_path)
    pq.write_table(pa.Table.from_pylist(eval_rows, schema=EVAL_SCHEMA), eval_path)
    counts = Counter(r["lang"] for r in rows)  # one pass: a run may have thousands of languages
    with_reference = Counter(r["lang"] for r in rows if r["reference"] is not None)
    return StageOutput(
        outputs={"train": train_path, "eval": eval_path},
        counts={"anchors": len(rows), "with_reference": sum(with_reference.values()), "eval_units": len(eval_units),
                "dropped_held_out_copies": leaked},
        details={"anchors_per_language": {lang: counts[lang] for lang in langs},
                 "references_per_language": {lang: with_reference[lang] for lang in langs},
                 "references_dropped": dict(dropped_references),
                 "eval_units": sorted(eval_units), "no_udhr_eval": sorted(set(langs) - set(udhr_langs))},
    )


def reference_in_wrong_language(reference: str, cfg: RunConfig) -> bool:
    """A reference that language ID is sure is not English cannot stand for the anchor's English translation."""
    return is_clearly_not(reference, PIVOT, cfg.filter.min_language_confidence)
