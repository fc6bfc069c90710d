"""The generation engines: hf (transformers + peft, adapter per group) and openai (HTTP, against a real server)."""

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import GeneratorConfig
from pipeline.engines import OK, HFGenerator, check_endpoint, generate_openai, vllm_engine_settings
from tests.conftest import free_port, random_adapter

pytestmark = pytest.mark.timeout(600)
MESSAGES = json.dumps([{"role": "user", "content": "Write one English sentence.\nSentence: Gbogbo ènìyàn ni a bí ní òmìnira."}])
GENERATOR = {"torch_threads": 1, "cpus_per_actor": 1, "batch_size": 4, "max_new_tokens": 6, "max_prompt_tokens": 512,
             "temperature": 0.0, "max_loras": 8}


def batch(adapters: list[str]) -> dict:
    n = len(adapters)
    return {"id": np.array([f"r{i}" for i in range(n)], dtype=object), "lang": np.array(["yor"] * n, dtype=object),
            "strategy": np.array(["x"] * n, dtype=object), "role": np.array(["positive"] * n, dtype=object),
            "adapter": np.array(adapters, dtype=object), "anchor": np.array(["a"] * n, dtype=object),
            "messages": np.array([MESSAGES] * n, dtype=object)}


@pytest.fixture(scope="module")
def two_adapters(tiny_generator, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"a": random_adapter(tiny_generator, str(root / "a"), 1, alpha=64),
            "b": random_adapter(tiny_generator, str(root / "b"), 2, alpha=64)}


def test_hf_engine_generates_each_group_with_its_own_adapter(tiny_generator, two_adapters):
    engine = HFGenerator(tiny_generator, GENERATOR, two_adapters)
    out = engine(batch(["a", "b", "", "a", "b", ""]))
    assert out["status"] == [OK] * 6 and list(out["adapter"]) == ["a", "b", "", "a", "b", ""]
    a, b, base = out["raw"][0], out["raw"][1], out["raw"][2]
    assert out["raw"][3] == a and out["raw"][4] == b and out["raw"][5] == base, "same prompt, same adapter: same answer"
    assert len({a, b, base}) == 3, f"each adapter (and none) changes the answer: {a!r} {b!r} {base!r}"
    # The base model answers as it did before any adapter was loaded.
    assert HFGenerator(tiny_generator, GENERATOR, {})(batch([""]))["raw"][0] == base


def test_hf_engine_keeps_at_most_max_loras_adapters_loaded(tiny_generator, two_adapters):
    engine = HFGenerator(tiny_generator, {**GENERATOR, "max_loras": 1}, two_adapters)
    first_a = engine(batch(["a"]))["raw"][0]
    engine(batch(["b"]))
    assert list(engine.loaded) == ["b"] and set(engine.peft.peft_config) == {"b"}
    assert engine(batch(["a"]))["raw"][0] == first_a, "an evicted adapter reloads unchanged"


def test_hf_engine_counts_a_broken_adapter_against_its_rows_only(tiny_generator, two_adapters, tmp_path):
    engine = HFGenerator(tiny_generator, GENERATOR, {**two_adapters, "broken": str(tmp_path / "missing")})
    out = engine(batch(["broken", "a", ""]))
    assert out["status"][0].startswith("engine_error:") and out["raw"][0] is None
    assert out["status"][1:] == [OK, OK]


# ---------------------------------------------------------------- openai engine against a real HTTP server

class ChatServer:
    """An OpenAI-compatible /v1/chat/completions over a real causal LM (uvicorn on loopback).

    Prompts containing FAIL get a 500 with an OpenAI error body; the first request with FLAKY gets a 503
    (retryable), the retry an answer.
    """

    def __init__(self, model_path: str):
        import torch
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        app, self.requests, flaky_seen = FastAPI(), [], set()

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            text = body["messages"][-1]["content"]
            if "FAIL" in text:
                return JSONResponse({"error": {"message": "model exploded", "type": "server_error"}}, status_code=500)
            if "FLAKY" in text and text not in flaky_seen:
                flaky_seen.add(text)
                return JSONResponse({"error": {"message": "busy"}}, status_code=503)
            prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=body["max_tokens"], do_sample=False)
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}]}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def chat_server(tiny_generator):
    server = ChatServer(tiny_generator)
    yield server
    server.stop()


