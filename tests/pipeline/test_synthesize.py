import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline import synthesize
from pipeline.synthesize import OK, count_reasons

pytestmark = pytest.mark.timeout(600)


def test_drop_reasons_are_counted_per_role():
    statuses = [OK, "positive:unparseable:empty", "positive:unparseable:empty;negative:engine_error:RuntimeError: boom", OK]
    assert count_reasons(statuses) == {"negative:engine_error": 1, "positive:unparseable:empty": 2}


def test_stage_generates_a_row_per_anchor_and_counts_a_too_long_prompt(ray_local, make_config, tmp_path, generator_path):
    anchors = [
        ("yor-a", "yor", "Gbogbo ènìyàn ni a bí ní òmìnira."),
        ("yor-b", "yor", "Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè àti òmìnira."),
        ("kha-a", "kha", "Ki briew baroh ki kha laitluid bad ki ong kumwei ha ka burom."),
        ("kha-long", "kha", "Ka jingshisha " * 120),
    ]
    seeds_path = tmp_path / "train.parquet"
    pq.write_table(pa.table({k: [a[i] for a in anchors] for i, k in enumerate(("id", "lang", "text"))}), seeds_path)
    cfg = make_config(generator={"max_new_tokens": 12, "max_prompt_tokens": 500, "batch_size": 4}, synthesis={"num_shots": 1})
    out = tmp_path / "synth"
    result = synthesize.run(cfg, {"train": str(seeds_path)}, str(out))

    rows = {r["id"]: r for r in pads.dataset(result.outputs["generations"]).to_table().to_pylist()}
    assert set(rows) == {a[0] for a in anchors}, "every anchor comes back exactly once"
    assert rows["kha-long"]["status"] == "positive:prompt_too_long;negative:prompt_too_long"
    assert result.counts["rows"] == 4 and result.details["drop_reasons"]["positive:prompt_too_long"] == 1
    for row_id in ("yor-a", "yor-b", "kha-a"):
        row = rows[row_id]
        assert row["raw_positive"] is not None and row["raw_negative"] is not None
        if row["status"] == OK:
            assert row["positive"] and row["negative"] and "\n" not in row["positive"]


def test_stage_rejects_seeds_without_the_columns_it_needs(make_config, tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sentence": ["x"]}), path)
    with pytest.raises(ValueError, match=r"synthesize: input .*bad.parquet lacks columns \['id', 'lang', 'text'\]"):
        synthesize.run(make_config(), {"train": str(path)}, str(tmp_path / "out"))


SEEDS = [{"id": "yor-a", "lang": "yor", "text": "Gbogbo ènìyàn ni a bí ní òmìnira."},
         {"id": "kha-a", "lang": "kha", "text": "Ki briew baroh ki kha laitluid."}]
REGISTRY = [{"name": "xllora-positive", "strategy": "xllora", "role": "positive", "lang": None},
            {"name": "xllora-negative", "strategy": "xllora", "role": "negative", "lang": None},
            {"name": "composition-positive-yor", "strategy": "composition", "role": "positive", "lang": "yor"}]


def test_requests_pick_the_adapter_of_their_strategy_role_and_language(make_config):
    cfg = make_config(synthesis={"strategies": ["icl", "xllora"], "num_shots": 2})
    requests = synthesize.plan_requests(SEEDS, cfg, REGISTRY)
    assert len(requests) == 2 * 2 * 2
    assert [r["adapter"] for r in requests] == sorted(r["adapter"] for r in requests), "grouped by adapter for the engines"
    by_key = {(r["id"], r["strategy"], r["role"]): r for r in requests}
    assert by_key[("kha-a", "xllora", "negative")]["adapter"] == "xllora-negative"
    assert by_key[("kha-a", "icl", "negative")]["adapter"] == ""
    icl, adapted = (json.loads(by_key[("yor-a", s, "positive")]["messages"]) for s in ("icl", "xllora"))
    assert len(icl) == 6 and len(adapted) == 2, "icl carries its shots; an adapter gets the zero-shot prompt it learned"
    with pytest.raises(ValueError, match="no composition adapter for role negative and language yor"):
        synthesize.plan_requests(SEEDS, make_config(synthesis={"strategies": ["composition"]}), REGISTRY)


def test_icl_requests_of_a_language_and_role_share_their_shots_and_come_together(make_config):
    from pipeline.engines import prompt_context

    seeds = [{"id": f"{lang}-{i}", "lang": lang, "text": "x" * (i + 1)} for lang in ("yor", "kha") for i in range(3)]
    requests = synthesize.plan_requests(seeds, make_config(synthesis={"strategies": ["icl"], "num_shots": 2}), [])
    contexts = [prompt_context(r["messages"]) for r in requests]
    runs = [c for i, c in enumerate(contexts) if i == 0 or c != contexts[i - 1]]
    assert len(runs) == len(set(runs)) == 4, "one run of requests per (language, role): an engine batch shares its shots"
    for context in set(contexts):
        assert len({(r["lang"], r["role"]) for r, c in zip(requests, contexts) if c == context}) == 1


def test_answers_become_one_row_per_anchor_and_strategy_and_a_lost_answer_is_named():
    answer = lambda role, raw, strategy="icl", status=OK: {"id": "a", "lang": "yor", "strategy": strategy, "role": role,  # noqa: E731
                                                          "adapter": "", "anchor": "x", "raw": raw, "status": status}
    rows = synthesize.assemble_triplets([answer("positive", "P."), answer("negative", "N."), answer("positive", "Q.", "xllora"),
                                         answer("negative", None, "xllora", "engine_error:http: boom")])
    assert [(r["strategy"], r["positive"], r["negative"], r["status"]) for r in rows] == [
        ("icl", "P.", "N.", OK), ("xllora", "Q.", None, "negative:engine_error:http: boom")]
    lost = synthesize.assemble_triplets([answer("positive", "P.")])
    assert lost[0]["status"] == "negative:missing"


def test_stage_generates_every_strategy_with_its_adapters(ray_local, make_config, tiny_generator, tmp_path):
    """icl, xllora and composition (the end-to-end test on the bundled models runs icl and xllora): each row generated
    with the adapter of its strategy, role and, for composition, language."""
    from pipeline import adapters

    seeds_path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(SEEDS), seeds_path)
    strategies = ("icl", "xllora", "composition")
    cfg = make_config(generator={"model": tiny_generator, "max_new_tokens": 4, "batch_size": 4},
                      synthesis={"strategies": list(strategies), "num_shots": 1}, adapters={"steps": 1, "batch_size": 2, "rank": 4})
    registry = adapters.run(cfg, {"train": str(seeds_path)}, str(tmp_path / "adapters")).outputs["registry"]
    result = synthesize.run(cfg, {"train": str(seeds_path), "registry": registry}, str(tmp_path / "synth"))

    answers = pq.read_table(result.outputs["answers"]).to_pylist()
    assert sorted((a["id"], a["strategy"], a["role"]) for a in answers) == sorted(
        (s["id"], strategy, role) for s in SEEDS for strategy in strategies for role in ("positive", "negative"))
    used = {(a["strategy"], a["role"], a["lang"]): a["adapter"] for a in answers}
    assert used[("icl", "positive", "kha")] == "" and used[("xllora", "negative", "yor")] == "xllora-negative"
    assert used[("composition", "positive", "kha")] == "composition-positive-kha"
    assert used[("composition", "negative", "yor")] == "composition-negative-yor"
    rows = pq.read_table(result.outputs["generations"]).to_pylist()
    assert sorted((r["id"], r["strategy"]) for r in rows) == sorted((s["id"], st) for s in SEEDS for st in strategies)
    assert result.details["per_strategy"]["xllora"]["rows"] == 2 and result.counts["requests"] == 12


