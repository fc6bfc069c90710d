import numpy as np
import pytest

from pipeline import _eval_tasks as t


def test_identity_embeddings_rank_first_and_mrr_counts_lower_ranks():
    x = np.random.default_rng(0).normal(size=(15, 8))
    ids = list(range(15))
    s = t.rank_scores(x, ids, x, ids)
    assert s["hit1"].mean() == 1.0 and s["rr"].mean() == 1.0
    # query 0's right answer is the 2nd nearest: hit 0, reciprocal rank 1/2
    q = np.array([[1.0, 0.1]])
    c = np.array([[1.0, 0.0], [1.0, 0.5], [-1.0, 0.0]])
    s = t.rank_scores(q, ["b"], c, ["a", "b", "c"])
    assert s["hit1"].tolist() == [0.0] and s["rr"].tolist() == [0.5]
    assert t.rank_scores(q, ["z"], c, ["a", "b", "c"])["rr"].tolist() == [0.0]


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_items():
    rng = np.random.default_rng(1)
    small, big = rng.random(23) < 0.3, rng.random(2000) < 0.3
    lo, hi = t.bootstrap_mean_ci([small])
    assert lo <= small.mean() <= hi and hi - lo > 0.2  # 23 items: a wide interval
    lo2, hi2 = t.bootstrap_mean_ci([big])
    assert hi2 - lo2 < 0.06
    assert t.bootstrap_mean_ci([small], samples=0) is None
    # one item more right out of 23 is not a measurable win
    better = small.copy()
    better[np.argmin(better)] = True
    lo, hi = t.bootstrap_delta_ci([better], [small])
    assert lo <= 0 <= hi
    lo, hi = t.bootstrap_delta_ci([np.ones(200)], [np.zeros(200)])
    assert lo == hi == 1.0


def test_bli_identity_is_perfect_and_a_shuffled_dictionary_is_near_zero():
    rng = np.random.default_rng(0)
    n = 60
    eng = [f"e{i}" for i in range(n)]
    vecs = rng.normal(size=(n, 16))
    gold = [{w} for w in eng]
    s = t.bli_scores(vecs, vecs, eng, gold)
    assert s["hit1"].mean() == 1.0 and s["hit5"].mean() == 1.0
    shuffled = [{eng[j]} for j in rng.permutation(n)]
    s = t.bli_scores(vecs, vecs, eng, shuffled)
    assert s["hit1"].mean() <= 0.05 and s["hit5"].mean() <= 0.25


def test_bli_items_and_skips():
    src, eng, gold = t.bli_items({"maji": {"water"}, "paka": {"cat"}, "x": set()}, max_words=0)
    assert src == ["maji", "paka"] and eng == ["cat", "water"] and gold == [{"water"}, {"cat"}]
    with pytest.raises(t.Skipped, match="no single-word pairs"):
        t.bli_items({"a": set()}, 0)
    with pytest.raises(t.Skipped, match="no overlap"):
        t.bli_scores(np.eye(2), np.eye(2), ["x", "y"], [{"a"}, {"b"}])
    with pytest.raises(t.Skipped, match="no dictionary for xxx"):
        t.load_dictionary("xxx", {}, cldr_fallback=True)
    with pytest.raises(t.Skipped, match="missing"):
        t.load_dictionary("yor", {"yor": "/nonexistent/dict"}, cldr_fallback=True)
    pairs, source = t.load_dictionary("yor", {}, cldr_fallback=True)
    assert source.startswith("CLDR") and len(pairs) > 50
    assert t.load_dictionary("kha", {}, cldr_fallback=False)[1].startswith("FreeDict kha-eng")


def test_a_distribution_without_the_gpl_dictionaries_falls_back_to_cldr(monkeypatch):
    monkeypatch.setitem(t.BUNDLED_DICTIONARIES, "swh", "swh-eng-left-out")  # as if freedict/ were deleted
    assert t.bundled_dictionary_path("swh") is None
    assert t.load_dictionary("swh", {}, cldr_fallback=True)[1] == "CLDR emoji short names"


def test_probe_separates_toy_data_and_macro_f1():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 4
    y = [c for c in range(3) for _ in range(30)]
    x = centers[y] + rng.normal(scale=0.5, size=(90, 8))
    y_lab = [f"c{c}" for c in y]
    s = t.probe_scores(x, y_lab, x[::-1], y_lab[::-1])
    assert s["correct"].mean() == 1.0 and s["macro_f1"] == 1.0
    assert t.macro_f1(["a", "a", "b", "b"], ["a", "a", "a", "b"]) == pytest.approx((0.8 + 2 / 3) / 2)
    with pytest.raises(t.Skipped, match="one class"):
        t.probe_scores(x, ["only"] * 90, x, ["only"] * 90)


