"""Stage `synthesize`: seed anchors -> (anchor, positive, hard negative) triplets from an LLM.

Ray Data streams the anchors through a pool of generation actors. Model output is parsed,
never trusted: a row whose answer cannot be parsed, whose prompt is too long, or whose
generation raised is kept with its reason in `status` (and counted), never fails the job.
"""

from __future__ import annotations

import math
import random
import re
from functools import lru_cache
from importlib import resources

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pycountry

from pipeline.config import RunConfig
from pipeline.manifest import StageOutput, join, reset_dir

REQUIRED_COLUMNS = {"id", "lang", "text"}
ROLES = ("positive", "negative")
OK = "ok"

ROLE_INSTRUCTIONS = {
    "positive": "Write one {language} sentence that means the same as the sentence below, or that follows from it.",
    "negative": "Write one {language} sentence on the same topic as the sentence below that contradicts it.",
}
SYSTEM_PROMPT = "You write single sentences for a dataset of sentence pairs. Answer with the sentence only."
_LABEL = re.compile(r"^\s*(sentence|answer|output|positive|negative|hypothesis|english|translation|response)\s*\d*\s*[:：-]\s*", re.I)
_REFUSAL = re.compile(r"^(i'?m sorry|i am sorry|i cannot|i can'?t|as an ai|sorry,)", re.I)


# ---------------------------------------------------------------- prompts and parsing (pure)

def language_name(code: str) -> str:
    lang = pycountry.languages.get(alpha_3=code)
    return lang.name if lang else code


def is_short_latin(text: str, limit: int) -> bool:
    # Byte-level tokenizers spend 3-4x more tokens on other scripts; prompt length is generation time.
    return len(text) <= limit and all(ord(c) < 0x250 for c in text)


@lru_cache(maxsize=1)
def fewshot_pool() -> dict[str, list[tuple[str, str]]]:
    """Short Latin-script (anchor, output) pairs per role from the bundled cross-lingual NLI pairs."""
    path = resources.files("pipeline.corpus") / "xnli_pairs.parquet"
    rows = pq.read_table(str(path)).to_pylist()
    return {
        role: [(r["anchor"], r["output"]) for r in rows if r["role"] == role and is_short_latin(r["anchor"], 110) and len(r["output"]) <= 90]
        for role in ROLES
    }


def build_messages(anchor: str, role: str, row_id: str, output_language: str, num_shots: int) -> list[dict]:
    """A few-shot chat for one anchor and role; shots are chosen by the row id, so reruns are identical."""
    instruction = ROLE_INSTRUCTIONS[role].format(language=output_language)
    shots = random.Random(f"{row_id}/{role}").sample(fewshot_pool()[role], num_shots)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for shot_anchor, shot_output in shots:
        messages.append({"role": "user", "content": f"{instruction}\nSentence: {shot_anchor}"})
        messages.append({"role": "assistant", "content": shot_output})
    messages.append({"role": "user", "content": f"{instruction}\nSentence: {anchor}"})
    return messages