def request_rows(texts: list[str]) -> pa.Table:
    return pa.Table.from_pylist([
        {"id": f"r{i}", "lang": "yor", "strategy": "icl", "role": "positive", "adapter": "", "anchor": t,
         "messages": json.dumps([{"role": "user", "content": t}])} for i, t in enumerate(texts)])


def test_openai_engine_answers_every_row_and_keeps_server_errors_per_row(ray_local, chat_server):
    generator = {"model": "tiny", "api_base": chat_server.api_base, "api_key_env": "BOOTEMBED_TEST_NO_KEY",
                 "max_requests_per_s": None, "max_retries": 2, "batch_size": 4, "concurrency": 1, "max_new_tokens": 5,
                 "temperature": 0.0}
    texts = [f"sentence number {i}" for i in range(6)] + ["please FAIL now", "a FLAKY one"]
    ds = ray_local.data.from_arrow(request_rows(texts))
    rows = {r["id"]: r for r in generate_openai(ds, generator).take_all()}

    assert set(rows) == {f"r{i}" for i in range(8)}, "no row lost or duplicated"
    assert rows["r6"]["status"] == "engine_error:http: model exploded" and rows["r6"]["raw"] is None
    assert rows["r7"]["status"] == OK, "a 503 is retried"
    assert all(rows[f"r{i}"]["status"] == OK and isinstance(rows[f"r{i}"]["raw"], str) for i in range(6))
    sent = [r for r in chat_server.requests if r["messages"][-1]["content"] == "sentence number 0"][0]
    assert sent["model"] == "tiny" and sent["max_tokens"] == 5 and sent["stop"] == ["\n"]


def test_an_unreachable_or_wrong_endpoint_fails_before_any_work(chat_server):
    with pytest.raises(ConnectionError, match=r"generator.api_base http://127.0.0.1:\d+/v1: cannot list its models"):
        check_endpoint(f"http://127.0.0.1:{free_port()}/v1", None, "tiny")
    with pytest.raises(ValueError, match=r"generator.model 'gpt-x' is not served by .* \(it serves \['tiny'\]\)"):
        check_endpoint(chat_server.api_base, None, "gpt-x")


def test_vllm_keeps_a_bounded_number_of_adapters_in_host_memory():
    """Thousands of languages: vLLM gets max_cpu_loras from the config (default 4 x max_loras), never every adapter."""
    generator = GeneratorConfig(engine="vllm", max_loras=16).model_dump()
    thousands = {f"l{i}": f"/adapters/l{i}" for i in range(2000)}
    on_gpu, _ = vllm_engine_settings(generator, thousands, on_gpu=True, max_lora_rank=8)
    assert (on_gpu["max_loras"], on_gpu["max_cpu_loras"], on_gpu["max_lora_rank"]) == (16, 64, 8)
    capped, _ = vllm_engine_settings({**generator, "max_cpu_loras": 200}, thousands, on_gpu=True, max_lora_rank=8)
    assert capped["max_cpu_loras"] == 200
    few, _ = vllm_engine_settings({**generator, "max_cpu_loras": 4}, dict(list(thousands.items())[:3]), True, 8)
    assert few["max_cpu_loras"] == 16  # vLLM needs room for every resident adapter: never below max_loras
    none, cpu_only = vllm_engine_settings(generator, {}, on_gpu=True, max_lora_rank=8)
    assert none["enable_lora"] is False and "max_cpu_loras" not in none and cpu_only == {}
