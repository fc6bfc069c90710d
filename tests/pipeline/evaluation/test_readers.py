import pytest

from pipeline.evaluation import Skipped
from pipeline.evaluation import readers as r

# --- BLI dictionaries -----------------------------------------------------------------------------


def test_bli_items_and_skips():
    src, eng, gold = r.bli_items({"maji": {"water"}, "paka": {"cat"}, "x": set()}, max_words=0)
    assert src == ["maji", "paka"] and eng == ["cat", "water"] and gold == [{"water"}, {"cat"}]
    with pytest.raises(Skipped, match="no single-word pairs"):
        r.bli_items({"a": set()}, 0)
    with pytest.raises(Skipped, match="no dictionary for xxx"):
        r.load_dictionary("xxx", {}, cldr_fallback=True)
    with pytest.raises(Skipped, match="missing"):
        r.load_dictionary("yor", {"yor": "/nonexistent/dict"}, cldr_fallback=True)
    pairs, source = r.load_dictionary("yor", {}, cldr_fallback=True)
    assert source.startswith("CLDR") and len(pairs) > 50
    assert r.load_dictionary("kha", {}, cldr_fallback=False)[1].startswith("FreeDict kha-eng")


def test_bli_items_sample_the_query_words_with_the_seed():
    pairs = {f"w{i}": {f"e{i}"} for i in range(50)}
    src, eng, gold = r.bli_items(pairs, max_words=10, seed=3)
    assert len(src) == 10 and src == sorted(src) and len(eng) == 50, "the vocabulary stays every English word"
    assert gold == [pairs[s] for s in src] and r.bli_items(pairs, 10, seed=3)[0] == src


def test_a_distribution_without_the_gpl_dictionaries_falls_back_to_cldr(monkeypatch):
    monkeypatch.setitem(r.BUNDLED_DICTIONARIES, "swh", "swh-eng-left-out")  # as if freedict/ were deleted
    assert r.bundled_dictionary_path("swh") is None
    assert r.load_dictionary("swh", {}, cldr_fallback=True)[1] == "CLDR emoji short names"


def test_every_vendored_dictionary_file_is_listed_with_its_own_licence():
    """The FreeDict subsets are GPL-2.0-or-later data beside Apache-2.0 code: each file is named in NOTICE.freedict
    with its licence, and the README's "Data and licences" points there."""
    from importlib import resources
    from pathlib import Path

    corpus = resources.files("pipeline.corpus")
    notice = corpus.joinpath("NOTICE.freedict").read_text(encoding="utf-8")
    files = sorted(p.name for p in Path(str(corpus.joinpath("freedict"))).iterdir())
    assert files and all(any(line.startswith(f"freedict/{f} ") and "GPL-2.0-or-later" in line
                             for line in notice.splitlines()) for f in files), files
    assert "GNU GENERAL PUBLIC LICENSE\n                       Version 2" in notice
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    licences = readme[readme.index("## Data and licences"):]
    assert "NOTICE.freedict" in licences and "GPL-2.0-or-later" in licences


# --- topic classification -------------------------------------------------------------------------


def test_emoji_topics_have_eight_classes_for_the_demo_languages():
    rows = r.emoji_topics()
    for lang in ("eng", "yor", "swh", "quc", "amh", "hau"):
        labels = {row["label"] for row in rows if row["lang"] == lang}
        assert len(labels) == 8, lang
    x_tr, y_tr, x_te, y_te = r.classification_items("yor", "eng", max_test=100)
    assert len(x_tr) > 1000 and len(x_te) == len(y_te) == 100
    with pytest.raises(Skipped, match="no labelled texts for kha"):
        r.classification_items("kha", "eng", 0)


# --- STS files ------------------------------------------------------------------------------------


