"""The Ray Serve application, started for real on loopback once per module.

Two models (the tiny test encoder and the bundled MiniLM), checked against sentence-transformers
run in this process, through the official `openai` client and plain HTTP (urllib).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

APP = "bootembed-test"
MAX_INPUTS = 8  # small, so the 413 case is cheap
TEXTS = ["Ẹ kú àárọ̀, báwo ni?", "Kumno phi long?", "The cat sat on the mat.", "a",
         "A much longer sentence about the weather in Lagos, which was hot and humid all week."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tiny_encoder, minilm_path):
    """{"url": ..., "models": {name: path}} of the running application; shut down after the module."""
    from ray import serve

    from serve.app import build_app

    models = {"tiny": tiny_encoder, "minilm": minilm_path}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # A longer batch wait than the default makes concurrent requests share batches reliably.
        serve.run(build_app(models, batch_wait_timeout_s=0.05, max_inputs=MAX_INPUTS), name=APP, route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "models": models}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def reference(server):
    """reference(model, texts) -> the normalised vectors sentence-transformers gives in this process."""
    from sentence_transformers import SentenceTransformer

    encoders = {name: SentenceTransformer(path, device="cpu") for name, path in server["models"].items()}
    return lambda model, texts: encoders[model].encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server['url']}/v1", api_key="unused", max_retries=0, timeout=60)


def http(server, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one plain-HTTP request; 4xx/5xx answers are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server["url"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check_embeddings(answer: dict, model: str, texts: list[str], reference) -> None:
    """An OpenAI embeddings response (as a dict) carries the reference vectors of `texts`, in order."""
    assert answer["object"] == "list"
    assert answer["model"] == model
    assert [d["index"] for d in answer["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in answer["data"])
    got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, reference(model, texts), atol=1e-5, rtol=0)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] >= 3 * len(texts)  # [CLS] word [SEP] at least


def embed_ok(server, reference, model: str = "tiny", texts: list[str] | None = None) -> None:
    texts = texts or TEXTS[:2]
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": texts})
    assert status == 200, answer
    check_embeddings(answer, model, texts, reference)


# --- successful requests -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "minilm"])
@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_gets_reference_embeddings(client, reference, model, encoding_format):
    # Without encoding_format the client asks for base64 and decodes it itself.
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = client.embeddings.create(model=model, input=TEXTS, **extra)
    answer = response.model_dump(warnings=False)  # base64 strings sit in a field typed list[float]
    if encoding_format == "base64":  # returned as given: little-endian float32 bytes
        import base64

        for d in answer["data"]:
            assert isinstance(d["embedding"], str)
            d["embedding"] = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist()
    check_embeddings(answer, model, TEXTS, reference)


def test_openai_client_single_string(client, reference):
    response = client.embeddings.create(model="minilm", input="Kumno phi long?")
    check_embeddings(response.model_dump(), "minilm", ["Kumno phi long?"], reference)
    assert len(response.data[0].embedding) == 384


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_plain_http_gets_reference_embeddings(server, reference, model):
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS})
    assert status == 200, answer
    check_embeddings(answer, model, TEXTS, reference)
    assert len(answer["data"][0]["embedding"]) == {"tiny": 32, "minilm": 384}[model]

    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS[2]})
    assert status == 200, answer
    check_embeddings(answer, model, [TEXTS[2]], reference)


def test_max_inputs_is_accepted(server, reference):
    embed_ok(server, reference, "tiny", [f"sentence number {i}" for i in range(MAX_INPUTS)])


def test_models_and_health(server, client):
    status, answer = http(server, "GET", "/v1/models")
    assert status == 200
    assert answer["object"] == "list"
    assert sorted(m["id"] for m in answer["data"]) == ["minilm", "tiny"]
    assert sorted(m.id for m in client.models.list()) == ["minilm", "tiny"]

    status, answer = http(server, "GET", "/healthz")
    assert status == 200
    assert answer["status"] == "ok"
    assert sorted(answer["models"]) == ["minilm", "tiny"]


# --- errors: 4xx in OpenAI's shape, and the server keeps serving -----------------------------------

ERRORS = {
    # id: (body or raw bytes, status, param, words the message must contain)
    "unknown model": ({"model": "nope", "input": ["hi"]}, 404, "model", ["'nope'", "minilm", "tiny"]),
    "missing model": ({"input": ["hi"]}, 400, "model", ["required"]),
    "model not a string": ({"model": 7, "input": ["hi"]}, 400, "model", ["string"]),
    "missing input": ({"model": "tiny"}, 400, "input", ["required"]),
    "empty input list": ({"model": "tiny", "input": []}, 400, "input", ["empty"]),
    "empty string input": ({"model": "tiny", "input": ""}, 400, "input", ["empty"]),
    "empty string in list": ({"model": "tiny", "input": ["hi", ""]}, 400, "input", ["empty", "[1]"]),
    "input is a number": ({"model": "tiny", "input": 123}, 400, "input", ["string"]),
    "input is token ids": ({"model": "tiny", "input": [1, 2]}, 400, "input", ["string"]),
    "input mixes types": ({"model": "tiny", "input": ["hi", None]}, 400, "input", ["string"]),
    "body not JSON": (b"model=tiny&input=hi", 400, None, ["JSON"]),
    "body not UTF-8": (b"\xff\xfe\x00{", 400, None, ["JSON"]),
    "body is a JSON list": (["tiny", "hi"], 400, None, ["JSON object"]),
    "too many items": ({"model": "tiny", "input": ["x"] * (MAX_INPUTS + 1)}, 413, "input",
                       [str(MAX_INPUTS + 1), f"at most {MAX_INPUTS}"]),
    "unsupported encoding_format": ({"model": "tiny", "input": ["hi"], "encoding_format": "int8"}, 400,
                                    "encoding_format", ["'int8'"]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_error_is_openai_shaped_and_server_keeps_serving(server, reference, case):
    body, status, param, words = ERRORS[case]
    code, answer = (http(server, "POST", "/v1/embeddings", raw=body) if isinstance(body, bytes)
                    else http(server, "POST", "/v1/embeddings", body))
    assert code == status, answer
    assert set(answer) == {"error"}
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    for word in words:
        assert word in err["message"], (word, err["message"])
    embed_ok(server, reference, "tiny")


def test_openai_client_raises_typed_errors(client, server, reference):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="nope", input=["hi"])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "'nope'" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input=[])
    assert caught.value.param == "input"
    embed_ok(server, reference, "minilm")


# --- concurrency and batching ----------------------------------------------------------------------


def test_concurrent_requests_get_their_own_vectors(server, reference):
    from ray import serve

    threads, per_thread = 16, 3
    jobs = [(("tiny", "minilm")[(t + r) % 2], [f"thread {t} request {r} item {i}: {TEXTS[(t + r + i) % 5]}"
                                              for i in range(1 + (t + r) % 3)])
            for t in range(threads) for r in range(per_thread)]

    def worker(t: int) -> list[dict]:
        answers = []
        for model, texts in jobs[t * per_thread:(t + 1) * per_thread]:
            status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": texts})
            assert status == 200, answer
            answers.append(answer)
        return answers

    with ThreadPoolExecutor(threads) as pool:
        answers = [a for batch in pool.map(worker, range(threads)) for a in batch]
    assert len(answers) == len(jobs)
    for (model, texts), answer in zip(jobs, answers):
        check_embeddings(answer, model, texts, reference)

    # @serve.batch really grouped concurrent requests (counted inside the Encoder replicas).
    stats = {m: serve.get_deployment_handle(f"Encoder-{m}", app_name=APP).stats.remote().result(timeout_s=30)
             for m in ("tiny", "minilm")}
    assert max(s["largest_batch"] for s in stats.values()) > 1, stats


# --- models_of_run ---------------------------------------------------------------------------------


def test_models_of_run(tmp_path, tiny_encoder):
    from serve.app import models_of_run

    empty = tmp_path / "run-without-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as caught:
        models_of_run(str(empty))
    message = str(caught.value)
    assert str(empty) in message and "train/model" in message and "modules.json" in message
    assert "bootembed run" in message

    with pytest.raises(FileNotFoundError, match="no such directory"):
        models_of_run(str(tmp_path / "missing"))

    run = tmp_path / "yor-run"
    (run / "train").mkdir(parents=True)
    (run / "train" / "model").symlink_to(tiny_encoder)
    assert models_of_run(str(run) + "/") == {"yor-run": str(run / "train" / "model")}
    assert models_of_run(tiny_encoder) == {"st": tiny_encoder}
