import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import seeds
from pipeline.seeds import SeedError, split_sentences


def run_seeds(cfg, tmp_path):
    out = tmp_path / "seeds_out"
    out.mkdir(exist_ok=True)
    result = seeds.run(cfg, {}, str(out))
    return result, pq.read_table(result.outputs["train"]).to_pylist(), pq.read_table(result.outputs["eval"]).to_pylist()


def test_held_out_udhr_text_never_reaches_the_anchors(make_config, tmp_path):
    result, train, evaluation = run_seeds(make_config(), tmp_path)
    held = {r["unit"] for r in evaluation if r["held_out"]}
    assert held and result.counts["eval_units"] == len(held)
    held_sentences = {s for r in evaluation if r["held_out"] for s in split_sentences(r["text"])}
    assert train, "no anchors"
    assert not {r["text"] for r in train} & held_sentences
    assert {r["lang"] for r in train} == {"yor", "kha"}
    assert {r["lang"] for r in evaluation} == {"yor", "kha", "eng"}
    assert all(20 <= len(r["text"]) <= 300 for r in train)
    assert len({r["id"] for r in train}) == len(train)


def test_the_split_is_deterministic_and_respects_the_budget(make_config, tmp_path):
    cfg = make_config(seeds={"max_per_language": 7})
    _, a, _ = run_seeds(cfg, tmp_path)
    _, b, _ = run_seeds(cfg, tmp_path)
    assert a == b
    assert sum(r["lang"] == "yor" for r in a) == 7


def test_user_files_of_every_format(make_config, tmp_path):
    (tmp_path / "seeds.yor.txt").write_text("Ọmọ náà ń lọ sí ilé-ìwé lójoojúmọ́.\n\nMo fẹ́ràn láti ka ìwé ní alẹ́.\n")
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "Ka Khasi ka long ka ktien ba ki kren ha Meghalaya.", "lang": "kha"}) + "\n")
    (tmp_path / "more.csv").write_text("text,lang\nÀwọn àgbẹ̀ ń gbin àgbàdo ní oko wọn.,yor\n")
    pq.write_table(pa.table({"text": ["Ki khynnah ki leit sha skul man la ka sngi."], "lang": ["kha"]}), tmp_path / "more.parquet")
    files = [str(tmp_path / n) for n in ("seeds.yor.txt", "more.jsonl", "more.csv", "more.parquet")]
    _, train, _ = run_seeds(make_config(seeds={"udhr": False, "files": files}), tmp_path)
    assert sorted((r["lang"], r["text"]) for r in train) == sorted([
        ("yor", "Ọmọ náà ń lọ sí ilé-ìwé lójoojúmọ́."),
        ("yor", "Mo fẹ́ràn láti ka ìwé ní alẹ́."),
        ("yor", "Àwọn àgbẹ̀ ń gbin àgbàdo ní oko wọn."),
        ("kha", "Ka Khasi ka long ka ktien ba ki kren ha Meghalaya."),
        ("kha", "Ki khynnah ki leit sha skul man la ka sngi."),
    ])
    assert {r["source"] for r in train} == {"files"}


