"""Scale: does the cost per language of seeds -> synthesize -> filter stay flat from 10 to 1,000 languages?

What it runs, per size N, in one process and on one local Ray instance (so the sizes compare):

    * N pseudo-languages: English UDHR sentences through a letter substitution seeded by the language's index,
      each labelled with a distinct real ISO 639-3 code (the config accepts only real codes) and given as a seed
      file `seeds.<code>.txt` (seeds.udhr off, so only these files are read).
    * per-language adapters: two random rank-4 LoRAs per language (composition-positive-<code>,
      composition-negative-<code>) on a tiny generator (2-layer, 64-wide Llama with SmolLM2's tokenizer, as the
      tests' tiny_generator). They stand in for the adapters stage, whose per-language cost is training and
      merging: its registry is written the way the adapters stage writes it, and its manifest by the product's
      run_stage, so synthesize looks every adapter up and the hf engine loads each one as in a real run.
    * the product's run_stage for seeds, synthesize (strategy composition: one request per anchor and role, each
      with its language's adapter) and filter (no language check: pseudo-languages are not real; no margin filter).

It prints, per N: requests, generations rows and kept triplets, wall time per stage (run_stage, so manifests
included), seconds per language (total / N), the marginal seconds per language against the smallest N (which
carries the fixed costs: Ray Data and actor start, model load), and milliseconds per request of synthesize. Flat
marginal cost = linear scaling. The smallest N also runs once untimed first: the first run of a Ray session starts
Ray itself and Ray Data's own actors, a cost of no size. --profile shows where the driver's time goes.

Run
    python benchmarks/bench_scale.py [--sizes 10,100,1000] [--anchors 3] [--workdir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import string
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a local instance on loopback

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pycountry  # noqa: E402

from pipeline.adapter_registry import REGISTRY_SCHEMA, registry_row  # noqa: E402
from pipeline.config import RunConfig, validate_config  # noqa: E402
from pipeline.corpus import load_udhr  # noqa: E402
from pipeline.manifest import StageOutput, join  # noqa: E402
from pipeline.models import resolve_model  # noqa: E402
from pipeline.run import Stage, run_stage, stage_by_name  # noqa: E402
from pipeline.seeds import split_sentences  # noqa: E402

ROLES = ("positive", "negative")
STAGES = ("seeds", "synthesize", "filter")


# ---------------------------------------------------------------- pseudo-languages

def language_codes(n: int) -> list[str]:
    """The first n ISO 639-3 codes in alphabetical order: real codes, so the config validates them."""
    codes = sorted(lang.alpha_3 for lang in pycountry.languages)
    if n > len(codes):
        raise SystemExit(f"--sizes: at most {len(codes)} languages (pycountry knows that many ISO 639-3 codes)")
    return codes[:n]


def english_sentences() -> list[str]:
    return [s for text in load_udhr(["eng"]).column("text").to_pylist() for s in split_sentences(text) if 20 <= len(s) <= 160]


def pseudo_language(text: str, index: int) -> str:
    """A deterministic letter substitution: language `index` always writes the same text the same way."""
    letters = list(string.ascii_lowercase)
    random.Random(index).shuffle(letters)
    return text.translate(str.maketrans(string.ascii_lowercase, "".join(letters)))


def write_seed_files(codes: list[str], anchors: int, folder: str) -> list[str]:
    """seeds.<code>.txt per language: `anchors` sentences, a different slice of the English UDHR for each."""
    sentences = english_sentences()
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, code in enumerate(codes):
        lines = [pseudo_language(sentences[(i * anchors + j) % len(sentences)], i) for j in range(anchors)]
        path = os.path.join(folder, f"seeds.{code}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- tiny generator and per-language adapters

def build_tiny_generator(folder: str, cache_dir: str) -> str:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template (the tests' tiny_generator)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("bundled:smollm2-135m-instruct", cache_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def adapter_name(role: str, code: str) -> str:
    return f"composition-{role}-{code}"


def build_random_adapters(base: str, codes: list[str], folder: str) -> None:
    """Two random rank-4 LoRAs per language, as peft folders under folder/<adapter name>.

    peft builds one; the others are its config plus seeded random tensors of the same shapes (saving thousands
    through peft would take longer than the benchmark).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    template = os.path.join(folder, "_template")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)).save_pretrained(template)
    shapes = {key: tensor.shape for key, tensor in load_file(os.path.join(template, "adapter_model.safetensors")).items()}
    for i, code in enumerate(codes):
        for j, role in enumerate(ROLES):
            out = os.path.join(folder, adapter_name(role, code))
            os.makedirs(out, exist_ok=True)
            shutil.copy(os.path.join(template, "adapter_config.json"), out)
            generator = torch.Generator().manual_seed(2 * i + j)
            save_file({key: torch.randn(shape, generator=generator) * 0.1 for key, shape in shapes.items()},
                      os.path.join(out, "adapter_model.safetensors"))


