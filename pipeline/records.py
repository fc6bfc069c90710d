"""Readers of the user's record files, shared by every stage that reads them (seeds, adapters, evaluate).

Every error names the file and the line, so a user knows where to look.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq

PIVOT = "eng"  # the language held-out target text is aligned with, and the column of a reference translation


class RecordError(ValueError):
    """A user file that cannot be read; the message names the file, line and field."""


def read_records(path: Path) -> list[dict]:
    """Rows of a user file (.txt, .jsonl, .csv, .tsv, .parquet) as dicts, each with its 1-based `line`."""
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
                raise RecordError(f"{path}:{i}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise RecordError(f"{path}:{i}: expected a JSON object with a `text` field, got {type(row).__name__}")
            rows.append({**row, "line": i})
        return rows
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return [{**row, "line": i} for i, row in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), 2)]
    if suffix == ".parquet":
        return [{**row, "line": i} for i, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    raise RecordError(f"{path}: unsupported seed file type {suffix!r} (use .txt, .jsonl, .csv, .tsv or .parquet)")


def text_lines(path: str) -> list[str]:
    """The stripped lines of a UTF-8 text file, blank lines at its end dropped; FileNotFoundError if there is none.

    Split on newlines only, as editors and `wc -l` count lines (str.splitlines would also split on U+2028, U+0085...).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").split("\n")]
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text ({e})") from None
    while lines and not lines[-1]:
        lines.pop()
    return lines


def aligned_text_files(target: str, english: str) -> list[tuple[str, str]]:
    """(sentence, English translation) pairs of two line-aligned text files: line i of one translates line i of the other.

    A line blank in both files (a paragraph break) is left out; a line blank in one file only is an error, because
    from there on the files are out of step or a translation is missing.
    """
    src, eng = text_lines(target), text_lines(english)
    if len(src) != len(eng):
        raise RecordError(f"parallel files are not aligned: {target} has {len(src)} lines, {english} has {len(eng)} "
                          "(blank lines at the end not counted); line i of one must be the translation of line i of the other")
    pairs = []
    for n, (s, e) in enumerate(zip(src, eng), 1):
        if s and e:
            pairs.append((s, e))
        elif s or e:
            blank, other = (target, english) if not s else (english, target)
            raise RecordError(f"{blank}:{n}: empty line, but line {n} of {other} is not; each sentence needs its "
                              "translation on the same line (leave a line blank in both files to skip it)")
    return pairs