REFERENCED = [
    {"id": "yor-1", "lang": "yor", "text": "Gbogbo ènìyàn ni a bí ní òmìnira.", "reference": "All human beings are born free."},
    {"id": "yor-2", "lang": "yor", "text": "Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "reference": "Everyone has the right to life."},
    {"id": "kha-1", "lang": "kha", "text": "Ka Khasi ka long ka ktien.", "reference": None},
]


def test_parallel_generates_no_positive_and_asks_negatives_of_the_reference(make_config):
    generate = make_config(synthesis={"strategies": ["parallel", "icl"], "parallel_negatives": "generate"})
    requests = synthesize.plan_requests(REFERENCED, generate, [])
    parallel = [r for r in requests if r["strategy"] == "parallel"]
    assert {(r["id"], r["role"]) for r in parallel} == {("yor-1", "negative"), ("yor-2", "negative")}, \
        "no positive request, and none for an anchor without a reference"
    last = json.loads(next(r for r in parallel if r["id"] == "yor-1")["messages"])[-1]["content"]
    assert "contradicts" in last and last.endswith("All human beings are born free.")
    assert len([r for r in requests if r["strategy"] == "icl"]) == 6, "icl still asks both roles for every anchor"
    mine = make_config(synthesis={"strategies": ["parallel"], "parallel_negatives": "mine"})
    assert synthesize.plan_requests(REFERENCED, mine, []) == []


def test_parallel_triplets_take_the_reference_as_positive_unparsed():
    answers = synthesize.given_answers(REFERENCED, ["parallel"])
    answers.append({"id": "yor-1", "lang": "yor", "strategy": "parallel", "role": "negative", "anchor": REFERENCED[0]["text"],
                    "raw": "Answer: Some people are born as slaves.", "status": OK})
    rows = {r["id"]: r for r in synthesize.assemble_triplets(answers, {r["id"]: r["reference"] for r in REFERENCED if r["reference"]})}
    assert rows["yor-1"]["positive"] == "All human beings are born free." and rows["yor-1"]["reference"] == rows["yor-1"]["positive"]
    assert rows["yor-1"]["negative"] == "Some people are born as slaves." and rows["yor-1"]["status"] == OK
    assert rows["yor-2"]["status"] == "negative:missing" and "kha-1" not in rows


def test_mined_negatives_are_other_references_of_the_run(make_config, e5_path):
    seeds = [{"id": f"yor-{i}", "lang": "yor", "text": f"anchor {i}", "reference": ref} for i, ref in enumerate([
        "Everyone has the right to education.", "Education shall be free, at least in the elementary stages.",
        "No one shall be held in slavery.", "Everyone has the right to life, liberty and security of person."])]
    answers = synthesize.mined_answers(seeds, make_config(synthesis={"strategies": ["parallel"]}))
    negatives = {a["id"]: a["raw"] for a in answers}
    assert all(a["status"] == OK and a["role"] == "negative" for a in answers)
    references = {s["reference"] for s in seeds}
    assert all(negatives[s["id"]] in references and negatives[s["id"]] != s["reference"] for s in seeds)
    from sentence_transformers import SentenceTransformer

    refs = [s["reference"] for s in seeds]
    sims = SentenceTransformer(e5_path, device="cpu").encode(refs, prompt="query: ", normalize_embeddings=True) @ \
        SentenceTransformer(e5_path, device="cpu").encode(refs, prompt="query: ", normalize_embeddings=True).T
    for i, s in enumerate(seeds):  # the most similar other reference under the base encoder
        sims[i, i] = -1
        assert negatives[s["id"]] == refs[int(sims[i].argmax())]