def registered_adapters(folder: str, base: str) -> Stage:
    """The adapters stage, standing in: registers the prebuilt adapters of the configured languages."""

    def register(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
        rows = [registry_row(adapter_name(role, code), "composed", "composition", role, code, base,
                             os.path.join(folder, adapter_name(role, code)), "random LoRA (bench_scale)")
                for code in cfg.languages for role in ROLES]
        os.makedirs(out_dir, exist_ok=True)
        path = join(out_dir, "registry.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA), path)
        return StageOutput(outputs={"registry": path}, counts={"adapters": len(rows)})

    real = stage_by_name("adapters")
    return Stage("adapters", register, real.sections, real.needs)


# ---------------------------------------------------------------- one size

def run_config(codes: list[str], seed_files: list[str], generator: str, run_dir: str, args) -> RunConfig:
    return validate_config({
        "run_dir": run_dir, "cache_dir": args.cache_dir, "languages": codes,
        "ray": {"num_cpus": 2},  # one Ray instance for every size (the first run_stage starts it)
        "seeds": {"udhr": False, "files": seed_files, "max_per_language": args.anchors},
        "generator": {"model": generator, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
        "synthesis": {"strategies": ["composition"]},
        "filter": {"language_check": False, "margin": None, "min_chars": 1},
    })


def run_size(n: int, generator: str, adapters_dir: str, workdir: str, args) -> dict:
    codes = language_codes(n)
    seed_files = write_seed_files(codes, args.anchors, os.path.join(workdir, f"seeds-{n}"))
    cfg = run_config(codes, seed_files, generator, os.path.join(workdir, f"run-{n}"), args)
    adapters = registered_adapters(adapters_dir, generator)
    seconds, manifests = {}, {}
    for name in ("seeds", "adapters", "synthesize", "filter"):
        stage = adapters if name == "adapters" else stage_by_name(name)
        started = time.perf_counter()
        manifests[name] = run_stage(cfg, stage, force=True, log=lambda line: None)
        seconds[name] = time.perf_counter() - started
    synth = manifests["synthesize"]["counts"]
    return {"n": n, "seconds": seconds, "requests": synth["requests"], "rows": synth["rows"],
            "kept": manifests["filter"]["counts"]["kept"]}


def run_size_profiled(*args) -> dict:
    """run_size under cProfile: the driver's share (seed reading, planning, registry lookups, Ray Data scheduling,
    manifests); the actor's time shows up as waiting."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(run_size, *args)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return result


# ---------------------------------------------------------------- report

def total_seconds(result: dict) -> float:
    return sum(result["seconds"][s] for s in STAGES)


def marginal(extra_seconds: float, extra_count: int, scale: float, digits: int) -> str:
    """Extra time over the baseline per extra language (or request): the cost that grows with N."""
    return f"{scale * extra_seconds / extra_count:.{digits}f}" if extra_count else "(baseline)"


def print_table(results: list[dict]) -> None:
    base = results[0]
    head = ["N", "requests", "rows", "kept", *[f"{s} s" for s in STAGES], "total s", "s / language",
            "marginal s / language", "synthesize ms / request", "marginal ms / request"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        synth, base_synth = r["seconds"]["synthesize"], base["seconds"]["synthesize"]
        cells = [r["n"], r["requests"], r["rows"], r["kept"], *[f"{r['seconds'][s]:.1f}" for s in STAGES],
                 f"{total_seconds(r):.1f}", f"{total_seconds(r) / r['n']:.3f}",
                 marginal(total_seconds(r) - total_seconds(base), r["n"] - base["n"], 1, 3),
                 f"{1000 * synth / r['requests']:.1f}", marginal(synth - base_synth, r["requests"] - base["requests"], 1000, 1)]
        print("| " + " | ".join(str(c) for c in cells) + " |")


# ---------------------------------------------------------------- main

def measure(sizes: list[int], workdir: str, args) -> list[dict]:
    """Setup for the largest size, an untimed warm-up at the smallest (it starts Ray), then every size in turn."""
    started = time.perf_counter()
    generator = build_tiny_generator(os.path.join(workdir, "generator"), args.cache_dir)
    adapters_dir = os.path.join(workdir, "adapters")
    build_random_adapters(generator, language_codes(sizes[-1]), adapters_dir)
    print(f"setup: tiny generator and {2 * sizes[-1]} adapters in {time.perf_counter() - started:.0f} s ({workdir})", flush=True)

    run_size(sizes[0], generator, adapters_dir, os.path.join(workdir, "warm-up"), args)
    results = []
    for n in sizes:
        run = run_size_profiled if args.profile and n == sizes[-1] else run_size
        results.append(run(n, generator, adapters_dir, workdir, args))
        r = results[-1]
        print(f"N={n}: " + ", ".join(f"{s} {r['seconds'][s]:.1f} s" for s in STAGES) + f", {r['requests']} requests", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated numbers of languages; the smallest is the baseline")
    parser.add_argument("--anchors", type=int, default=3, help="anchors per language (2 requests each)")
    parser.add_argument("--batch-size", type=int, default=16, help="generator.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="generator.max_new_tokens")
    parser.add_argument("--workdir", default=None, help="where runs, seed files and adapters go (default: a temporary folder)")
    parser.add_argument("--cache-dir", default="~/.cache/bootembed")
    parser.add_argument("--profile", action="store_true", help="cProfile the driver at the largest size; print the top functions")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_scale-")
    try:
        results = measure(sizes, workdir, args)
    finally:
        if not args.workdir:  # thousands of adapters: leave nothing behind in /tmp
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.anchors} anchors per language, strategy composition (one adapter per language and role), "
          f"batch {args.batch_size}, {args.max_new_tokens} new tokens, 1 generation actor; load average "
          f"{os.getloadavg()[2]:.1f} over the last 15 minutes on {os.cpu_count()} cores (a shared machine inflates all times)\n")
    print_table(results)


if __name__ == "__main__":
    main()