def test_emoji_topics_have_eight_classes_for_the_demo_languages():
    rows = t.emoji_topics()
    for lang in ("eng", "yor", "swh", "quc", "amh", "hau"):
        labels = {r["label"] for r in rows if r["lang"] == lang}
        assert len(labels) == 8, lang
    x_tr, y_tr, x_te, y_te = t.classification_items("yor", "eng", max_test=100)
    assert len(x_tr) > 1000 and len(x_te) == len(y_te) == 100
    with pytest.raises(t.Skipped, match="no labelled texts for kha"):
        t.classification_items("kha", "eng", 0)


def test_summarise_averages_languages_and_marks_skips():
    per_item = {"yor": {"base": {"hit1": np.array([1, 0, 0, 0.0])}, "trained": {"hit1": np.array([1, 1, 0, 0.0])}},
                "swh": {"base": {"hit1": np.array([1, 1.0])}, "trained": {"hit1": np.array([1, 1.0])}}}
    out = t.summarise(per_item, {"kha": "no dictionary for kha"}, {"P@1": "hit1"}, "P@1", ["base", "trained"], samples=200)
    assert out["per_language"]["kha"] == {"skipped": "no dictionary for kha"}
    assert out["average"]["base"]["P@1"] == pytest.approx((0.25 + 1) / 2)
    assert out["average"]["trained"]["n"] == 6 and out["average"]["trained"]["languages"] == 2
    lo, hi = out["delta_ci"]["trained"]["P@1"]
    assert lo <= 0.125 <= hi
    assert out["per_language"]["swh"]["trained"]["delta_ci"]["P@1"] == [0.0, 0.0]
    assert "delta_ci" not in out["per_language"]["swh"]["base"]


# --- STS -----------------------------------------------------------------------------------------


def test_sts_correlation_is_one_when_cosine_orders_pairs_like_the_gold_scores():
    base = np.eye(4)
    angles = np.array([0.1, 0.5, 0.9, 1.3])  # pair i: a vector rotated by angles[i] from base[0]
    v1 = np.tile(base[0], (4, 1))
    v2 = np.stack([np.cos(a) * base[0] + np.sin(a) * base[1] for a in angles])
    assert t.sts_scores(v1, v2, np.array([5.0, 3.0, 2.0, 0.0]))["spearman"] == pytest.approx(1.0)
    assert t.sts_scores(v1, v2, np.array([0.0, 2.0, 3.0, 5.0]))["spearman"] == pytest.approx(-1.0)
    with pytest.raises(t.Skipped, match="every gold score is the same"):
        t.sts_scores(v1, v2, np.array([1.0, 1.0, 1.0, 1.0]))


