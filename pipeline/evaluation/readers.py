"""The data each evaluation task runs on, independent of any model: your files, BLI dictionaries, CLDR emoji topics.

- user files: parallel text (`read_parallel`), query/document pairs (`read_query_docs`), STS pairs (`read_sts`),
  every error naming file, line and field;
- bilingual lexicon induction: a dictionary per language (yours, a bundled FreeDict subset, or one-word CLDR emoji
  names aligned with English) and the query words sampled from it (`load_dictionary`, `bli_items`);
- topic classification: CLDR emoji short names labelled by emoji group (`emoji_topics`, `classification_items`).

A reader raises Skipped (the reason shown in the report) when a language has no data, and ValueError when a file
is malformed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline import records
from pipeline._dictd import DictionaryError, read_dictd, read_dictionary, single_word
from pipeline.evaluation import Skipped
from pipeline.records import PIVOT, read_records

BUNDLED_DICTIONARIES = {"kha": "kha-eng", "swh": "swh-eng"}  # pipeline/corpus/freedict/<pair>.index/.dict.dz

# ---------------------------------------------------------------- bilingual lexicon induction

def bundled_dictionary_path(lang: str) -> str | None:
    """The bundled FreeDict subset of `lang` (a dictd prefix), or None. A distribution may leave the GPL-licensed
    freedict/ folder out (see NOTICE.freedict): then there is none."""
    pair = BUNDLED_DICTIONARIES.get(lang)
    if pair is None:
        return None
    folder = resources.files("pipeline.corpus").joinpath("freedict")
    return str(folder.joinpath(pair)) if folder.joinpath(pair + ".index").is_file() else None


def cldr_word_pairs(lang: str) -> dict[str, set[str]]:
    """One-word CLDR short names of the same emoji in `lang` and English (`sw` 'simba' -> 'lion')."""
    table = emoji_topics()
    by_emoji: dict[str, dict[str, str]] = {}
    for r in table:
        if r["lang"] in (lang, "eng"):
            by_emoji.setdefault(r["emoji"], {})[r["lang"]] = r["text"]
    pairs: dict[str, set[str]] = {}
    for names in by_emoji.values():
        src, eng = single_word(names.get(lang, "")), single_word(names.get("eng", ""))
        if src and eng and not (lang != "eng" and src == eng):  # an untranslated English name is no evidence
            pairs.setdefault(src, set()).add(eng)
    return pairs


def load_dictionary(lang: str, user_paths: dict[str, str], cldr_fallback: bool) -> tuple[dict[str, set[str]], str]:
    """(pairs, source name); raises Skipped with the reason when there is none."""
    if lang in user_paths:
        try:
            return read_dictionary(user_paths[lang]), user_paths[lang]
        except DictionaryError as e:
            raise Skipped(str(e)) from e
    if (path := bundled_dictionary_path(lang)) is not None:
        return read_dictd(path), f"FreeDict {BUNDLED_DICTIONARIES[lang]} (subset)"
    if cldr_fallback:
        pairs = cldr_word_pairs(lang)
        if pairs:
            return pairs, "CLDR emoji short names"
    raise Skipped(f"no dictionary for {lang}")


def bli_items(pairs: dict[str, set[str]], max_words: int, seed: int = 0) -> tuple[list[str], list[str], list[set[str]]]:
    """(query words, English vocabulary = every English word of the dictionary, gold sets per query)."""
    pairs = {s: t for s, t in pairs.items() if t}
    if not pairs:
        raise Skipped("dictionary has no single-word pairs")
    eng = sorted({w for ts in pairs.values() for w in ts})
    if len(eng) < 2:
        raise Skipped("dictionary has fewer than 2 English words")
    src = sorted(pairs)
    if max_words and len(src) > max_words:
        src = sorted(np.random.default_rng(seed).choice(src, size=max_words, replace=False).tolist())
    return src, eng, [pairs[s] for s in src]


# ---------------------------------------------------------------- topic classification

_EMOJI: list[dict] | None = None


def emoji_topics() -> list[dict]:
    """Rows {lang, emoji, text, label} of pipeline/corpus/emoji_topics.parquet (CLDR short names by emoji group)."""
    global _EMOJI
    if _EMOJI is None:
        with resources.files("pipeline.corpus").joinpath("emoji_topics.parquet").open("rb") as f:
            _EMOJI = pq.read_table(f).to_pylist()
    return _EMOJI


def _sample(rows: list, most: int, seed: int) -> list:
    if not most or len(rows) <= most:
        return rows
    keep = np.random.default_rng(seed).choice(len(rows), size=most, replace=False)
    return [rows[i] for i in sorted(keep)]


def classification_items(lang: str, source: str, max_test: int, seed: int = 0,
                         max_train: int = 0) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, test texts, test labels): source-language rows train, `lang` rows test."""
    rows = emoji_topics()
    train = [r for r in rows if r["lang"] == source]
    test = [r for r in rows if r["lang"] == lang]
    if not test:
        raise Skipped(f"no labelled texts for {lang}")
    if not train:
        raise Skipped(f"no labelled texts for the source language {source}")
    train, test = _sample(train, max_train, seed), _sample(test, max_test, seed)
    return [r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test], [r["label"] for r in test]


