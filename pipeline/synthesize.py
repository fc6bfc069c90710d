"""Stage `synthesize`: seed anchors -> (anchor, positive, hard negative) triplets from an LLM, per strategy.

Each anchor becomes one request per (strategy, role): icl = few-shot prompt to the base
generator; composition / xllora = zero-shot prompt to the role's adapter from the adapters
registry. The parallel strategy generates no positive: an anchor's human reference translation is
its positive, and its hard negative is either mined among the other references with the base
encoder or written by the generator from the reference (`synthesis.parallel_negatives`). Ray Data streams the requests through the configured engine (pipeline/engines.py).
Model output is parsed, never trusted: a row whose answer cannot be parsed, whose prompt is
too long, or whose generation raised is kept with its reason in `status` (and counted),
never fails the job. answers/ keeps every raw answer; generations.parquet has one row per
(anchor, strategy).

An interrupted attempt is resumed: answers/_attempt.json names what the answers were generated from (the
generator, the synthesis settings, the stages before), and a rerun with the same keeps every complete answer file
and only generates the requests they lack. Hours of generation for many languages are not lost to one crash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.adapter_registry import find_adapter, read_registry, registry_by_language
from pipeline.config import RunConfig
from pipeline.engines import OK, prompt_context  # OK: the one "no problem" status of every engine and generations row
from pipeline.manifest import StageOutput, join, read_json, reset_dir, write_json
from pipeline.prompts import ROLES, build_messages, language_name, parse_answer

REQUIRED_COLUMNS = {"id", "lang", "text"}
REFERENCE = "reference"  # the seeds' optional column: the anchor's human English translation

# ---------------------------------------------------------------- requests and triplets (pure)

def plan_requests(seeds: list[dict], cfg: RunConfig, registry: list[dict]) -> list[dict]:
    """One generation request per (anchor, strategy, role), ordered so that an engine batch holds one adapter and one
    few-shot context (the chat before its last turn): the hf engine computes a batch's shared prompt start once.

    icl prompts carry few-shot examples; adapter strategies get the zero-shot prompt their adapters were trained on.
    The parallel strategy asks only for generated negatives, written from the anchor's English reference, and only
    for anchors that have one.
    """
    by_lang = registry_by_language(registry)
    requests = []
    for row in seeds:
        language = "English" if cfg.synthesis.output_language == "eng" else language_name(row["lang"])
        for strategy in cfg.synthesis.strategies:
            if strategy == "parallel":
                if row.get(REFERENCE) and cfg.synthesis.parallel_negatives == "generate":
                    messages = build_messages(row[REFERENCE], "negative", row["lang"], "English", cfg.synthesis.num_shots)
                    requests.append({"id": row["id"], "lang": row["lang"], "strategy": strategy, "role": "negative",
                                     "adapter": "", "anchor": row["text"], "messages": json.dumps(messages, ensure_ascii=False)})
                continue
            for role in ROLES:
                adapter = ""  # the base model; "" not None, so the column stays a string column in every batch format
                if strategy != "icl":
                    found = find_adapter(by_lang.get(row["lang"], []) + by_lang.get(None, []), strategy, role, row["lang"])
                    if found is None:
                        raise ValueError(f"synthesize: no {strategy} adapter for role {role} and language {row['lang']} in the "
                                         "adapters registry; rerun the adapters stage (`bootembed adapters CONFIG`)")
                    adapter = found["name"]
                shots = cfg.synthesis.num_shots if strategy == "icl" else 0
                messages = build_messages(row["text"], role, row["lang"], language, shots)
                requests.append({"id": row["id"], "lang": row["lang"], "strategy": strategy, "role": role, "adapter": adapter,
                                 "anchor": row["text"], "messages": json.dumps(messages, ensure_ascii=False)})
    requests.sort(key=lambda r: (r["adapter"], prompt_context(r["messages"]), r["role"], len(r["anchor"])))
    return requests


def given_answers(seeds: list[dict], strategies: list[str]) -> list[dict]:
    """The parallel strategy's positives: each anchor's human reference, an answer that needs no generation or parsing."""
    if "parallel" not in strategies:
        return []
    return [{"id": r["id"], "lang": r["lang"], "strategy": "parallel", "role": "positive", "anchor": r["text"],
             "raw": r[REFERENCE], "status": OK, "given": True} for r in seeds if r.get(REFERENCE)]


def assemble_triplets(answers: list[dict], references: dict[str, str] | None = None) -> list[dict]:
    """Answer rows (one per role) -> one generations row per (anchor, strategy), with every problem in `status`.

    references: seed id -> English reference, carried into each row (fidelity measures against it).
    """
    grouped: dict[tuple[str, str], dict] = {}
    for a in answers:
        row = grouped.setdefault((a["id"], a["strategy"]), {
            "id": a["id"], "lang": a["lang"], "strategy": a["strategy"], "anchor": a["anchor"],
            "reference": (references or {}).get(a["id"]),
            "positive": None, "negative": None, "raw_positive": None, "raw_negative": None, "_problems": {}, "_seen": set()})
        row["_seen"].add(a["role"])
        if a.get("given"):
            text, status = a["raw"], OK
        else:
            text, status = parse_answer(a["raw"]) if a["status"] == OK else (None, a["status"])
        row[a["role"]] = text
        row[f"raw_{a['role']}"] = a["raw"]
        if status != OK:
            row["_problems"][a["role"]] = f"{a['role']}:{status}"
    out = []
    for key in sorted(grouped):
        row = grouped[key]
        for role in ROLES:  # a role with no answer row at all is a lost request, not silence
            if role not in row["_seen"]:
                row["_problems"][role] = f"{role}:missing"
        problems = [row["_problems"][r] for r in ROLES if r in row["_problems"]]
        row.pop("_problems"), row.pop("_seen")
        out.append({**row, "status": ";".join(problems) or OK})
    return out


# ---------------------------------------------------------------- the stage

GENERATIONS_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("id", "lang", "strategy", "anchor", "reference", "positive", "negative", "raw_positive",
                                      "raw_negative", "status")]
)


def check_columns(table_columns: list[str], source: str) -> None:
    missing = REQUIRED_COLUMNS - set(table_columns)
    if missing:
        raise ValueError(f"synthesize: input {source} lacks columns {sorted(missing)} (it has {sorted(table_columns)})")


def count_reasons(statuses: list[str]) -> dict[str, int]:
    """Drop reasons per role, e.g. {"negative:unparseable:empty": 3, "positive:engine_error": 1}."""
    reasons: dict[str, int] = {}
    for status in statuses:
        if status == OK:
            continue
        for part in status.split(";"):
            key = part.split(":engine_error")[0] + ":engine_error" if ":engine_error" in part else part
            reasons[key] = reasons.get(key, 0) + 1
    return dict(sorted(reasons.items()))


def generate(cfg: RunConfig, requests, model_path: str, registry: list[dict]):
    """The configured engine over a Ray Dataset of requests. The engines get the generator section itself (Ray
    pickles it to their actors), so they read the schema's fields and defaults, never a dict of their own."""
    from pipeline import engines

    generator = cfg.generator
    adapter_paths = {r["name"]: r["path"] for r in registry}
    if generator.engine == "openai":
        return engines.generate_openai(requests, generator)
    if generator.engine == "vllm":
        import ray

        rank = max([cfg.adapters.rank, *[adapter_rank(p) for p in adapter_paths.values()]])
        return engines.generate_vllm(requests, generator, model_path, adapter_paths,
                                     on_gpu=ray.cluster_resources().get("GPU", 0) > 0, max_lora_rank=rank)
    return engines.generate_hf(requests, generator, model_path, adapter_paths)


