"""Bilingual dictionaries for lexicon induction: a dictd reader and a two-column TSV reader.

dictd format (as shipped by Debian `dict-freedict-*`):
- `NAME.index`: one line per headword, `headword TAB offset TAB length`, offset and length
  written in dictd base64 digits (A-Z a-z 0-9 + /, most significant first);
- `NAME.dict.dz` (dictzip, gzip-compatible) or `NAME.dict`: the entries back to back; an
  entry is a headword line (`kwetu /kwˈetu/ <pron>`), then its senses, one per line
  (`1.`, `Note: ...`, `See also: {x}` and indented lines are annotations, not senses).
Headwords starting with `00database` (or `00-database`) are metadata.

Both readers return `{source word: set of English words}` with single words only (BLI
compares word embeddings), lower-cased and stripped of grammar notes.
"""

from __future__ import annotations

import gzip
import os
import re

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {ch: i for i, ch in enumerate(B64)}
_ANNOTATION = re.compile(r"^(\d+\.|Note:|See also:|Synonyms?:|Antonyms?:|Plural of|Please|\s)", re.I)
_WORD = re.compile(r"^[^\W\d_][\w'’\-]*$")
_DROP_PREFIX = re.compile(r"^(to|a|an|the)\s+", re.I)


class DictionaryError(ValueError):
    """A dictionary file is missing or unreadable."""


def b64_decode(digits: str) -> int:
    """dictd base64 number: `B` -> 1, `BA` -> 64."""
    value = 0
    for ch in digits:
        if ch not in _B64_VALUE:
            raise DictionaryError(f"not a dictd base64 number: {digits!r}")
        value = value * 64 + _B64_VALUE[ch]
    return value


def b64_encode(value: int) -> str:
    digits = ""
    while True:
        digits = B64[value % 64] + digits
        value //= 64
        if not value:
            return digits


def dictd_paths(prefix: str) -> tuple[str, str]:
    """(`prefix.index`, `prefix.dict.dz` or `prefix.dict`); raises if either is missing."""
    index = prefix + ".index"
    data = next((p for p in (prefix + ".dict.dz", prefix + ".dict") if os.path.exists(p)), None)
    missing = [p for p, ok in ((index, os.path.exists(index)), (prefix + ".dict.dz", data is not None)) if not ok]
    if missing:
        raise DictionaryError(f"dictd dictionary {prefix!r}: missing {', '.join(missing)}")
    return index, data


def read_dictd_entries(prefix: str) -> list[tuple[str, str]]:
    """[(headword, entry text)] in index order, metadata entries left out."""
    index, data_path = dictd_paths(prefix)
    opener = gzip.open if data_path.endswith(".dz") else open
    try:
        with opener(data_path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DictionaryError(f"cannot read {data_path}: {e}") from e
    entries = []
    with open(index, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise DictionaryError(f"{index}:{n}: expected 'headword TAB offset TAB length', got {line!r}")
            head, offset, length = parts[0], b64_decode(parts[1]), b64_decode(parts[2])
            if head.startswith(("00database", "00-database")):
                continue
            if offset + length > len(data):
                raise DictionaryError(f"{index}:{n}: entry {head!r} points past the end of {data_path}")
            entries.append((head, data[offset:offset + length].decode("utf-8", errors="replace")))
    return entries


def parse_entry(text: str) -> tuple[str, list[str]]:
    """(headword, translations) of one dictd entry; grammar and pronunciation are dropped."""
    lines = text.split("\n")
    head = re.split(r"\s+[/<(\[]", lines[0].strip(), maxsplit=1)[0].strip()
    senses = []
    for line in lines[1:]:
        if not line.strip() or _ANNOTATION.match(line):
            continue
        for part in re.split(r"[,;]", re.sub(r"\([^)]*\)|\{[^}]*\}|<[^>]*>", "", line)):
            part = part.strip().strip(".!?")
            if part:
                senses.append(part)
    return head, senses


def single_word(text: str) -> str | None:
    """The lower-cased word if `text` is one word (after dropping `to`/`a`/`the`), else None."""
    text = _DROP_PREFIX.sub("", text.strip()).lower()
    return text if _WORD.match(text) else None


def pairs_from_entries(entries: list[tuple[str, str]]) -> dict[str, set[str]]:
    pairs: dict[str, set[str]] = {}
    for _, text in entries:
        head, senses = parse_entry(text)
        for h in head.split(","):  # `abi, abike, abiki` lists variants of one headword
            src = single_word(h)
            targets = {w for w in map(single_word, senses) if w}
            if src and targets:
                pairs.setdefault(src, set()).update(targets)
    return pairs


def read_dictd(prefix: str) -> dict[str, set[str]]:
    """Single-word pairs of a dictd dictionary (`prefix.index` + `prefix.dict.dz`)."""
    return pairs_from_entries(read_dictd_entries(prefix))


def read_tsv(path: str) -> dict[str, set[str]]:
    """A user dictionary: `source word TAB English word` per line (`#` comments allowed)."""
    if not os.path.exists(path):
        raise DictionaryError(f"dictionary file {path!r} does not exist")
    pairs: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DictionaryError(f"{path}:{n}: expected 'source TAB English', got {line.rstrip()!r}")
            src, tgt = single_word(parts[0]), single_word(parts[1])
            if src and tgt:
                pairs.setdefault(src, set()).add(tgt)
    return pairs


def read_dictionary(path: str) -> dict[str, set[str]]:
    """`.tsv` / `.txt` -> read_tsv; anything else is a dictd prefix (with or without `.index`)."""
    if path.endswith((".tsv", ".txt")):
        return read_tsv(path)
    return read_dictd(path.removesuffix(".index").removesuffix(".dict.dz"))