# ---------------------------------------------------------------- user files

def read_table(path: str, columns: tuple[str, ...], what: str) -> list[dict]:
    """Rows (each with its `line`) of a user csv / tsv / jsonl / parquet file that has `columns`.

    Raises Skipped when the file does not exist (the report shows why the language has no score) and ValueError
    naming the file when a column is missing.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise Skipped(f"{what} file {path} does not exist")
    rows = read_records(p)
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        found = sorted(k for k in rows[0] if k not in ("line", None))
        raise ValueError(f"{path}: no column {', '.join(missing)} (needs {', '.join(columns)}; the file has {', '.join(found)})")
    return rows


def _cell(row: dict, column: str) -> str:
    """A field as stripped text; a missing or null field is empty."""
    value = row.get(column)
    return "" if value is None else str(value).strip()


def aligned_text_files(target: str, english: str) -> list[tuple[str, str]]:
    """records.aligned_text_files; a file that does not exist is a skipped language, not an error."""
    try:
        return records.aligned_text_files(target, english)
    except FileNotFoundError as e:
        raise Skipped(f"parallel file {e}") from None


def parallel_table(path: str, lang: str) -> list[tuple[str, str]]:
    """(sentence, English translation) pairs of a table with columns `<lang>` and `eng`; a row blank in both is left out."""
    pairs = []
    for r in read_table(path, (lang, PIVOT), "parallel"):
        s, e = _cell(r, lang), _cell(r, PIVOT)
        if s and e:
            pairs.append((s, e))
        elif s or e:
            empty, full = (lang, PIVOT) if not s else (PIVOT, lang)
            raise ValueError(f"{path}:{r['line']}: field {empty!r} is empty but {full!r} is not; each sentence needs its translation")
    return pairs


def read_parallel(lang: str, source: str | list[str]) -> tuple[list[str], list[str]]:
    """(sentences, English translations) of `evaluate.parallel.<lang>`: one table, or two aligned text files."""
    pairs = parallel_table(source, lang) if isinstance(source, str) else aligned_text_files(*source)
    if len(pairs) < 2:
        raise Skipped(f"{len(pairs)} sentence pair(s) in {source}; retrieval needs at least 2")
    return [s for s, _ in pairs], [e for _, e in pairs]


QUERY_DOC_COLUMNS = ("query", "document")


def read_query_docs(path: str) -> tuple[list[str], list[str], list[set[int]]]:
    """(queries, documents, indices of each query's relevant documents) of a file with query, document [, doc_id] columns.

    A row pairs a query with one relevant document; a query on several rows has several. A row without a query adds
    its document to the pool only (a distractor). Rows with the same doc_id are one document, whose text need be given
    only once; without doc_id a document is its text. The pool is every document of the file, in file order.
    """
    rows = read_table(path, QUERY_DOC_COLUMNS, "query/document")
    texts: dict[str, str] = {}  # document key (doc_id, else its text) -> text
    first_line: dict[str, int] = {}
    relevant: dict[str, set[str]] = {}  # query -> keys of its relevant documents
    for r in rows:
        query, text, doc_id = _cell(r, "query"), _cell(r, "document"), _cell(r, "doc_id")
        key = doc_id or text
        if not key:
            raise ValueError(f"{path}:{r['line']}: field 'document' is empty" + (" and so is 'doc_id'" if "doc_id" in r else ""))
        if text and texts.get(key) and texts[key] != text:
            raise ValueError(f"{path}:{r['line']}: doc_id {doc_id!r} has another document text on line {first_line[key]}")
        first_line.setdefault(key, r["line"])
        texts[key] = texts.get(key) or text
        if query:
            relevant.setdefault(query, set()).add(key)
    textless = [k for k, t in texts.items() if not t]
    if textless:
        raise ValueError(f"{path}:{first_line[textless[0]]}: doc_id {textless[0]!r} has no document text on any line")
    if not relevant:
        raise Skipped(f"no row of {path} has a query")
    if len(texts) < 2:
        raise Skipped(f"{path} has one document; ranking needs at least 2")
    index = {k: i for i, k in enumerate(texts)}
    return list(relevant), list(texts.values()), [{index[k] for k in keys} for keys in relevant.values()]


STS_COLUMNS = ("sentence1", "sentence2", "score")


def read_sts(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences 1, sentences 2, gold scores) from a csv / tsv / jsonl / parquet file; bad rows are named by line."""
    s1, s2, gold = [], [], []
    for r in read_table(path, STS_COLUMNS, "STS"):
        n = r["line"]
        if not _cell(r, "sentence1") or not _cell(r, "sentence2"):
            raise ValueError(f"{path}:{n}: sentence1 and sentence2 must both be non-empty")
        try:
            score = float(r.get("score"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{n}: score {r.get('score')!r} is not a number") from None
        if not np.isfinite(score):
            raise ValueError(f"{path}:{n}: score {r.get('score')!r} is not a finite number")
        s1.append(str(r["sentence1"]))
        s2.append(str(r["sentence2"]))
        gold.append(score)
    return s1, s2, np.array(gold)
