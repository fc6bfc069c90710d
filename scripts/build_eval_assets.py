#!/usr/bin/env python
"""Build the evaluation data vendored in ``pipeline/corpus`` (BLI dictionaries, topic classification).

Sources (not pip dependencies; fetch them once, no install needed)::

    apt-get download dict-freedict-kha-eng dict-freedict-swh-eng   # Debian, GPL-2+ per dictionary
    for d in dict-freedict-*.deb; do dpkg-deb -x "$d" x; done
    npm pack cldr-annotations-full@48.2.0 unicode-emoji-json@0.9.0   # Unicode-3.0 / MIT

Usage (from the repository root)::

    python scripts/build_eval_assets.py --dictd x/usr/share/dictd \
        --cldr cldr-annotations-full-48.2.0.tgz --emoji unicode-emoji-json-0.9.0.tgz [--out pipeline/corpus]

Outputs:

* ``freedict/<lang>-eng.index`` + ``.dict.dz``: a small subset (``--entries`` entries, evenly
  spaced over the index, only single-word headwords with a single-word English sense) of each
  FreeDict dictionary, re-written in dictd format so the reader is exercised on real data.
  These two files stay under the GPL-2.0-or-later (see ``NOTICE.freedict``).
* ``emoji_topics.parquet`` (zstd): lang (ISO 639-3), emoji, text (the CLDR short name
  "tts"), label (the emoji group of unicode-emoji-json; the Flags group is dropped), for
  ``LOCALES`` (English included: the probe trains on it).
* ``NOTICE.freedict``, ``NOTICE.emoji``: attribution and licences.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline._dictd import b64_encode, parse_entry, read_dictd_entries, single_word  # noqa: E402

DICTIONARIES = {"kha": "kha-eng", "swh": "swh-eng"}
# CLDR locale -> ISO 639-3 as used in this project (Swahili is `swh` in the UDHR corpus).
LOCALES = {
    "en": "eng", "yo": "yor", "sw": "swh", "quc": "quc", "am": "amh", "ha": "hau", "ig": "ibo", "zu": "zul",
    "xh": "xho", "wo": "wol", "rw": "kin", "so": "som", "om": "orm", "ti": "tir", "tn": "tsn", "nso": "nso",
    "ak": "aka", "pcm": "pcm", "cy": "cym", "ga": "gle", "gd": "gla", "mi": "mri",
    "qu": "que", "jv": "jav", "fil": "fil", "ps": "pus", "sd": "snd",
    "ne": "npi", "my": "mya", "km": "khm", "lo": "lao", "si": "sin", "ta": "tam", "te": "tel", "hi": "hin",
    "ar": "arb", "fr": "fra", "es": "spa", "de": "deu", "ru": "rus", "zh": "cmn",
}
DROP_GROUPS = {"Flags", "Component"}
MIN_ROWS = 500  # locales with fewer labelled short names (CLDR stubs such as ff, kab, su) are left out


def strip_vs(emoji: str) -> str:
    return emoji.replace("\ufe0f", "")


def build_dictionary(src_prefix: str, out_prefix: Path, entries: int) -> int:
    usable = []
    for head, text in read_dictd_entries(src_prefix):
        word, senses = parse_entry(text)
        if single_word(word) and any(single_word(s) for s in senses):
            usable.append((head, text))
    step = max(1, len(usable) // entries)
    chosen = sorted(dict(usable[::step][:entries]).items())  # one entry per headword, sorted like dictd
    info = ("00-database-info\nSubset of the FreeDict dictionary " + out_prefix.name + " (" + str(len(chosen)) +
            " entries), GNU General Public License version 2 or later; see NOTICE.freedict.\n")
    blob, index = b"", []
    for head, text in [("00databaseinfo", info), *chosen]:
        raw = text.encode("utf-8")
        index.append(f"{head}\t{b64_encode(len(blob))}\t{b64_encode(len(raw))}")
        blob += raw
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_prefix.with_name(out_prefix.name + ".index").write_text("\n".join(index) + "\n", encoding="utf-8")
    with gzip.GzipFile(out_prefix.with_name(out_prefix.name + ".dict.dz"), "wb", mtime=0) as f:
        f.write(blob)
    return len(chosen)


def read_tgz_json(tgz: str, member: str) -> dict:
    with tarfile.open(tgz) as t:
        return json.load(t.extractfile(member))


def build_emoji_topics(cldr_tgz: str, emoji_tgz: str, out: Path) -> dict[str, int]:
    groups = {strip_vs(e): v["group"] for e, v in read_tgz_json(emoji_tgz, "package/data-by-emoji.json").items()
              if v["group"] not in DROP_GROUPS}
    rows, counts = [], {}
    for locale, lang in LOCALES.items():
        ann = read_tgz_json(cldr_tgz, f"package/annotations/{locale}/annotations.json")["annotations"].get("annotations", {})
        n, start = 0, len(rows)
        for emoji, value in sorted(ann.items()):
            label = groups.get(strip_vs(emoji))
            if label and value.get("tts"):
                rows.append({"lang": lang, "emoji": strip_vs(emoji), "text": value["tts"][0].strip(), "label": label})
                n += 1
        if n < MIN_ROWS:
            del rows[start:]
            continue
        counts[lang] = n
    table = pa.Table.from_pylist(rows).sort_by([("lang", "ascending"), ("emoji", "ascending")])
    pq.write_table(table, out / "emoji_topics.parquet", compression="zstd")
    return counts


NOTICE_EMOJI = """pipeline/corpus/emoji_topics.parquet: emoji short names labelled by emoji group
===============================================================================