def test_sts_files_are_read_and_bad_scores_named_by_line(tmp_path):
    good = tmp_path / "sts.tsv"
    good.write_text("sentence1\tsentence2\tscore\nA cat.\tA kitten.\t4.5\nA cat.\tA car.\t0.5\n")
    s1, s2, gold = t.read_sts(str(good))
    assert s1 == ["A cat.", "A cat."] and s2 == ["A kitten.", "A car."] and gold.tolist() == [4.5, 0.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence1,sentence2,score\nA,B,1\nC,D,high\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: score 'high' is not a number"):
        t.read_sts(str(bad))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("text_a\ttext_b\tlabel\nA\tB\t1\n")
    with pytest.raises(ValueError, match=r"wrong.tsv: no column sentence1, sentence2, score"):
        t.read_sts(str(wrong))
    jsonl = tmp_path / "sts.jsonl"
    jsonl.write_text('{"sentence1": "A", "sentence2": "B", "score": 2}\n{"sentence1": "", "sentence2": "B", "score": 2}\n')
    with pytest.raises(ValueError, match=r"sts.jsonl:2: sentence1 and sentence2 must both be non-empty"):
        t.read_sts(str(jsonl))


def test_sts_in_the_evaluation_reports_a_language_without_a_file_as_skipped(make_config, tiny_encoder, tmp_path):
    from pipeline.corpus import load_udhr
    from pipeline.evaluate import evaluate_model, prepare_tasks, summarise_tasks

    pairs = tmp_path / "yor.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"Ọmọ {i} ń lọ.\tỌmọ {i} ń sáré.\t{i % 5}\n" for i in range(12)))
    cfg = make_config(languages=["yor", "kha"], train={"encoder": tiny_encoder},
                      evaluate={"tasks": [], "sts": {"yor": str(pairs)}, "bootstrap_samples": 20})
    rows = [{"lang": r["lang"], "unit": r["unit"], "text": r["text"], "held_out": r["unit"] % 3 == 0}
            for r in load_udhr(["eng", "yor", "kha"]).to_pylist()]
    data, skipped = prepare_tasks(cfg, ["yor", "kha"])
    assert "no STS file for kha" in skipped["sts"]["kha"]
    results = {m: evaluate_model(tiny_encoder, rows, ["yor", "kha"], cfg, data) for m in ("base", "trained")}
    sts = summarise_tasks(cfg, results, data, skipped, {})["sts"]
    yor = sts["per_language"]["yor"]["base"]
    assert yor["n"] == 12 and -1.0 <= yor["Spearman"] <= 1.0 and np.isfinite(sts["average"]["base"]["Spearman"])
    assert sts["per_language"]["kha"]["skipped"].startswith("no STS file")


# --- nDCG@10 and MTEB's bitext-mining F1 ---------------------------------------------------------


def test_ndcg_counts_every_relevant_candidate_discounted_by_log2_rank():
    sims = np.array([[0.9, 0.8, 0.7, 0.6],    # relevant {1}: rank 2
                     [0.9, 0.8, 0.7, 0.6],    # relevant {0, 2}: ranks 1 and 3
                     [0.9, 0.8, 0.7, 0.6],    # relevant {3}: rank 4, beyond k = 3
                     [0.9, 0.8, 0.7, 0.6]])   # nothing relevant
    s = t.ranking_scores(sims, [{1}, {0, 2}, {3}, set()], k=3)
    assert s["ndcg"] == pytest.approx([1 / np.log2(3), (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 0.0, 0.0])
    assert s["hit1"].tolist() == [0.0, 1.0, 0.0, 0.0] and s["rr"] == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert s["top"].tolist() == [0, 0, 0, 0]
    # a perfect ranking of two relevant candidates is 1, whatever their number
    assert t.ranking_scores(np.array([[0.9, 0.8, 0.1]]), [{0, 1}])["ndcg"].tolist() == [1.0]


def test_bitext_f1_is_mtebs_weighted_f1_of_the_top_match():
    from sklearn.metrics import f1_score

    assert t.bitext_f1([0, 1, 2], [0, 1, 2]) == 1.0
    # queries 0 and 1 both take candidate 0: query 0 is right but shares its match (F1 2/3), query 1 is wrong
    assert t.bitext_f1([0, 1, 2], [0, 0, 2]) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert t.bitext_f1(["a", "b"], ["b", "a"]) == 0.0
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 30, 200).tolist(), rng.integers(0, 30, 200).tolist()
    assert t.bitext_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0))


# --- user parallel text ---------------------------------------------------------------------------


def test_parallel_text_reads_a_table_or_two_aligned_files_and_skips_lines_blank_in_both(tmp_path):
    table = tmp_path / "yor.tsv"
    table.write_text("yor\teng\nẸ kú àárọ̀\tGood morning\n\t\nO dàbọ̀\tGoodbye\n")
    assert t.read_parallel("yor", str(table)) == (["Ẹ kú àárọ̀", "O dàbọ̀"], ["Good morning", "Goodbye"])
    jsonl = tmp_path / "yor.jsonl"
    jsonl.write_text('{"yor": "A", "eng": "a"}\n{"yor": "B", "eng": "b"}\n')
    assert t.read_parallel("yor", str(jsonl)) == (["A", "B"], ["a", "b"])
    src, eng = tmp_path / "yor.txt", tmp_path / "eng.txt"
    src.write_text("A\n\nB\u2028still B\nC\n\n\n")  # a paragraph break, a line separator inside a line, blank lines at the end
    eng.write_text("a\n\nb\nc\n")
    assert t.read_parallel("yor", [str(src), str(eng)]) == (["A", "B\u2028still B", "C"], ["a", "b", "c"])


def test_parallel_text_errors_name_files_lines_and_fields(tmp_path):
    src, eng = tmp_path / "yor.txt", tmp_path / "eng.txt"
    src.write_text("A\nB\nC\n")
    eng.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"not aligned: .*yor.txt has 3 lines, .*eng.txt has 2"):
        t.read_parallel("yor", [str(src), str(eng)])
    eng.write_text("a\n\nc\n")
    with pytest.raises(ValueError, match=r"eng.txt:2: empty line, but line 2 of .*yor.txt is not"):
        t.read_parallel("yor", [str(src), str(eng)])
    table = tmp_path / "yor.csv"
    table.write_text("yor,eng\nA,a\nB,\n")
    with pytest.raises(ValueError, match=r"yor.csv:3: field 'eng' is empty but 'yor' is not"):
        t.read_parallel("yor", str(table))
    table.write_text("text,translation\nA,a\n")
    with pytest.raises(ValueError, match=r"yor.csv: no column yor, eng \(needs yor, eng; the file has text, translation\)"):
        t.read_parallel("yor", str(table))
    with pytest.raises(t.Skipped, match="parallel file .*missing.txt does not exist"):
        t.read_parallel("yor", [str(tmp_path / "missing.txt"), str(eng)])
    table.write_text("yor,eng\nA,a\n")
    with pytest.raises(t.Skipped, match=r"1 sentence pair\(s\) in .*; retrieval needs at least 2"):
        t.read_parallel("yor", str(table))


