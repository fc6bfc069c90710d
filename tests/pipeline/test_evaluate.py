"""The evaluate stage end to end: every model on every task, metrics.json, report.md / report.html and the plots.

The pieces have their own tests under tests/pipeline/evaluation/.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

OTHER_STAGES = {f"pipeline.{s}" for s in ("seeds", "adapters", "synthesize", "filter", "train", "run", "cli")}


def test_the_evaluate_stage_imports_no_other_stage():
    """Stages stand side by side: evaluate reads the run's layout and records through shared modules only."""
    code = f"import sys, pipeline.evaluate; print(sorted(m for m in sys.modules if m in {sorted(OTHER_STAGES)!r}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


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
    # a run without train.lora: metrics.json keeps its keys, no LoRA section, no adapters.json
    assert set(metrics) == {"languages", "skipped", "config_hash", "task", "models", "tasks", "truncation", "verdict",
                            "precision"}
    assert metrics["precision"] == "fp32" and "bf16" not in report  # the default: fp32 arithmetic
    assert "LoRA" not in report and "adapters" not in result.outputs and not (out / "adapters.json").exists()


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


def test_sts_in_the_evaluation_reports_a_language_without_a_file_as_skipped(make_config, tiny_encoder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluate import evaluate_models

    pairs = tmp_path / "yor.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"Ọmọ {i} ń lọ.\tỌmọ {i} ń sáré.\t{i % 5}\n" for i in range(12)))
    cfg = make_config(languages=["yor", "kha"], train={"encoder": tiny_encoder},
                      evaluate={"tasks": [], "sts": {"yor": str(pairs)}, "bootstrap_samples": 20})
    pq.write_table(pa.Table.from_pylist(udhr_eval_rows(["eng", "yor", "kha"])), tmp_path / "eval.parquet")
    out = tmp_path / "out"
    out.mkdir()
    evaluate_models(cfg, {"base": tiny_encoder, "trained": tiny_encoder}, {"eval": str(tmp_path / "eval.parquet")}, str(out))
    sts = json.loads((out / "metrics.json").read_text())["tasks"]["sts"]
    yor = sts["per_language"]["yor"]["base"]
    assert yor["n"] == 12 and -1.0 <= yor["Spearman"] <= 1.0 and np.isfinite(sts["average"]["base"]["Spearman"])
    assert sts["per_language"]["kha"]["skipped"].startswith("no STS file for kha")


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

    from pipeline.evaluation import metrics as t
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


def test_a_lora_run_pairs_each_adapter_with_its_full_fine_tune_and_records_each_adapters_numbers(make_config, tiny_encoder,
                                                                                                 tmp_path):
    import pyarrow as pa

    from tests.conftest import random_encoder_adapter
    import pyarrow.parquet as pq

    from pipeline import encoder_lora
    from pipeline.evaluate import run

    pq.write_table(pa.Table.from_pylist(udhr_eval_rows(["eng", "yor", "kha"])), tmp_path / "eval.parquet")
    root = tmp_path / "demo"
    models = root / "train" / "models"
    models.mkdir(parents=True)
    (models / "parallel").symlink_to(tiny_encoder)
    # The adapters as the train stage leaves them without train.lora.export_merged: no merged folder, the evaluation
    # merges each into its base. B = 0: each computes the base's vectors, the full fine-tune's too, so every Δ is 0.
    lora_dir = root / "train" / "lora"
    (lora_dir / "base").parent.mkdir()
    (lora_dir / "base").symlink_to(tiny_encoder)
    for lang in ("yor", "kha"):
        random_encoder_adapter(str(lora_dir / "base"), str(lora_dir / f"{lang}-parallel"), seed=0, lora_b_std=0.0)
    encoder_lora.write_registry(str(lora_dir), {"base": "base", "adapters": [
        {"id": f"{lang}-parallel", "folder": f"{lang}-parallel", "metrics": {}} for lang in ("yor", "kha")]})
    lora = lambda lang: {"triplets": 20, "final_loss": 1.0, "adapter": f"{lang}-parallel", "language": lang,  # noqa: E731
                         "strategy": "parallel", "adapter_bytes": 1_000}
    manifest = {"fingerprint": "train-1", "counts": {}, "seconds": 1.0,
                "details": {"variants": {"parallel": {"triplets": 40, "final_loss": 1.0},
                                         "lora-yor-parallel": lora("yor"), "lora-kha-parallel": lora("kha")}}}
    (root / "train" / "manifest.json").write_text(json.dumps(manifest))
    cfg = make_config(languages=["yor", "kha"], synthesis={"strategies": ["parallel"]}, train={"encoder": tiny_encoder},
                      evaluate={"tasks": [], "bootstrap_samples": 50, "plot": False}, cache_dir=str(tmp_path / "cache"))
    out = root / "evaluate"
    out.mkdir()
    result = run(cfg, {"eval": str(tmp_path / "eval.parquet"), "models": str(models), "lora": str(lora_dir),
                       "train_manifest": str(root / "train" / "manifest.json")}, str(out))

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "parallel", "lora-parallel"], "the adapters as one encoder, not one column each"
    assert list(metrics["tasks"]["retrieval"]["average"]) == ["base", "parallel", "lora-parallel"]
    pair = metrics["lora_vs_full"]["strategies"]["parallel"]
    assert pair["same_data"] and pair["full_bytes"] == encoder_lora.folder_bytes(tiny_encoder) > 1_000
    assert {lang: a["model"] for lang, a in pair["adapters"].items()} == {"yor": "lora-yor-parallel", "kha": "lora-kha-parallel"}
    # each adapter encoded its own language's texts and English's only (read back from its vector cache)
    from pipeline.evaluation import encoding

    digest = encoding.folder_digest(str(lora_dir / "yor-parallel"))
    with np.load(next((tmp_path / "cache" / "vectors").glob(f"{digest}-*.npz"))) as cached:
        assert set(cached["keys"].tolist()) == {encoding.text_key(r["text"]) for r in udhr_eval_rows(["eng", "yor"])}
    yor = pair["tasks"]["retrieval"]["per_language"]["yor"]
    assert yor["lora"]["x->eng acc@1"] == yor["full"]["x->eng acc@1"] == \
        metrics["tasks"]["retrieval"]["per_language"]["yor"]["lora-parallel"]["x->eng acc@1"]
    assert yor["lora"]["delta_ci"]["x->eng acc@1"] == [0.0, 0.0]
    report = (out / "report.md").read_text()
    assert "## LoRA adapters beside the full fine-tune" in report and "no measurable difference" in report

    # each adapter's numbers, read back beside the registry while the train stage they were computed on is current
    assert result.outputs["adapters"] == str(out / "adapters.json")
    record = json.loads((out / "adapters.json").read_text())
    assert record["train_fingerprint"] == "train-1" and sorted(record["adapters"]) == ["kha-parallel", "yor-parallel"]
    numbers = encoder_lora.adapter_evaluations(str(root))
    assert numbers["yor-parallel"]["scores"]["retrieval"]["x->eng acc@1"] == yor["lora"]["x->eng acc@1"]
    assert numbers["yor-parallel"]["vs_full"]["parallel"]["retrieval"]["x->eng acc@1"]["delta"] == 0.0
    encoder_lora.write_registry(str(root / "train" / "lora"), {"base": "base", "adapters": [
        {"id": "yor-parallel", "folder": "yor-parallel", "metrics": {}}, {"id": "swh", "folder": "swh", "metrics": {}}]})
    registry = encoder_lora.registry_with_evaluations(str(root))
    assert registry["adapters"][0]["metrics"] == numbers["yor-parallel"] and registry["adapters"][1]["metrics"] == {}
    assert json.loads((root / "train" / "lora" / "registry.json").read_text())["adapters"][0]["metrics"] == {}  # the file stays train's
    manifest["fingerprint"] = "train-2"  # the train stage ran again: other adapters under the same ids
    (root / "train" / "manifest.json").write_text(json.dumps(manifest))
    assert encoder_lora.adapter_evaluations(str(root)) == {}
