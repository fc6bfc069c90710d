"""The two bundled generators side by side: SmolLM2-135M-Instruct vs Gemma-3-270M, measured in one run.

What it measures, per generator, with the code the product runs:

    * tokens per anchor: the demo languages' seed sentences (bundled UDHR) through each tokenizer; prompt length is
      generation time, and Gemma's 262k-piece vocabulary is meant to be more compact for low-resource languages.
    * adapter step: seconds per LoRA training step (pipeline.adapters.train_adapter: rank 8, all linear layers,
      batch 8, completion-only loss) on the bundled cross-lingual pairs, the xllora-positive adapter's data.
    * generation: seconds per icl request (two-shot prompt, greedy, up to 32 new tokens, stop at a new line),
      through the hf engine's HFGenerator in this process, and how many answers parse.

Both generators run in the same invocation with the same torch threads, so compare the ratios; the machine may be
shared. Quality (triplets kept, retrieval after training) needs whole runs: see README "Generator choice".

Run
    python benchmarks/bench_generators.py [--anchors 24] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.adapters import AdapterJob, chat_example, train_adapter  # noqa: E402
from pipeline.corpus import xnli_pairs  # noqa: E402
from pipeline.config import AdaptersConfig, GeneratorConfig  # noqa: E402
from pipeline.engines import OK, HFGenerator  # noqa: E402
from pipeline.models import resolve_model  # noqa: E402
from pipeline.prompts import build_messages, parse_answer  # noqa: E402

GENERATORS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct", "gemma-3-270m": "Gemma-3-270M"}
LANGUAGES = ("yor", "kha", "quc")


def demo_anchors(per_language: int) -> list[dict]:
    import pyarrow.parquet as pq
    from importlib import resources

    rows = pq.read_table(str(resources.files("pipeline.corpus") / "udhr.parquet")).to_pylist()
    anchors = []
    for lang in LANGUAGES:
        texts = [r["text"] for r in rows if r["lang"] == lang and 20 <= len(r["text"]) <= 300]
        anchors += [{"id": f"{lang}-{i}", "lang": lang, "text": t} for i, t in enumerate(texts[:per_language])]
    return anchors


def tokens_per_anchor(folder: str, anchors: list[dict]) -> dict[str, float]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return {lang: statistics.mean(len(tokenizer(a["text"], add_special_tokens=False)["input_ids"])
                                  for a in anchors if a["lang"] == lang) for lang in LANGUAGES}


def adapter_step_seconds(folder: str, steps: int, threads: int) -> float:
    pairs = [p for p in xnli_pairs() if p["role"] == "positive"][:steps * 8 * 4]
    job = AdapterJob("xllora-positive", "xllora", "positive", None, "bundled pairs",
                     chats=[chat_example(p["anchor"], "positive", p["output"]) for p in pairs])
    cfg = AdaptersConfig(steps=steps, batch_size=8, max_length=96, cpus_per_task=threads)
    with tempfile.TemporaryDirectory() as out:
        stats = train_adapter(folder, job, cfg, out, seed=0)
    return stats["seconds"] / steps


def generation(folder: str, anchors: list[dict], threads: int) -> tuple[float, float]:
    """(seconds per request, share of answers that parse) for two-shot icl positives, batch 16."""
    gen = GeneratorConfig(batch_size=16, max_new_tokens=32, torch_threads=threads)
    generator = HFGenerator(folder, gen, adapters={})
    batch = {"id": [], "lang": [], "strategy": [], "role": [], "adapter": [], "anchor": [], "messages": []}
    for a in anchors:
        for key, value in (("id", a["id"]), ("lang", a["lang"]), ("strategy", "icl"), ("role", "positive"),
                           ("adapter", ""), ("anchor", a["text"])):
            batch[key].append(value)
        batch["messages"].append(json.dumps(build_messages(a["text"], "positive", a["id"], "English", 2)))
    started = time.perf_counter()
    out = generator(batch)
    seconds = (time.perf_counter() - started) / len(anchors)
    parsed = sum(st == OK and parse_answer(raw)[0] is not None for raw, st in zip(out["raw"], out["status"]))
    return seconds, parsed / len(anchors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, default=8, help="anchors per demo language for generation")
    parser.add_argument("--steps", type=int, default=4, help="adapter training steps timed per generator")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each measurement")
    parser.add_argument("--cache-dir", default="~/.cache/bootembed")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    anchors = demo_anchors(args.anchors)
    results = {}
    for name, label in GENERATORS.items():
        folder = resolve_model(f"bundled:{name}", args.cache_dir)
        tokens = tokens_per_anchor(folder, anchors)
        step = adapter_step_seconds(folder, args.steps, args.threads)
        per_request, parsed = generation(folder, anchors, args.threads)
        results[label] = {"tokens": tokens, "step": step, "request": per_request, "parsed": parsed}
        print(f"measured {label}", flush=True)

    base = results["SmolLM2-135M-Instruct"]
    print(f"\n{len(anchors)} anchors ({', '.join(LANGUAGES)}), {args.threads} torch threads; ratio = Gemma / SmolLM2\n")
    head = ["generator", *[f"tokens/anchor {lang}" for lang in LANGUAGES], "adapter s/step", "icl s/request", "parsed"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, r in results.items():
        cells = [label, *[f"{r['tokens'][lang]:.1f}" for lang in LANGUAGES], f"{r['step']:.2f}", f"{r['request']:.2f}",
                 f"{r['parsed']:.0%}"]
        print("| " + " | ".join(cells) + " |")
    gemma = results["Gemma-3-270M"]
    ratios = ["ratio", *[f"{gemma['tokens'][lang] / base['tokens'][lang]:.2f}x" for lang in LANGUAGES],
              f"{gemma['step'] / base['step']:.2f}x", f"{gemma['request'] / base['request']:.2f}x", ""]
    print("| " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