@pytest.mark.parametrize("name, content, message", [
    ("missing.yor.txt", None, "does not exist"),
    ("empty.yor.txt", "", "the file is empty"),
    ("blank.yor.txt", "\n  \n", "every row is empty"),
    ("bad.jsonl", '{"text": "fine", "lang": "yor"}\n{"text": broken\n', "bad.jsonl:2: not valid JSON"),
    ("nolang.jsonl", '{"text": "Ọmọ náà", "lang": "fra"}\n', "nolang.jsonl:1: lang 'fra' is not one of the configured languages"),
    ("notext.csv", "sentence,lang\nhello,yor\n", "notext.csv:2: no `text` field"),
    ("unnamed.txt", "Ọmọ náà ń lọ sí ilé-ìwé.\n", "cannot tell its language"),
    ("seeds.yor.docx", "x", "unsupported seed file type '.docx'"),
])
def test_bad_seed_files_name_the_file_line_and_field(make_config, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SeedError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_seeds(make_config(seeds={"files": [str(path)]}), tmp_path)


def test_a_language_without_any_seed_text_is_an_error_that_says_what_to_add(make_config, tmp_path):
    with pytest.raises(SeedError, match=r"no seed text for \['nhx'\].*seeds.nhx.txt"):
        run_seeds(make_config(languages=["yor", "nhx"]), tmp_path)


def test_udhr_anchors_carry_their_english_unit_and_no_held_out_text_of_any_language(make_config, tmp_path):
    from pipeline.corpus import load_udhr

    cfg = make_config(languages=["yor", "kha", "quc"], seeds={"max_per_language": 200, "max_chars": 450})
    result, train, evaluation = run_seeds(cfg, tmp_path)
    held = {r["unit"] for r in evaluation if r["held_out"]}
    udhr = load_udhr(["yor", "kha", "quc", "eng"]).to_pylist()
    held_text = {piece for r in udhr if r["unit"] in held for piece in [r["text"], *split_sentences(r["text"])]}
    english_of = {r["unit"]: r["text"] for r in udhr if r["lang"] == "eng"}
    unit_of = {(r["lang"], r["unit"]): r["text"] for r in udhr if r["lang"] != "eng"}
    with_ref = [r for r in train if r["reference"]]
    assert len(with_ref) >= 0.6 * len(train) and result.counts["with_reference"] == len(with_ref)
    assert not ({r["text"] for r in train} | {r["reference"] for r in with_ref}) & held_text
    for r in with_ref:  # each reference is (a sentence of) the English text of its anchor's own unit, never held out
        units = {u for (lang, u), text in unit_of.items() if lang == r["lang"] and r["text"] in text}
        assert units and not units & held
        assert any(r["reference"] in english_of[u] for u in units), r


def test_user_references_from_a_column_or_an_aligned_file(make_config, tmp_path):
    (tmp_path / "seeds.yor.txt").write_text("Ọmọ náà ń lọ sí ilé-ìwé lójoojúmọ́.\n\nMo fẹ́ràn láti ka ìwé ní alẹ́.\n")
    (tmp_path / "seeds.yor.eng.txt").write_text("The child goes to school every day.\n\nI like to read books at night.\n")
    (tmp_path / "kha.csv").write_text("text,eng\nKa Khasi ka long ka ktien ba ki kren ha Meghalaya.,Khasi is a language spoken in Meghalaya.\n")
    files = [[str(tmp_path / "seeds.yor.txt"), str(tmp_path / "seeds.yor.eng.txt")], str(tmp_path / "kha.csv")]
    result, train, _ = run_seeds(make_config(seeds={"udhr": False, "files": files}), tmp_path)
    assert sorted((r["lang"], r["reference"]) for r in train) == [
        ("kha", "Khasi is a language spoken in Meghalaya."), ("yor", "I like to read books at night."),
        ("yor", "The child goes to school every day.")]
    assert result.details["references_per_language"] == {"yor": 2, "kha": 1}


@pytest.mark.parametrize("files, message", [
    ({"seeds.yor.txt": "Ọmọ náà ń lọ sí ilé-ìwé.\nMo fẹ́ràn láti ka ìwé.\n", "seeds.yor.eng.txt": "The child goes to school.\n"},
     "not aligned: .*seeds.yor.txt has 2 lines, .*seeds.yor.eng.txt has 1"),
    ({"seeds.yor.txt": "Ọmọ náà ń lọ sí ilé-ìwé.\nMo fẹ́ràn láti ka ìwé.\n", "seeds.yor.eng.txt": "\nI like to read.\n"},
     r"seeds.yor.eng.txt:1: empty line, but line 1 of .*seeds.yor.txt is not"),
    ({"seeds.yor.csv": "text,eng\nỌmọ náà ń lọ sí ilé-ìwé.,\n"}, r"seeds.yor.csv:2: field `eng` is empty but `text` is not"),
])
def test_bad_references_name_the_file_line_and_field(make_config, tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    paths = [str(tmp_path / n) for n in files]
    entry = paths if len(paths) == 2 else paths[0]
    with pytest.raises(SeedError, match=message):
        run_seeds(make_config(seeds={"udhr": False, "files": [entry]}), tmp_path)


def test_a_reference_that_is_clearly_not_english_is_dropped_and_counted(make_config, tmp_path):
    (tmp_path / "seeds.yor.csv").write_text(
        "text,eng\nỌmọ náà ń lọ sí ilé-ìwé lójoojúmọ́.,The child goes to school every day of the week.\n"
        "Mo fẹ́ràn láti ka ìwé ní alẹ́.,J'aime lire des livres le soir avant de dormir.\n")
    cfg = make_config(languages=["yor"], seeds={"udhr": False, "files": [str(tmp_path / "seeds.yor.csv")]})
    result, train, _ = run_seeds(cfg, tmp_path)
    assert len(train) == 2, "the anchor stays; only its reference goes"
    assert sorted(str(r["reference"]) for r in train) == ["None", "The child goes to school every day of the week."]
    assert result.details["references_dropped"] == {"not_english": 1}