Derived (short name "tts" per locale, joined on the emoji with its group; Flags dropped)
by scripts/build_eval_assets.py from two npm packages:

- cldr-annotations-full 48.2.0 (Unicode CLDR annotations), under the Unicode licence below;
- unicode-emoji-json 0.9.0 (Mu-An Chiou), under the MIT licence below.

--- cldr-annotations-full LICENSE -------------------------------------------------
{cldr}
--- unicode-emoji-json LICENSE ----------------------------------------------------
{uej}"""

NOTICE_FREEDICT = """pipeline/corpus/freedict/*: small subsets of FreeDict dictionaries
==================================================================

Licence: these files are NOT under bootembed's Apache-2.0
----------------------------------------------------------
bootembed's code is licensed Apache-2.0. The data files listed below keep their own
licence, the one of the dictionaries they come from: the GNU General Public License,
version 2 or (at your option) any later version (GPL-2.0-or-later). The full text of
GPL version 2 follows this notice.

They are data, read at run time: pipeline/_dictd.py, a dictd reader written for
bootembed, opens them exactly as it opens a dictionary a user names in
evaluate.dictionaries. No bootembed code is derived from them or linked with them;
shipping them in the same package is mere aggregation, which GPL-2 section 2 says does
not bring the rest of bootembed under the GPL. Whoever copies, changes or redistributes
these files does so under the GPL-2.0-or-later: keep this notice and the licence text
with them.

Files and their licence
-----------------------
freedict/kha-eng.index      GPL-2.0-or-later  Khasi-English, headword index
freedict/kha-eng.dict.dz    GPL-2.0-or-later  Khasi-English, entries
freedict/swh-eng.index      GPL-2.0-or-later  Swahili-English, headword index
freedict/swh-eng.dict.dz    GPL-2.0-or-later  Swahili-English, entries

Copyright: 2000-2022 FreeDict contributors (Khasi-English: Michael Bunk;
Swahili-English: Beata Wójtowicz, Piotr Bański, Morris Fried, Horst Eyermann).

Source and changes
------------------
From the Debian binary packages dict-freedict-kha-eng and dict-freedict-swh-eng,
version 2022.04.21-1 (Debian source package `freedict`; upstream https://freedict.org/,
whose TEI files are each dictionary's source).

These are modified versions. On {date} bootembed's scripts/build_eval_assets.py
selected 300 entries of each dictionary (one-word headwords with at least one one-word
English sense, evenly spaced over the index), wrote them in dictd format (index + gzip)
and replaced the metadata entries (00-database-*) with one 00-database-info entry naming
the subset and its licence. The selected entries' text is unchanged. Rebuild them with:

    apt-get download dict-freedict-kha-eng dict-freedict-swh-eng
    for d in dict-freedict-*.deb; do dpkg-deb -x "$d" x; done
    python scripts/build_eval_assets.py --dictd x/usr/share/dictd --cldr ... --emoji ...

{gpl}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dictd", required=True, help="folder holding freedict-<pair>.index / .dict.dz")
    ap.add_argument("--cldr", required=True, help="cldr-annotations-full-48.2.0.tgz")
    ap.add_argument("--emoji", required=True, help="unicode-emoji-json-0.9.0.tgz")
    ap.add_argument("--out", default="pipeline/corpus")
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--gpl", default="/usr/share/common-licenses/GPL-2")
    args = ap.parse_args()
    out = Path(args.out)
    for lang, pair in DICTIONARIES.items():
        n = build_dictionary(f"{args.dictd}/freedict-{pair}", out / "freedict" / pair, args.entries)
        print(f"{pair}: {n} entries")
    print(build_emoji_topics(args.cldr, args.emoji, out))
    with tarfile.open(args.cldr) as t:
        cldr = t.extractfile("package/LICENSE").read().decode()
    with tarfile.open(args.emoji) as t:
        uej = t.extractfile("package/LICENSE").read().decode()
    (out / "NOTICE.emoji").write_text(NOTICE_EMOJI.format(cldr=cldr, uej=uej), encoding="utf-8")
    (out / "NOTICE.freedict").write_text(NOTICE_FREEDICT.format(
        date=time.strftime("%Y-%m-%d"), gpl=Path(args.gpl).read_text()), encoding="utf-8")


if __name__ == "__main__":
    main()