def test_sts_files_are_read_and_bad_scores_named_by_line(tmp_path):
    good = tmp_path / "sts.tsv"
    good.write_text("sentence1\tsentence2\tscore\nA cat.\tA kitten.\t4.5\nA cat.\tA car.\t0.5\n")
    s1, s2, gold = r.read_sts(str(good))
    assert s1 == ["A cat.", "A cat."] and s2 == ["A kitten.", "A car."] and gold.tolist() == [4.5, 0.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence1,sentence2,score\nA,B,1\nC,D,high\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: score 'high' is not a number"):
        r.read_sts(str(bad))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("text_a\ttext_b\tlabel\nA\tB\t1\n")
    with pytest.raises(ValueError, match=r"wrong.tsv: no column sentence1, sentence2, score"):
        r.read_sts(str(wrong))
    jsonl = tmp_path / "sts.jsonl"
    jsonl.write_text('{"sentence1": "A", "sentence2": "B", "score": 2}\n{"sentence1": "", "sentence2": "B", "score": 2}\n')
    with pytest.raises(ValueError, match=r"sts.jsonl:2: sentence1 and sentence2 must both be non-empty"):
        r.read_sts(str(jsonl))


# --- parallel text --------------------------------------------------------------------------------


def test_parallel_text_reads_a_table_or_two_aligned_files_and_skips_lines_blank_in_both(tmp_path):
    table = tmp_path / "yor.tsv"
    table.write_text("yor\teng\nẸ kú àárọ̀\tGood morning\n\t\nO dàbọ̀\tGoodbye\n")
    assert r.read_parallel("yor", str(table)) == (["Ẹ kú àárọ̀", "O dàbọ̀"], ["Good morning", "Goodbye"])
    jsonl = tmp_path / "yor.jsonl"
    jsonl.write_text('{"yor": "A", "eng": "a"}\n{"yor": "B", "eng": "b"}\n')
    assert r.read_parallel("yor", str(jsonl)) == (["A", "B"], ["a", "b"])
    src, eng = tmp_path / "yor.txt", tmp_path / "eng.txt"
    src.write_text("A\n\nB\u2028still B\nC\n\n\n")  # a paragraph break, a line separator inside a line, blank lines at the end
    eng.write_text("a\n\nb\nc\n")
    assert r.read_parallel("yor", [str(src), str(eng)]) == (["A", "B\u2028still B", "C"], ["a", "b", "c"])


def test_parallel_text_errors_name_files_lines_and_fields(tmp_path):
    src, eng = tmp_path / "yor.txt", tmp_path / "eng.txt"
    src.write_text("A\nB\nC\n")
    eng.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"not aligned: .*yor.txt has 3 lines, .*eng.txt has 2"):
        r.read_parallel("yor", [str(src), str(eng)])
    eng.write_text("a\n\nc\n")
    with pytest.raises(ValueError, match=r"eng.txt:2: empty line, but line 2 of .*yor.txt is not"):
        r.read_parallel("yor", [str(src), str(eng)])
    table = tmp_path / "yor.csv"
    table.write_text("yor,eng\nA,a\nB,\n")
    with pytest.raises(ValueError, match=r"yor.csv:3: field 'eng' is empty but 'yor' is not"):
        r.read_parallel("yor", str(table))
    table.write_text("text,translation\nA,a\n")
    with pytest.raises(ValueError, match=r"yor.csv: no column yor, eng \(needs yor, eng; the file has text, translation\)"):
        r.read_parallel("yor", str(table))
    with pytest.raises(Skipped, match="parallel file .*missing.txt does not exist"):
        r.read_parallel("yor", [str(tmp_path / "missing.txt"), str(eng)])
    table.write_text("yor,eng\nA,a\n")
    with pytest.raises(Skipped, match=r"1 sentence pair\(s\) in .*; retrieval needs at least 2"):
        r.read_parallel("yor", str(table))


# --- query / document pairs -----------------------------------------------------------------------


def test_query_docs_several_relevant_documents_doc_ids_and_distractors(tmp_path):
    path = tmp_path / "qd.jsonl"
    path.write_text("\n".join([
        '{"query": "q1", "document": "doc A", "doc_id": "A"}',
        '{"query": "q1", "document": "doc B", "doc_id": "B"}',
        '{"query": "q2", "document": "", "doc_id": "A"}',  # the text of A was given once
        '{"query": "", "document": "distractor", "doc_id": "X"}',
    ]) + "\n")
    queries, docs, relevant = r.read_query_docs(str(path))
    assert queries == ["q1", "q2"] and docs == ["doc A", "doc B", "distractor"] and relevant == [{0, 1}, {0}]
    plain = tmp_path / "qd.tsv"
    plain.write_text("query\tdocument\nq1\tdoc A\nq2\tdoc B\nq3\tdoc A\n")  # without doc_id a document is its text
    assert r.read_query_docs(str(plain)) == (["q1", "q2", "q3"], ["doc A", "doc B"], [{0}, {1}, {0}])


def test_query_docs_errors_and_skips(tmp_path):
    path = tmp_path / "qd.csv"
    path.write_text("query,document,doc_id\nq1,doc A,A\nq2,doc B,A\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: doc_id 'A' has another document text on line 2"):
        r.read_query_docs(str(path))
    path.write_text("query,document,doc_id\nq1,doc A,A\nq2,,B\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: doc_id 'B' has no document text on any line"):
        r.read_query_docs(str(path))
    path.write_text("query,document\nq1,doc A\nq2,\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: field 'document' is empty"):
        r.read_query_docs(str(path))
    path.write_text("query,document\n,doc A\n,doc B\n")
    with pytest.raises(Skipped, match="no row of .*qd.csv has a query"):
        r.read_query_docs(str(path))
    path.write_text("query,document\nq1,doc A\n")
    with pytest.raises(Skipped, match="has one document; ranking needs at least 2"):
        r.read_query_docs(str(path))