def test_parallel_items_score_both_directions_and_a_repeated_translation_is_one_candidate():
    src, eng = ["a", "b", "c", "d"], ["A", "B", "C", "C"]  # "C" translates both c and d
    src_vecs, eng_vecs = np.eye(4), np.eye(4)[[0, 1, 2, 2]]  # the same text, the same vector
    s = t.parallel_items(src_vecs, eng_vecs, src, eng)
    # x->eng: the pool is A, B, C; d is equally far from all three, the tie keeps pool order: A first, C third
    assert s["hit1_to"].tolist() == [1, 1, 1, 0] and s["rr_to"].tolist() == [1, 1, 1, 1 / 3]
    assert s["ndcg_to"] == pytest.approx([1, 1, 1, 1 / np.log2(4)])
    # F1 per gold label: A 1 query right, 2 predictions -> 2 * 1 / (1 + 2); B 1; C 2 queries, 1 right, 1 prediction
    # -> 2 * 1 / (2 + 1), weighted by its 2 queries of 4
    assert s["f1_to"] == pytest.approx((2 / 3 + 1 + 2 * (2 / 3)) / 4)
    # eng->x: both "C" queries retrieve c, right for the first and wrong for the second
    assert s["hit1_from"].tolist() == [1, 1, 1, 0]
    swapped = src_vecs[[1, 0, 2, 3]]  # a looks like b and b like a: both wrong x->eng
    s = t.parallel_items(swapped, eng_vecs, src, eng)
    assert s["hit1_to"].tolist() == [0, 0, 1, 0] and s["rr_to"].tolist() == [0.5, 0.5, 1.0, 1 / 3]


# --- within-language retrieval --------------------------------------------------------------------


def test_query_docs_several_relevant_documents_doc_ids_and_distractors(tmp_path):
    path = tmp_path / "qd.jsonl"
    path.write_text("\n".join([
        '{"query": "q1", "document": "doc A", "doc_id": "A"}',
        '{"query": "q1", "document": "doc B", "doc_id": "B"}',
        '{"query": "q2", "document": "", "doc_id": "A"}',  # the text of A was given once
        '{"query": "", "document": "distractor", "doc_id": "X"}',
    ]) + "\n")
    queries, docs, relevant = t.read_query_docs(str(path))
    assert queries == ["q1", "q2"] and docs == ["doc A", "doc B", "distractor"] and relevant == [{0, 1}, {0}]
    sims = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.9]])  # q1: A first, B third; q2: A second
    s = t.ranking_scores(sims, relevant)
    assert s["hit1"].tolist() == [1.0, 0.0] and s["rr"].tolist() == [1.0, 1 / 3]
    assert s["ndcg"] == pytest.approx([(1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 1 / np.log2(4)])
    plain = tmp_path / "qd.tsv"
    plain.write_text("query\tdocument\nq1\tdoc A\nq2\tdoc B\nq3\tdoc A\n")  # without doc_id a document is its text
    assert t.read_query_docs(str(plain)) == (["q1", "q2", "q3"], ["doc A", "doc B"], [{0}, {1}, {0}])
    items = t.query_doc_items(np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0]]), np.eye(2), [{0}, {1}, {0}])
    assert items["hit1"].tolist() == [1.0, 1.0, 0.0] and items["rr"].tolist() == [1.0, 1.0, 0.5]


def test_query_docs_errors_and_skips(tmp_path):
    path = tmp_path / "qd.csv"
    path.write_text("query,document,doc_id\nq1,doc A,A\nq2,doc B,A\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: doc_id 'A' has another document text on line 2"):
        t.read_query_docs(str(path))
    path.write_text("query,document,doc_id\nq1,doc A,A\nq2,,B\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: doc_id 'B' has no document text on any line"):
        t.read_query_docs(str(path))
    path.write_text("query,document\nq1,doc A\nq2,\n")
    with pytest.raises(ValueError, match=r"qd.csv:3: field 'document' is empty"):
        t.read_query_docs(str(path))
    path.write_text("query,document\n,doc A\n,doc B\n")
    with pytest.raises(t.Skipped, match="no row of .*qd.csv has a query"):
        t.read_query_docs(str(path))
    path.write_text("query,document\nq1,doc A\n")
    with pytest.raises(t.Skipped, match="has one document; ranking needs at least 2"):
        t.read_query_docs(str(path))


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
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    licences = readme[readme.index("## Data and licences"):]
    assert "NOTICE.freedict" in licences and "GPL-2.0-or-later" in licences
