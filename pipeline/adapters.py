"""Stage `adapters`: the LoRA adapters the adapter strategies generate with, plus their registry.

    xllora       XL-LoRA: one adapter per role, trained on cross-lingual pairs (anchor in one of
                 14 languages -> English positive / hard negative; the paper's own 10k pairs).
    composition  AdaMergeX: task adapters TA-<role> (anchor in a source language -> English output)
                 and language adapters LA-<lang> (causal LM on text of a language) merged into
                 one LoRA per (language, role): TA + t * (LA_target - LA_source), exactly
                 (peft's add_weighted_adapter with combination_type "cat").

Every adapter is its own Ray task, so a cluster trains many languages at once. Adapters are
peft folders under adapters/<name>/; registry.parquet keys them by (strategy, role, lang), the
way synthesis looks them up. Adapters named in `adapters.external` are registered, not trained.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import _console
from pipeline.adapter_registry import REGISTRY_SCHEMA, registry_row
from pipeline.config import ADAPTER_STRATEGIES, AdaptersConfig, RunConfig
from pipeline.corpus import load_udhr, udhr_languages, xnli_pairs
from pipeline.langid import identify, langid_code
from pipeline.manifest import StageOutput, join
from pipeline.prompts import ROLES, build_messages
from pipeline.records import RecordError, read_records



class AdapterDataError(ValueError):
    """Adapter training data that cannot be used; the message names the file, line or field."""


@dataclass
class AdapterJob:
    """One adapter to train: chat examples (prompt messages -> answer) or plain text (language model)."""
    name: str
    kind: str  # "xllora" | "task" | "language"
    role: str | None
    lang: str | None
    data: str  # where the examples came from, for the registry
    chats: list[tuple[list[dict], str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- training data (pure)

def chat_example(anchor: str, role: str, output: str) -> tuple[list[dict], str]:
    """The zero-shot prompt synthesis sends to an adapter, and the answer it should give."""
    return build_messages(anchor, role, "", "English", num_shots=0), output


def anchors_in(pairs: list[dict], lang: str) -> list[dict]:
    """Pairs whose anchor py3langid reads as `lang` (the bundled pairs carry no language column)."""
    code = langid_code(lang)
    if code is None:
        raise AdapterDataError(f"adapters.composition_source = {lang!r}: the language identifier cannot pick its anchors "
                               "out of the bundled pairs; give your own adapters.task_data")
    return [p for p in pairs if identify(p["anchor"])[0] == code]


def read_task_data(path: str) -> list[dict]:
    """User task-adapter data (anchor, positive, negative) -> pairs like the bundled ones."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AdapterDataError(f"adapters.task_data: {path}: no such file")
    if p.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".parquet"):
        raise AdapterDataError(f"adapters.task_data: {path}: expected .csv, .tsv, .jsonl or .parquet")
    try:
        records = read_records(p)
    except RecordError as err:
        raise AdapterDataError(str(err)) from None
    pairs = []
    for r in records:
        missing = [c for c in ("anchor", "positive", "negative") if not str(r.get(c) or "").strip()]
        if missing:
            raise AdapterDataError(f"{path}: record {r['line']} has no {', '.join(missing)} (columns: anchor, positive, negative)")
        pairs += [{"role": role, "pair": r["line"], "anchor": r["anchor"], "output": r[role]} for role in ROLES]
    return pairs


def language_texts(lang: str, seeds_train: list[dict]) -> list[str]:
    """Text of a language for its language adapter: its training seeds, or the bundled UDHR for the source language."""
    texts = [r["text"] for r in seeds_train if r["lang"] == lang]
    if not texts and lang in udhr_languages():
        texts = load_udhr([lang]).column("text").to_pylist()
    if not texts:
        raise AdapterDataError(f"no text in language {lang!r} for its language adapter: add a seed file for it, or name "
                               f"an existing adapter in adapters.external['lang-{lang}']")
    return texts


def plan_jobs(cfg: RunConfig, seeds_train: list[dict]) -> list[AdapterJob]:
    """Every adapter the configured strategies need, minus the ones given in adapters.external."""
    strategies = set(cfg.synthesis.strategies)
    jobs: list[AdapterJob] = []
    pairs = xnli_pairs() if strategies & {"xllora", "composition"} else []
    if "xllora" in strategies:
        for role in ROLES:
            chats = [chat_example(p["anchor"], role, p["output"]) for p in pairs if p["role"] == role]
            jobs.append(AdapterJob(f"xllora-{role}", "xllora", role, None, "bundled xnli_pairs (14 languages)", chats=chats))
    if "composition" in strategies:
        source = cfg.adapters.composition_source
        task_pairs = read_task_data(cfg.adapters.task_data) if cfg.adapters.task_data else anchors_in(pairs, source)
        data = cfg.adapters.task_data or f"bundled xnli_pairs, anchors in {source}"
        for role in ROLES:
            chats = [chat_example(p["anchor"], role, p["output"]) for p in task_pairs if p["role"] == role]
            jobs.append(AdapterJob(f"task-{role}", "task", role, source, data, chats=chats))
        for lang in dict.fromkeys([source, *cfg.languages]):
            if f"lang-{lang}" not in cfg.adapters.external:
                texts = language_texts(lang, seeds_train)
                jobs.append(AdapterJob(f"lang-{lang}", "language", None, lang,
                                       "seeds (train split)" if lang != source else "bundled UDHR", texts=texts))
    return [j for j in jobs if j.name not in cfg.adapters.external]


