import gzip

import pytest

from pipeline._dictd import (DictionaryError, b64_decode, b64_encode, parse_entry, read_dictd, read_dictd_entries,
                             read_dictionary, read_tsv)
from pipeline.evaluation.readers import bundled_dictionary_path


def test_dictd_base64_numbers():
    assert b64_decode("A") == 0 and b64_decode("B") == 1 and b64_decode("BA") == 64 and b64_decode("/") == 63
    assert all(b64_decode(b64_encode(n)) == n for n in (0, 1, 63, 64, 4095, 123456))
    with pytest.raises(DictionaryError):
        b64_decode("a-b")


def test_entry_parsing_drops_grammar_notes_and_cross_references():
    head, senses = parse_entry("achilio /ˌatʃilˈio/ <n> (pl: {maachilio})\n\nforgiveness\n")
    assert head == "achilio" and senses == ["forgiveness"]
    head, senses = parse_entry("la /lˈa/ <v>\n\neat\n   Synonym: {hapana}\n")
    assert head == "la" and senses == ["eat"]
    head, senses = parse_entry("achana <v>\n1.\nleave one another, separate, divorce\n2.\ndiffer, diverge\n")
    assert senses == ["leave one another", "separate", "divorce", "differ", "diverge"]


@pytest.mark.parametrize("lang,known", [("kha", ("khun", "child")), ("swh", ("la", "eat"))])
def test_vendored_freedict_subsets_parse(lang, known):
    prefix = bundled_dictionary_path(lang)
    entries = read_dictd_entries(prefix)
    assert len(entries) == 300 and not any(h.startswith("00database") for h, _ in entries)
    pairs = read_dictd(prefix)
    assert len(pairs) >= 250
    assert all(" " not in s and ts and all(" " not in t for t in ts) for s, ts in pairs.items())
    assert read_dictionary(prefix + ".index") == pairs


def test_vendored_swahili_subset_has_known_pairs():
    pairs = read_dictd(bundled_dictionary_path("swh"))
    overlap = {s: t for s, t in pairs.items() if s in {"meli", "mungu", "hoteli", "tunda", "bora"}}
    assert overlap and all(t for t in overlap.values())


def test_handmade_dictd_roundtrip(tmp_path):
    entries = [("00databaseinfo", "00-database-info\nx\n"), ("maji", "maji <n>\nwater\n"), ("paka", "paka <n>\ncat, (house) cat\n")]
    blob, index = b"", []
    for head, text in entries:
        raw = text.encode()
        index.append(f"{head}\t{b64_encode(len(blob))}\t{b64_encode(len(raw))}")
        blob += raw
    (tmp_path / "d.index").write_text("\n".join(index) + "\n")
    with gzip.open(tmp_path / "d.dict.dz", "wb") as f:
        f.write(blob)
    assert read_dictd(str(tmp_path / "d")) == {"maji": {"water"}, "paka": {"cat"}}


def test_missing_files_and_bad_lines_are_clear_errors(tmp_path):
    with pytest.raises(DictionaryError, match="missing .*nothere.index"):
        read_dictd(str(tmp_path / "nothere"))
    (tmp_path / "half.index").write_text("a\tA\tB\n")
    with pytest.raises(DictionaryError, match="half.dict.dz"):
        read_dictd(str(tmp_path / "half"))
    with pytest.raises(DictionaryError, match="does not exist"):
        read_tsv(str(tmp_path / "none.tsv"))
    (tmp_path / "bad.tsv").write_text("onlyone\n")
    with pytest.raises(DictionaryError, match="bad.tsv:1"):
        read_tsv(str(tmp_path / "bad.tsv"))


def test_tsv_reader_keeps_single_words(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("# yor-eng\nomi\twater\nomi\tto drink\nilé\thouse\nẹ kú\tgood morning\n", encoding="utf-8")
    assert read_dictionary(str(path)) == {"omi": {"water", "drink"}, "ilé": {"house"}}
