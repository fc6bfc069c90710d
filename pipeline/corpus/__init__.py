"""Vendored aligned multilingual corpus: the Universal Declaration of Human Rights.

``udhr.parquet`` holds one row per aligned unit and language:

* ``lang`` (string): ISO 639-3 code, one declaration per code;
* ``unit`` (int32): aligned unit id, the same passage in every language:
  0-6 the seven "Whereas ..." paragraphs of the preamble, 7 the proclamation
  ("Now, therefore, The General Assembly proclaims ..."), 8-57 the 50
  paragraphs / list items of articles 1-30 in English order;
* ``article`` (int32): 0 for the preamble, else the article number;
* ``text`` (string): NFC, whitespace-normalised.

Not every language has every unit (units whose alignment with English is not
supported by the source are left out); join on ``unit`` to get parallel text.
Rows are sorted by (lang, unit).  Rebuild with
``python scripts/build_udhr_corpus.py``; see ``NOTICE`` for attribution.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["load_udhr", "udhr_languages", "xnli_pairs"]

_PARQUET = "udhr.parquet"
_LANGUAGES = "languages.json"
_XNLI_PAIRS = "xnli_pairs.parquet"


def _resource(name: str):
    return resources.files(__name__).joinpath(name)


@lru_cache(maxsize=1)
def _languages() -> dict[str, dict]:
    return json.loads(_resource(_LANGUAGES).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _table() -> pa.Table:
    with _resource(_PARQUET).open("rb") as f:
        return pq.read_table(f)


def udhr_languages() -> dict[str, dict]:
    """lang (ISO 639-3) -> metadata: name, udhr_code, bcp47, direction, stage,
    units (number of aligned units) and, where upstream ships (mostly) the same
    text under other codes, same_text_as.  Returns a fresh copy."""
    return {lang: dict(meta) for lang, meta in _languages().items()}


def _suggest(code: str, languages: dict[str, dict]) -> str:
    by_tag = sorted(
        lang
        for lang, meta in languages.items()
        if code.lower() in (meta["bcp47"].lower(), meta["bcp47"].split("-")[0].lower())
    )
    close = by_tag or difflib.get_close_matches(code.lower(), sorted(languages), n=3, cutoff=0.6)
    return f"{code!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(code)


def load_udhr(langs: list[str] | None = None) -> pa.Table:
    """Rows (lang, unit, article, text) of the given ISO 639-3 codes; None = all.

    Raises ValueError naming the codes that are not in the corpus.
    """
    table = _table()
    if langs is None:
        return table
    if isinstance(langs, str):
        langs = [langs]
    wanted = list(dict.fromkeys(langs))
    languages = _languages()
    unknown = [code for code in wanted if code not in languages]
    if unknown:
        raise ValueError(
            f"unknown UDHR corpus language code(s): "
            f"{', '.join(_suggest(c, languages) for c in unknown)}; "
            f"the corpus has {len(languages)} languages keyed by ISO 639-3 code "
            f"(e.g. 'eng', 'swh', 'yor'), see udhr_languages()"
        )
    return table.filter(pc.is_in(table["lang"], value_set=pa.array(wanted, pa.string())))


@lru_cache(maxsize=1)
def _xnli_table() -> pa.Table:
    with _resource(_XNLI_PAIRS).open("rb") as f:
        return pq.read_table(f)


def xnli_pairs() -> list[dict]:
    """The bundled cross-lingual NLI pairs (see NOTICE.xnli): role ("positive" | "negative"), pair, anchor (one of 14
    languages) and output (English). The XL-LoRA adapters and the human_nli baseline train on them; the few-shot pool
    of in-context prompts is drawn from them. Returns fresh rows."""
    return _xnli_table().to_pylist()
