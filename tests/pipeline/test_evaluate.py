import json

import numpy as np
import pytest

from pipeline.evaluate import bitext_scores, plot_retrieval, plot_tasks, report_markdown, retrieval_accuracy


def test_identical_embeddings_retrieve_perfectly_and_shuffled_ids_do_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    ids = list(range(20))
    assert retrieval_accuracy(x, ids, x, ids) == 1.0
    assert retrieval_accuracy(x, ids, x, list(rng.permutation(20))) <= 0.15


def test_bitext_queries_are_held_out_units_and_candidates_every_unit():
    rows, vectors = [], []
    for unit in range(6):
        v = np.eye(6)[unit]
        rows += [{"lang": "eng", "unit": unit, "held_out": unit < 2}, {"lang": "yor", "unit": unit, "held_out": unit < 2}]
        vectors += [v, v if unit != 1 else np.eye(6)[5]]  # yor unit 1 looks like eng unit 5
    scores = bitext_scores(rows, np.array(vectors), "yor")
    assert scores["queries"] == 2 and scores["candidates_eng"] == 6 and scores["candidates_lang"] == 6
    assert scores["to_eng"] == 0.5  # unit 0 right, unit 1 retrieves eng unit 5
    assert scores["from_eng"] == 0.5
    # yor unit 1 = eng unit 5: its English translation (unit 1, orthogonal) ties with 4 others after unit 5 -> rank 3
    assert scores["mrr10_to_eng"] == pytest.approx((1 + 1 / 3) / 2)


def test_identity_embeddings_give_acc_and_mrr_one():
    rows = [{"lang": lang, "unit": u, "held_out": True} for u in range(8) for lang in ("eng", "yor")]
    scores = bitext_scores(rows, np.repeat(np.eye(8), 2, axis=0), "yor")
    assert scores["to_eng"] == scores["from_eng"] == scores["mrr10_to_eng"] == scores["mrr10_from_eng"] == 1.0


@pytest.fixture
def metrics():
    per = lambda a, b: {"to_eng": a, "from_eng": b, "queries": 23, "candidates_eng": 58, "candidates_lang": 56}  # noqa: E731
    return {
        "languages": ["yor", "kha"], "config_hash": "abc", "skipped": {},
        "models": {
            "base": {"per_language": {"yor": per(0.3, 0.2), "kha": per(0.1, 0.1)}, "average": {"to_eng": 0.2, "from_eng": 0.15}},
            "trained": {"per_language": {"yor": per(0.4, 0.2), "kha": per(0.05, 0.3)}, "average": {"to_eng": 0.225, "from_eng": 0.25}},
        },
    }


def test_report_puts_models_side_by_side_with_deltas_and_best_marked(metrics):
    text = report_markdown(metrics, {"filter counts": {"kept": 10}, "examples": [
        {"lang": "yor", "anchor": "a|b", "positive": "p", "negative": "n"}]})
    assert "| yor | 0.300 | **0.400** | +0.100 | 23 |" in text
    assert "| kha | **0.100** | 0.050 | -0.050 | 23 |" in text
    assert "| average | 0.200 | **0.225** | +0.025 | 46 |" in text
    assert "| yor | a\\|b | p | n |" in text
    assert "filter counts: {'kept': 10}" in text




@pytest.fixture
def task_metrics(metrics):
    def cell(v, n, lo=None, hi=None, **extra):
        return {"P@1": v, "P@5": min(1.0, v + 0.2), "n": n, "ci": {"P@1": [lo or v - 0.1, hi or v + 0.1], "P@5": None}, **extra}

    metrics["tasks"] = {"bli": {
        "description": "Bilingual lexicon induction test description.", "metrics": ["P@1", "P@5"], "primary": "P@1",
        "confidence": 0.95, "bootstrap_samples": 1000,
        "per_language": {"yor": {"base": cell(0.2, 50, source="CLDR"), "trained": cell(0.3, 50, source="CLDR", delta_ci={"P@1": [-0.1, 0.3]})},
                         "kha": {"skipped": "no dictionary for kha"}},
        "average": {"base": {**cell(0.2, 50), "languages": 1}, "trained": {**cell(0.3, 50), "languages": 1}},
        "delta_ci": {"trained": {"P@1": [-0.05, 0.25], "P@5": None}},
    }}
    return metrics