def encode_examples(tokenizer, job: AdapterJob, max_length: int, limit: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Up to `limit` (input ids, labels) pairs from a seeded shuffle of the job's examples.

    Chat prompts get label -100, so only the answer (with its end-of-turn token) is learned. A chat longer than
    max_length is skipped, not cut: a truncated answer would teach the adapter to stop mid-sentence.
    """
    items = [("chat", c) for c in job.chats] + [("text", t) for t in job.texts]
    encoded = []
    for k in random.Random(seed).sample(range(len(items)), len(items)):
        kind, item = items[k]
        if kind == "chat":
            messages, answer = item
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(full[len(prompt):] if full.startswith(prompt) else answer, add_special_tokens=False)["input_ids"]
            if len(prompt_ids) + len(answer_ids) > max_length:
                continue
            encoded.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
        else:
            ids = tokenizer(item, add_special_tokens=False)["input_ids"][:max_length]
            if len(ids) > 1:
                encoded.append((ids, list(ids)))
        if len(encoded) >= limit:
            break
    return encoded


# ---------------------------------------------------------------- training and composition (Ray tasks)

def lora_config(cfg: AdaptersConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_modules, lora_dropout=0.0,
                      task_type="CAUSAL_LM")


def load_generator(base_path: str, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(device)


def train_adapter(base_path: str, job: AdapterJob, cfg: AdaptersConfig, out_path: str, seed: int) -> dict:
    """Train one LoRA adapter (completion-only loss for chats, full loss for text) and save it in peft format.

    A plain loop rather than transformers' Trainer, on purpose: an adapter is a few dozen steps inside one Ray task,
    and Trainer's own machinery (accelerate set-up, logging, checkpoint and device handling, which Ray already owns
    here) costs more than the steps. Padding is the library's (DataCollatorForSeq2Seq: labels padded with -100).
    """
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq

    from pipeline import cpu_linear

    torch.set_num_threads(max(1, math.ceil(cfg.cpus_per_task)))
    torch.manual_seed(seed)
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    tokenizer, model = load_generator(base_path, device)
    tokenizer.padding_side = "right"  # the causal LM's positions start at 0 for every example
    examples = encode_examples(tokenizer, job, cfg.max_length, cfg.steps * cfg.batch_size, seed)
    if not examples:
        raise AdapterDataError(f"adapter {job.name}: no usable training example (all empty or longer than adapters.max_length)")
    model = get_peft_model(model, lora_config(cfg))
    cpu_linear.accelerate(model)  # AMD CPUs: oneDNN's fp32 products (pipeline/cpu_linear.py)
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    rng, order, losses, started = random.Random(seed), [], [], time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        batch = []
        while len(batch) < cfg.batch_size:
            if not order:
                order = rng.sample(range(len(examples)), len(examples))
            ids, labels = examples[order.pop()]
            batch.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        loss = model(**{k: v.to(device) for k, v in collate(batch).items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.save_pretrained(out_path)
    tail = losses[-max(1, len(losses) // 5):]  # the last fifth: one batch is noisy
    return {"examples": len(examples), "steps": cfg.steps, "loss_first": losses[0], "loss_last": sum(tail) / len(tail),
            "seconds": time.perf_counter() - started}


def compose_adapters(base_path: str, task_path: str, target_path: str, source_path: str, t: float, out_path: str) -> dict:
    """TA + t * (LA_target - LA_source) as one LoRA: the "cat" combination stacks the factors, so the sum is exact."""
    import torch
    from peft import PeftModel

    torch.set_num_threads(1)
    started = time.perf_counter()
    _, model = load_generator(base_path)
    model = PeftModel.from_pretrained(model, task_path, adapter_name="task")
    model.load_adapter(target_path, adapter_name="target")
    model.load_adapter(source_path, adapter_name="source")
    model.add_weighted_adapter(["task", "target", "source"], [1.0, t, -t], adapter_name="composed", combination_type="cat")
    for name in ("task", "target", "source"):
        model.delete_adapter(name)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_path)) as tmp:
        model.save_pretrained(tmp)  # only "composed" is left: peft writes it into tmp/composed
        shutil.rmtree(out_path, ignore_errors=True)
        os.replace(os.path.join(tmp, "composed"), out_path)  # every adapter is adapters/<name>, as vLLM looks them up
    return {"seconds": time.perf_counter() - started}


def external_path(reference: str, cache_dir: str) -> str:
    """A local peft folder as is; a hub id downloaded once into the cache (vLLM loads adapters from disk)."""
    local = Path(reference).expanduser()
    if local.is_dir():
        if not (local / "adapter_config.json").is_file():
            raise AdapterDataError(f"adapters.external: {reference} has no adapter_config.json (not a peft adapter folder)")
        return str(local.resolve())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(reference, cache_dir=os.path.join(os.path.expanduser(cache_dir), "adapters"))
    except Exception as err:  # noqa: BLE001 - offline, unknown id, no access: all mean "cannot use it"
        raise AdapterDataError(f"adapters.external: {reference!r} is neither a local folder nor a reachable hub id "
                               f"({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- the stage

def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    import ray

    from pipeline.models import resolve_model

    registry_path = join(out_dir, "registry.parquet")
    os.makedirs(out_dir, exist_ok=True)
    strategies = [s for s in cfg.synthesis.strategies if s in ADAPTER_STRATEGIES]
    if not strategies:
        pq.write_table(pa.Table.from_pylist([], schema=REGISTRY_SCHEMA), registry_path)
        return StageOutput(outputs={"registry": registry_path}, counts={"adapters": 0},
                           details={"note": f"{', '.join(cfg.synthesis.strategies)} need(s) no adapter"})

    base = resolve_model(cfg.generator.model, cfg.cache_dir)
    seeds_train = pq.read_table(inputs["train"], columns=["lang", "text"]).to_pylist()
    jobs = plan_jobs(cfg, seeds_train)
    task = ray.remote(num_cpus=cfg.adapters.cpus_per_task, num_gpus=1 if cfg.adapters.use_gpu else 0,
                      max_retries=2)(train_adapter)
    paths = {name: external_path(ref, cfg.cache_dir) for name, ref in cfg.adapters.external.items()}
    pending = {task.remote(base, job, cfg.adapters, join(out_dir, job.name), cfg.seed): job for job in jobs}
    stats: dict[str, dict] = {}
    _console.progress(0, len(jobs), "adapters")
    while pending:  # report each adapter as it finishes: on a laptop this stage takes minutes
        [done], _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done)
        stats[job.name] = ray.get(done)
        paths[job.name] = job.name  # relative to the registry: a moved run keeps its adapters
        s = stats[job.name]
        print(f"[adapters] {len(stats)}/{len(jobs)} {job.name}: {s['examples']} examples, loss {s['loss_first']:.2f} -> "
              f"{s['loss_last']:.2f} in {s['seconds']:.0f} s", flush=True)
        _console.progress(len(stats), len(jobs), "adapters")

    kinds = {j.name: j for j in jobs}
    rows = []
    if "xllora" in strategies:
        for role in ROLES:
            name = f"xllora-{role}"
            data = kinds[name].data if name in kinds else f"external: {cfg.adapters.external[name]}"
            rows.append(registry_row(name, "xllora", "xllora", role, None, base, paths[name], data, stats.get(name)))
    if "composition" in strategies:
        source, t = cfg.adapters.composition_source, cfg.adapters.composition_t
        for name in ["task-positive", "task-negative", *dict.fromkeys(f"lang-{x}" for x in (source, *cfg.languages))]:
            data = kinds[name].data if name in kinds else f"external: {cfg.adapters.external[name]}"
            rows.append(registry_row(name, "task" if name.startswith("task") else "language", None,
                                     name.split("-", 1)[1] if name.startswith("task") else None,
                                     name.split("-", 1)[1] if name.startswith("lang") else source, base, paths[name], data,
                                     stats.get(name)))
        compose = ray.remote(num_cpus=min(1.0, cfg.adapters.cpus_per_task), max_retries=2)(compose_adapters)
        where = {name: p if os.path.isabs(p) else join(out_dir, p) for name, p in paths.items()}
        merges = {(lang, role): compose.remote(base, where[f"task-{role}"], where[f"lang-{lang}"], where[f"lang-{source}"], t,
                                               join(out_dir, f"composition-{role}-{lang}"))
                  for lang in cfg.languages for role in ROLES}
        for (lang, role), ref in merges.items():
            merged = ray.get(ref)
            name = f"composition-{role}-{lang}"
            rows.append(registry_row(name, "composed", "composition", role, lang, base, name,
                                     f"task-{role} + {t:g} * (lang-{lang} - lang-{source})", {"seconds": merged["seconds"]}))
    pq.write_table(pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA), registry_path)
    return StageOutput(
        outputs={"registry": registry_path},
        counts={"adapters": len(rows), "trained": len(stats)},
        details={"adapters": {r["name"]: {k: r[k] for k in ("strategy", "role", "lang", "loss_first", "loss_last", "seconds")}
                              for r in rows}, "base_model": base},
    )