def adapter_rank(path: str) -> int:
    with open(f"{path}/adapter_config.json") as f:
        return int(json.load(f)["r"])


PLAN = "_plan.json"  # answers/_plan.json: how many requests this attempt plans ("_": not read as answers)


def request_key(row: dict) -> tuple[str, str, str]:
    return row["id"], row["strategy"], row["role"]


# Generator settings that change how fast answers come, not what they say: a run that crashed for memory can be
# resumed with a smaller batch or fewer actors.
THROUGHPUT_SETTINGS = {"num_actors", "cpus_per_actor", "torch_threads", "batch_size", "concurrency", "max_requests_per_s",
                       "max_retries", "max_loras", "max_cpu_loras", "tensor_parallel_size", "api_key_env"}


def attempt_key(cfg: RunConfig, inputs: dict[str, str], model_path: str) -> str:
    """A hash of everything an answer depends on: the generator, the synthesis settings, and the stages before."""
    generator = {k: v for k, v in cfg.generator.model_dump(mode="json").items() if k not in THROUGHPUT_SETTINGS}
    upstream = {name: (read_json(path) or {}).get("fingerprint") for name, path in inputs.items()
                if name.endswith("_manifest")}
    what = {"generator": generator, "synthesis": cfg.synthesis.model_dump(mode="json"), "model": model_path,
            "upstream": upstream}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def resume_answers(answers_dir: str, key: str) -> set[tuple[str, str, str]]:
    """The requests answered by an interrupted attempt with the same `key`, keeping its complete answer files (a file
    cut off mid-write is deleted); anything else in answers/ is cleared. Stage folders are local (run.call_stage)."""
    marker = os.path.join(answers_dir, "_attempt.json")
    if (read_json(marker) or {}).get("key") != key:
        reset_dir(answers_dir)  # answers from other settings must not mix with these
        write_json(marker, {"key": key})
        return set()
    answered = set()
    for path in sorted(glob.glob(os.path.join(answers_dir, "*.parquet"))):
        try:
            table = pq.read_table(path, columns=["id", "strategy", "role"])
        except (OSError, pa.ArrowInvalid):
            os.remove(path)
            continue
        answered.update(request_key(r) for r in table.to_pylist())
    return answered