def test_report_has_one_table_per_task_metric_with_intervals_skips_and_description(task_metrics):
    text = report_markdown(task_metrics, {})
    assert "## Bilingual lexicon induction" in text and "test description" in text
    assert "| language | base P@1 | trained P@1 | Δ trained | n | source |" in text
    assert "| yor | 0.200 [0.10, 0.30] | **0.300** [0.20, 0.40] | +0.100 [-0.10, +0.30] | 50 | CLDR |" in text
    assert "| kha | skipped: no dictionary for kha |" in text
    assert "| average (1 languages) | 0.200 [0.10, 0.30] | **0.300** [0.20, 0.40] | +0.100 [-0.05, +0.25] | 50 |" in text
    assert "### P@5" in text and "nan" not in text.lower()
    task_metrics["tasks"]["bli"]["delta_ci"]["trained"]["P@1"] = [0.02, 0.2]
    assert "| +0.100 [+0.02, +0.20] * | 50 |" in report_markdown(task_metrics, {})
    assert "base x->eng" in text  # legacy retrieval tables still there without a retrieval task


def test_headline_plot_shows_each_models_scores_and_intervals(task_metrics, tmp_path):
    from matplotlib.collections import LineCollection

    from pipeline.evaluate import headline_figure

    fig = headline_figure(task_metrics)  # no retrieval task: the verdict's task is BLI, its primary metric P@1
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["yor", "average"], "skipped kha is not drawn"
    assert "P@1" in ax.get_title() and [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "trained"]
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.2, 0.2, 0.3, 0.3]  # base yor, avg; trained yor, avg
    intervals = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert sorted((round(s[0][1], 3), round(s[1][1], 3)) for s in intervals) == [(0.1, 0.3)] * 2 + [(0.2, 0.4)] * 2
    plot_retrieval(task_metrics, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tasks_plot_shows_each_metrics_average_with_its_interval(task_metrics, tmp_path):
    from matplotlib.collections import LineCollection

    from pipeline.evaluate import tasks_figure

    [ax] = tasks_figure(task_metrics).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P@1", "P@5"]
    assert "Bilingual lexicon induction" in ax.get_title() and "1 languages" in ax.get_title()
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.2, 0.4, 0.3, 0.5]  # base P@1, P@5; trained P@1, P@5
    intervals = sorted((round(s[0][1], 3), round(s[1][1], 3)) for c in ax.collections if isinstance(c, LineCollection)
                       for s in c.get_segments())
    assert intervals == [(0.1, 0.3), (0.2, 0.4)], "P@1 has an interval per model, P@5 (no interval) none"
    path = tmp_path / "t.png"
    plot_tasks(task_metrics, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_runs_every_task_with_skips_and_keeps_legacy_outputs(make_config, tiny_encoder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.corpus import load_udhr
    from pipeline.evaluate import run

    udhr = load_udhr(["eng", "yor", "kha"]).to_pylist()
    rows = [{"lang": r["lang"], "unit": r["unit"], "text": r["text"], "held_out": r["unit"] % 3 == 0} for r in udhr]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "eval.parquet")
    cfg = make_config(languages=["yor", "kha", "quc"], train={"encoder": tiny_encoder},
                      evaluate={"bli_max_words": 40, "classification_max_test": 60, "bootstrap_samples": 100,
                                "classification_max_train": 300,
                                "dictionaries": {"quc": str(tmp_path / "missing.tsv")}})
    out = tmp_path / "out"
    out.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    for variant in ("xllora", "human_nli"):  # the same weights under two names: column order is what is tested
        (models / variant).symlink_to(tiny_encoder)
    cfg.synthesis.strategies = ["icl", "xllora"]
    manifests = {"synthesize": {"per_strategy": {"icl": {"rows": 10, "ok": 8}, "xllora": {"rows": 10, "ok": 9}}},
                 "filter": {"kept_per_strategy": {"icl": 1, "xllora": 7},
                            "drop_reasons_per_strategy": {"icl": {"margin_below_threshold": 6, "duplicate": 1}}},
                 "train": {"variants": {"xllora": {"triplets": 7, "final_loss": 1.5}, "human_nli": {"triplets": 7, "final_loss": 0.5}},
                           "skipped": {"icl": "1 triplet(s) after filtering"}}}
    for stage, details in manifests.items():
        (tmp_path / f"{stage}.json").write_text(json.dumps({"counts": {}, "seconds": 1.0, "details": details}))
    inputs = {"eval": str(tmp_path / "eval.parquet"), "models": str(models),
              **{f"{stage}_manifest": str(tmp_path / f"{stage}.json") for stage in manifests}}
    result = run(cfg, inputs, str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["languages"] == ["yor", "kha"] and "quc" in metrics["skipped"]
    assert list(metrics["models"]) == ["base", "human_nli", "xllora"], "baselines first, then strategies as configured"
    for m in ("base", "xllora"):
        per = metrics["models"][m]["per_language"]
        assert set(per) == {"yor", "kha"} and all({"to_eng", "from_eng", "queries"} <= set(v) for v in per.values())
        assert {"to_eng", "from_eng"} <= set(metrics["models"][m]["average"])
    tasks = metrics["tasks"]
    assert set(tasks) == {"retrieval", "bli", "classification"}
    assert tasks["bli"]["per_language"]["kha"]["base"]["source"].startswith("FreeDict")
    assert tasks["bli"]["per_language"]["quc"]["skipped"].startswith("dictionary file")
    assert tasks["classification"]["per_language"]["kha"] == {"skipped": "no labelled texts for kha"}
    assert tasks["classification"]["per_language"]["yor"]["base"]["n"] == 60
    assert tasks["retrieval"]["per_language"]["quc"]["skipped"]
    for task in tasks.values():
        for avg in task["average"].values():
            assert all(np.isfinite(avg[k]) for k in task["metrics"])
    report = (out / "report.md").read_text()
    assert "## Topic classification" in report and "| kha | skipped: no labelled texts for kha |" in report
    assert "base x->eng acc@1" in report and "x->eng MRR@10" in report and "human_nli x->eng acc@1" in report
    assert "| icl | 10 | 8 | 1 | - | - | margin_below_threshold 6, duplicate 1 | 1 triplet(s) after filtering |" in report
    assert "| xllora | 10 | 9 | 7 | 7 | 1.500 |" in report
    assert {"metrics", "report", "plot", "tasks_plot"} <= set(result.outputs)
    assert (out / "tasks.png").stat().st_size > 5_000


def test_a_language_without_items_is_skipped_not_nan(make_config):
    from pipeline.evaluate import summarise_tasks

    cfg = make_config(languages=["yor", "kha"], evaluate={"tasks": [], "bootstrap_samples": 50})
    vectors = ("hit1_to", "rr_to", "ndcg_to", "hit1_from", "rr_from", "ndcg_from")
    items = {"yor": {**{k: np.ones(3) for k in vectors}, "f1_to": 1.0, "f1_from": 1.0},
             "kha": {**{k: np.zeros(0) for k in vectors}, "f1_to": 0.0, "f1_from": 0.0}}
    results = {m: {"_items": {"retrieval": items}, "_skipped": {}} for m in ("base", "trained")}
    out = summarise_tasks(cfg, results, {}, {}, {})
    assert out["retrieval"]["per_language"]["kha"]["skipped"].startswith("no items")
    assert out["retrieval"]["average"]["base"]["x->eng acc@1"] == 1.0 and out["retrieval"]["average"]["base"]["languages"] == 1


def udhr_eval_rows(langs: list[str]) -> list[dict]:
    from pipeline.corpus import load_udhr

    return [{"lang": r["lang"], "unit": r["unit"], "text": r["text"], "held_out": r["unit"] % 3 == 0}
            for r in load_udhr(langs).to_pylist()]


def test_user_parallel_text_and_query_documents_are_scored_and_reported_in_html(make_config, tiny_encoder, tmp_path):
    import base64
    import html
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluate import evaluate_models

    rows = udhr_eval_rows(["eng", "yor", "kha"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "eval.parquet")
    text = {(r["lang"], r["unit"]): r["text"] for r in rows}
    units = sorted(u for (lang, u) in text if lang == "yor" and ("eng", u) in text)[:12]
    (tmp_path / "yor.txt").write_text("\n".join(text["yor", u] for u in units) + "\n")  # two aligned text files
    (tmp_path / "eng.txt").write_text("\n".join(text["eng", u] for u in units) + "\n")
    kha_units = sorted(u for (lang, u) in text if lang == "kha" and ("eng", u) in text)[:10]
    pq.write_table(pa.Table.from_pylist([{"kha": text["kha", u], "eng": text["eng", u]} for u in kha_units]),
                   tmp_path / "kha.parquet")  # one table
    # within-language retrieval: an article's opening words find the article among every yor article + 1 distractor
    (tmp_path / "qd.jsonl").write_text("".join(
        json.dumps({"query": text["yor", u][:40], "document": text["yor", u]}) + "\n" for u in units[:8])
        + json.dumps({"query": "", "document": "Ọ̀rọ̀ míì tí kò sí nínú ìbéèrè."}) + "\n")
    cfg = make_config(languages=["yor", "kha", "quc"], train={"encoder": tiny_encoder},
                      evaluate={"tasks": [], "bootstrap_samples": 50, "query_docs": {"yor": str(tmp_path / "qd.jsonl")},
                                "parallel": {"yor": [str(tmp_path / "yor.txt"), str(tmp_path / "eng.txt")],
                                             "kha": str(tmp_path / "kha.parquet")}})
    out = tmp_path / "out"
    out.mkdir()
    result = evaluate_models(cfg, {"base": tiny_encoder, "trained": tiny_encoder}, {"eval": str(tmp_path / "eval.parquet")}, str(out))

    tasks = json.loads((out / "metrics.json").read_text())["tasks"]
    assert set(tasks) == {"retrieval", "parallel", "query_docs"}
    parallel = tasks["parallel"]["per_language"]
    assert parallel["yor"]["base"]["n"] == 12 and parallel["kha"]["base"]["n"] == 10
    assert parallel["quc"] == {"skipped": "no parallel text file for quc (evaluate.parallel: {quc: [sentences.txt, english.txt]})"}
    for lang in ("yor", "kha"):
        scores = parallel[lang]["base"]
        assert 0 <= scores["x->eng acc@1"] <= scores["x->eng MRR@10"] <= scores["x->eng nDCG@10"] <= 1
        assert all(scores[m] == parallel[lang]["trained"][m] for m in tasks["parallel"]["metrics"])  # the same weights
        assert len(scores["ci"]["x->eng nDCG@10"]) == 2 and "x->eng F1" not in scores["ci"]  # F1: corpus-level, no interval
    assert tasks["retrieval"]["per_language"]["yor"]["base"]["x->eng nDCG@10"] >= tasks["retrieval"]["per_language"]["yor"]["base"]["x->eng acc@1"]
    query_docs = tasks["query_docs"]["per_language"]
    assert query_docs["yor"]["base"]["n"] == 8 and query_docs["kha"]["skipped"].startswith("no query/document file for kha")
    for task in tasks.values():
        for avg in task["average"].values():
            assert all(np.isfinite(avg[k]) for k in task["metrics"])

    # report.html: the report's every table, the plots inlined, nothing fetched from elsewhere
    report, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert result.outputs["report_html"].endswith("report.html")
    headers = [line for i, line in enumerate(report.split("\n")) if line.startswith("| ") and
               report.split("\n")[i + 1].startswith("|---")]
    assert len(headers) == page.count("<table>") == 2 * 8 + 3  # retrieval and parallel 8 metrics each, query_docs 3
    for header in headers:
        cells = [c.strip() for c in header.strip("|").split("|")]
        assert "<tr>" + "".join(f"<th>{html.escape(c, quote=False)}</th>" for c in cells) + "</tr>" in page
    assert "<td class=skipped colspan=4>skipped: no parallel text file for quc" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert [base64.b64decode(i) for i in images] == [(out / "retrieval.png").read_bytes(), (out / "tasks.png").read_bytes()]
    references = re.findall(r'(?:src|href)\s*=\s*"?([^" >]+)', page)
    assert references and all(r.startswith(("data:image/png;base64,", "#")) for r in references)
    assert not re.search(r"<link|<script|@import|url\(", page)


def test_malformed_user_files_stop_the_evaluation_before_any_model_and_bad_config_is_refused(make_config, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.evaluate import prepare_tasks

    (tmp_path / "yor.txt").write_text("a\nb\nc\n")
    (tmp_path / "eng.txt").write_text("A\nB\n")
    cfg = make_config(languages=["yor"], evaluate={"parallel": {"yor": [str(tmp_path / "yor.txt"), str(tmp_path / "eng.txt")]}})
    with pytest.raises(ValueError, match=r"yor.txt has 3 lines, .*eng.txt has 2"):
        prepare_tasks(cfg, ["yor"])
    with pytest.raises(ConfigError) as err:
        make_config(evaluate={"parallel": {"yor": ["a.txt", "b.txt", "c.txt"], "kha": "kha.txt"},
                              "query_docs": {"yor": "qd.txt"}})
    message = str(err.value)
    assert "evaluate.parallel: yor: expected one .csv / .tsv / .jsonl / .parquet file with columns yor and eng, or two " \
           "line-aligned text files [yor.txt, eng.txt]; got 3 file(s); kha: expected" in message
    assert "got 'kha.txt'" in message and "evaluate.query_docs: yor: 'qd.txt' is not a .csv / .tsv / .jsonl / .parquet file" in message


def local_mteb_tasks(lang: str, texts: list[str], english: list[str]) -> list:
    """Two MTEB tasks on local data, nothing downloaded: BitextMining (texts vs their English translations) and
    Retrieval (each text queries the English ones, its translation relevant)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

    common = dict(description="UDHR paragraphs bundled with bootembed", reference=None, category="t2t",
                    dataset={"path": "bootembed/udhr", "revision": "bundled"}, eval_splits=["test"],
                    eval_langs=[f"{lang}-Latn", "eng-Latn"], modalities=["text"], date=None, dialect=None, domains=None,
                    task_subtypes=None, license=None, annotations_creators=None, sample_creation=None, bibtex_citation=None)

    class UdhrBitext(AbsTaskBitextMining):
        metadata = TaskMetadata(type="BitextMining", name="UdhrBitext", main_score="f1", **common)

        def load_data(self, num_proc=None, **kwargs):
            self.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": texts, "sentence2": english})})
            self.data_loaded = True

    class UdhrRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(type="Retrieval", name="UdhrRetrieval", main_score="ndcg_at_10", **common)

        def load_data(self, num_proc=None, **kwargs):
            ids = [str(i) for i in range(len(texts))]
            split = RetrievalSplitData(queries=Dataset.from_dict({"id": ids, "text": texts}),
                                       corpus=Dataset.from_dict({"id": ids, "text": english}),
                                       relevant_docs={i: {i: 1} for i in ids}, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return [UdhrBitext(), UdhrRetrieval()]


@pytest.mark.slow
def test_an_exported_encoder_runs_under_mteb_unchanged_and_mteb_agrees_with_our_metrics(make_config, e5_path, tmp_path):
    """The folder train writes (here: e5 with the paper's avg_first_last pooling and E5's prefix) is an ordinary
    sentence-transformers model to MTEB; MTEB's main scores equal ours on the same vectors (about a minute)."""
    mteb = pytest.importorskip("mteb", reason="mteb is in the dev extra: pip install -e '.[dev]'")
    from sentence_transformers import SentenceTransformer

    from pipeline import _eval_tasks as t
    from pipeline.train import export_sentence_transformer

    rows = udhr_eval_rows(["eng", "swh"])
    text = {(r["lang"], r["unit"]): r["text"] for r in rows}
    units = sorted((u for (lang, u) in text if lang == "swh" and ("eng", u) in text), key=lambda u: len(text["eng", u]))[:30]
    swh, eng = [text["swh", u] for u in units], [text["eng", u] for u in units]
    cfg = make_config(languages=["swh"], train={"pooling": "avg_first_last"})
    export_sentence_transformer(e5_path, None, cfg, str(tmp_path / "model"), {})
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")

    result = mteb.evaluate(model, local_mteb_tasks("swh", swh, eng), cache=None, show_progress_bar=False)
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}

    ids = list(range(len(units)))
    bitext = t.bitext_direction(model.encode(swh), ids, model.encode(eng), ids)  # MTEB encodes both sides alike here
    retrieval = t.bitext_direction(model.encode_query(swh), ids, model.encode_document(eng), ids)  # and query / document here
    assert scores["UdhrBitext"]["main_score"] == pytest.approx(bitext["f1"], abs=1e-6)
    assert scores["UdhrBitext"]["accuracy"] == pytest.approx(bitext["hit1"].mean(), abs=1e-6)
    assert scores["UdhrRetrieval"]["main_score"] == pytest.approx(retrieval["ndcg"].mean(), abs=1e-4)  # MTEB rounds to 5 places
    assert scores["UdhrRetrieval"]["mrr_at_10"] == pytest.approx(retrieval["rr"].mean(), abs=1e-4)
    assert bitext["f1"] > 0.7 and retrieval["ndcg"].mean() > 0.7  # e5 matches these short paragraphs well


def test_languages_without_udhr_are_scored_on_their_own_data_and_nothing_scored_is_a_failure(make_config, tiny_encoder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluate import NothingScored, evaluate_models
    from pipeline.seeds import EVAL_SCHEMA

    pq.write_table(pa.Table.from_pylist([], schema=EVAL_SCHEMA), tmp_path / "eval.parquet")  # seeds.udhr: false
    udhr = {(r["lang"], r["unit"]): r["text"] for r in udhr_eval_rows(["eng", "yor"])}
    units = sorted(u for (lang, u) in udhr if lang == "yor" and ("eng", u) in udhr)[:10]
    pq.write_table(pa.Table.from_pylist([{"nhx": udhr["yor", u], "eng": udhr["eng", u]} for u in units]), tmp_path / "nhx.parquet")
    inputs = {"eval": str(tmp_path / "eval.parquet")}
    cfg = make_config(languages=["nhx", "tzh"], seeds={"udhr": False, "files": ["unused.txt"]},
                      train={"encoder": tiny_encoder}, evaluate={"tasks": [], "bootstrap_samples": 50,
                                                                 "parallel": {"nhx": str(tmp_path / "nhx.parquet")}})
    out = tmp_path / "out"
    out.mkdir()
    result = evaluate_models(cfg, {"base": tiny_encoder, "trained": tiny_encoder}, inputs, str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["parallel"]["per_language"]["nhx"]["base"]["n"] == 10
    assert metrics["verdict"]["task"] == "parallel" and metrics["verdict"]["outcome"] == "no_change"  # the same weights
    assert result.counts["languages"] == 1 and (out / "report.md").read_text().count("## Verdict") == 1

    nothing = make_config(languages=["nhx", "tzh"], seeds={"udhr": False, "files": ["unused.txt"]},
                          train={"encoder": tiny_encoder}, evaluate={"tasks": [], "bootstrap_samples": 50})
    with pytest.raises(NothingScored, match="evaluate scored nothing: no task had data for any of \\['nhx', 'tzh'\\]"):
        evaluate_models(nothing, {"base": tiny_encoder}, inputs, str(out))
    report = (out / "report.md").read_text()
    assert "Evaluation scored nothing" in report and "| retrieval | nhx | no held-out UDHR text for this language |" in report