def parse_answer(raw: str) -> tuple[str | None, str]:
    """(sentence, "ok") or (None, reason) for one generated answer."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    if not lines:
        return None, "unparseable:empty"
    text = _LABEL.sub("", lines[0]).strip().strip("\"'“”«»").strip()
    if not text:
        return None, "unparseable:label_only"
    if _REFUSAL.match(text):
        return None, "unparseable:refusal"
    return text, OK


# ---------------------------------------------------------------- the transformers engine

class HFGenerator:
    """A Ray Data actor: transformers causal LM, batched, left-padded, greedy by default."""

    def __init__(self, model_path: str, cfg: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gen = cfg["generator"]
        torch.set_num_threads(gen["torch_threads"] or max(1, math.ceil(gen["cpus_per_actor"])))
        self.torch = torch
        self.gen = gen
        self.synthesis = cfg["synthesis"]
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def prompt(self, anchor: str, lang: str, role: str, row_id: str) -> str:
        language = "English" if self.synthesis["output_language"] == "eng" else language_name(lang)
        messages = build_messages(anchor, role, row_id, language, self.synthesis["num_shots"])
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str]) -> list[str]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = self.gen["temperature"] > 0
        with self.torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.gen["max_new_tokens"],
                do_sample=sample,
                temperature=self.gen["temperature"] if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=["\n"],  # one sentence is asked for: a new line ends the answer
                tokenizer=self.tokenizer,
            )
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def generate_safely(self, prompts: list[str]) -> list[tuple[str | None, str]]:
        """(raw answer, "ok") per prompt; an engine error costs only the prompts it hit."""
        results: list[tuple[str | None, str]] = [(None, "")] * len(prompts)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        todo = []
        for i, n in enumerate(lengths):
            if n > self.gen["max_prompt_tokens"]:
                results[i] = (None, "prompt_too_long")
            else:
                todo.append(i)
        todo.sort(key=lambda i: lengths[i])  # similar lengths batch together: less padding to compute
        for start in range(0, len(todo), self.gen["batch_size"]):
            chunk = todo[start:start + self.gen["batch_size"]]
            try:
                answers = self.generate([prompts[i] for i in chunk])
                for i, a in zip(chunk, answers):
                    results[i] = (a, OK)
            except Exception:  # noqa: BLE001 - retry one by one to isolate the failing prompt
                for i in chunk:
                    try:
                        results[i] = (self.generate([prompts[i]])[0], OK)
                    except Exception as err:  # noqa: BLE001
                        results[i] = (None, f"engine_error:{type(err).__name__}: {str(err)[:160]}")
        return results

    def __call__(self, batch: dict) -> dict:
        ids, langs, anchors = list(batch["id"]), list(batch["lang"]), list(batch["text"])
        prompts = [self.prompt(a, lang, role, i) for i, lang, a in zip(ids, langs, anchors) for role in ROLES]
        generated = self.generate_safely(prompts)
        out = {k: [] for k in ("id", "lang", "strategy", "anchor", "positive", "negative", "raw_positive", "raw_negative", "status")}
        for n, (row_id, lang, anchor) in enumerate(zip(ids, langs, anchors)):
            texts, problems = {}, []
            for k, role in enumerate(ROLES):
                raw, status = generated[2 * n + k]
                text, status = parse_answer(raw) if status == OK else (None, status)
                texts[role] = text
                out[f"raw_{role}"].append(raw)
                if status != OK:
                    problems.append(f"{role}:{status}")
            out["id"].append(row_id)
            out["lang"].append(lang)
            out["strategy"].append("icl")
            out["anchor"].append(anchor)
            out["positive"].append(texts["positive"])
            out["negative"].append(texts["negative"])
            out["status"].append(";".join(problems) or OK)
        return out


# ---------------------------------------------------------------- the stage

GENERATIONS_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("id", "lang", "strategy", "anchor", "positive", "negative", "raw_positive", "raw_negative", "status")]
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
            key = part.split(":engine_error:")[0] + ":engine_error" if ":engine_error:" in part else part
            reasons[key] = reasons.get(key, 0) + 1
    return dict(sorted(reasons.items()))


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    import ray

    from pipeline.models import resolve_model

    seeds_path = inputs["train"]
    check_columns(pq.read_schema(seeds_path).names, seeds_path)
    num_anchors = pq.read_metadata(seeds_path).num_rows
    model_path = resolve_model(cfg.generator.model, cfg.cache_dir)
    gen_dir = join(out_dir, "generations")

    # One small Parquet file is one block: repartition so every actor gets work and progress is visible.
    blocks = max(cfg.generator.num_actors * 4, num_anchors // (cfg.generator.batch_size * 2) or 1)
    ds = ray.data.read_parquet(seeds_path).repartition(blocks)
    ds = ds.map_batches(
        HFGenerator,
        fn_constructor_kwargs={"model_path": model_path, "cfg": cfg.model_dump(mode="json")},
        batch_size=cfg.generator.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.generator.num_actors),
        num_cpus=cfg.generator.cpus_per_actor,
        batch_format="numpy",
    )
    reset_dir(gen_dir)  # files of an interrupted earlier attempt would duplicate rows
    ds.write_parquet(gen_dir)

    table = pads.dataset(gen_dir, format="parquet").to_table()
    statuses = table.column("status").to_pylist()
    ok = statuses.count(OK)
    return StageOutput(
        outputs={"generations": gen_dir},
        counts={"anchors": num_anchors, "rows": table.num_rows, "ok": ok, "dropped": table.num_rows - ok},
        details={"drop_reasons": count_reasons(statuses), "generator": model_path, "strategies": cfg.synthesis.strategies},
    )