def generate_answers(cfg: RunConfig, requests: list[dict], model_path: str, registry: list[dict], answers_dir: str) -> None:
    """Stream `requests` through the engine into parquet files under answers_dir, written as batches finish."""
    import ray

    # Several blocks, so every actor gets work and progress is visible; in order, so batches share an adapter.
    # Sliced here rather than by a Ray repartition, whose 1-CPU tasks can wait forever behind an engine actor and
    # its helper stages on a 2-CPU machine.
    table = pa.Table.from_pylist(requests)
    size = max(1, math.ceil(table.num_rows / max(cfg.generator.num_actors * 4, table.num_rows // (cfg.generator.batch_size * 4) or 1)))
    ds = ray.data.from_arrow([table.slice(start, size) for start in range(0, table.num_rows, size)])
    # Writing a few strings needs next to no CPU, and the writes are the progress a person sees: reserving any CPU for
    # them queued every write behind the engine's actors when these take every CPU (the demo's 2 actors on 2 cores
    # showed 0/270 requests until the stage ended).
    generate(cfg, ds, model_path, registry).write_parquet(answers_dir, ray_remote_args={"num_cpus": 0})


def mined_answers(seeds: list[dict], cfg: RunConfig) -> list[dict]:
    """The parallel strategy's hard negatives, mined on the English side: for each anchor's reference, the most similar
    other reference under the base encoder (sentence-transformers' mine_hard_negatives), short of a near-copy."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from pipeline.models import load_inference_encoder, resolve_model

    rows = [r for r in seeds if r.get(REFERENCE)]
    references = sorted({r[REFERENCE] for r in rows})
    if len(references) < 2:
        return [{"id": r["id"], "lang": r["lang"], "strategy": "parallel", "role": "negative", "anchor": r["text"],
                 "raw": "", "status": "no_other_reference_to_mine"} for r in rows]
    model = load_inference_encoder(resolve_model(cfg.train.encoder, cfg.cache_dir))
    mined = mine_hard_negatives(
        Dataset.from_dict({"query": references, "reference": references}), model, corpus=references, num_negatives=1,
        relative_margin=MINING_MARGIN, sampling_strategy="top", query_prompt=cfg.train.prefix,
        corpus_prompt=cfg.train.prefix, output_format="triplet", verbose=False)
    negative_of = {r["query"]: r["negative"] for r in mined}
    return [{"id": r["id"], "lang": r["lang"], "strategy": "parallel", "role": "negative", "anchor": r["text"],
             "raw": negative_of.get(r[REFERENCE], ""), "given": r[REFERENCE] in negative_of,
             "status": OK if r[REFERENCE] in negative_of else "no_mined_negative"} for r in rows]


# A mined negative must score below (1 - this) x the reference's score with itself: a near-copy of the reference (the
# same sentence in another article) would be a false negative.
MINING_MARGIN = 0.05


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    from pipeline.models import resolve_model

    seeds_path = inputs["train"]
    names = pq.read_schema(seeds_path).names
    check_columns(names, seeds_path)
    seeds = pq.read_table(seeds_path, columns=sorted(REQUIRED_COLUMNS | ({REFERENCE} & set(names)))).to_pylist()
    if "parallel" in cfg.synthesis.strategies and not any(r.get(REFERENCE) for r in seeds):
        raise ValueError("synthesize: synthesis.strategies has 'parallel', but no seed has a reference translation: use "
                         "the bundled UDHR (seeds.udhr: true) or give seed files an `eng` column, or two line-aligned "
                         "files [seeds.yor.txt, seeds.yor.eng.txt] (see `bootembed config --help-fields`)")
    registry = read_registry(inputs["registry"]) if inputs.get("registry") else []
    requests = plan_requests(seeds, cfg, registry)
    model_path = cfg.generator.model if cfg.generator.engine == "openai" else resolve_model(cfg.generator.model, cfg.cache_dir)
    answers_dir = join(out_dir, "answers")
    answered = resume_answers(answers_dir, attempt_key(cfg, inputs, model_path))
    write_json(os.path.join(answers_dir, PLAN), {"requests": len(requests)})  # the console's progress bar reads it
    todo = [r for r in requests if request_key(r) not in answered]
    if answered:
        print(f"[synthesize] resuming: {len(requests) - len(todo)} of {len(requests)} requests answered by an "
              f"interrupted attempt, {len(todo)} left", flush=True)
    if todo:
        generate_answers(cfg, todo, model_path, registry, answers_dir)

    answers = pads.dataset(answers_dir, format="parquet").to_table().to_pylist() if todo or answered else []
    answers += given_answers(seeds, cfg.synthesis.strategies)
    if "parallel" in cfg.synthesis.strategies and cfg.synthesis.parallel_negatives == "mine":
        answers += mined_answers(seeds, cfg)
    rows = assemble_triplets(answers, {r["id"]: r[REFERENCE] for r in seeds if r.get(REFERENCE)})
    gen_path = join(out_dir, "generations.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), gen_path)
    statuses = [r["status"] for r in rows]
    per_strategy = {s: {"rows": sum(r["strategy"] == s for r in rows), "ok": sum(r["strategy"] == s and r["status"] == OK for r in rows)}
                    for s in cfg.synthesis.strategies}
    return StageOutput(
        outputs={"generations": gen_path, "answers": answers_dir},
        counts={"anchors": len(seeds), "requests": len(requests), "resumed": len(requests) - len(todo),
                "rows": len(rows), "ok": statuses.count(OK),
                "dropped": len(rows) - statuses.count(OK)},
        details={"drop_reasons": count_reasons(statuses), "generator": model_path, "engine": cfg.generator.engine,
                 "strategies": cfg.synthesis.strategies, "per_strategy": per_strategy,
                 "drop_reasons_per_strategy": {s: count_reasons([r["status"] for r in rows if r["strategy"] == s])
                                               for s in cfg.synthesis.strategies}},
    )
