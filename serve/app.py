"""Ray Serve application: an OpenAI-compatible embeddings API over bootembed's encoders.

    POST /v1/embeddings {"model": name, "input": str | [str], "encoding_format": "float" | "base64"}
                                                               -> OpenAI embeddings response
    GET  /v1/models                                            -> the served encoders
    GET  /healthz

One `Encoder` deployment per model (with @serve.batch dynamic batching) behind one `Api`
ingress that validates requests and routes them by `model`. Bad requests get a 4xx JSON error
in OpenAI's shape; the server keeps serving.

The official `openai` client asks for base64 unless told otherwise (and decodes it itself), so
both encodings are served: base64 is the little-endian float32 bytes of each vector.
"""

# No `from __future__ import annotations` here: Serve's class-based FastAPI views resolve the
# endpoints' annotations elsewhere, and a string "Request" turns `request` into a required query
# parameter (every POST /v1/embeddings answered 422).
import base64
import os
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

MAX_INPUTS = 2048  # per request, as in OpenAI's API
ENCODINGS = ("float", "base64")
api = FastAPI(title="bootembed embeddings API")


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def parse_inputs(body: object, known: list[str], max_inputs: int = MAX_INPUTS) -> tuple[str, list[str], str] | JSONResponse:
    """(model, texts, encoding) of a valid request body, or the JSON error that explains what is wrong."""
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object with `model` and `input`")
    model = body.get("model")
    if model is None or model == "":
        return error(400, f"`model` is required; one of {known}", param="model")
    if not isinstance(model, str):
        return error(400, f"`model` must be a string; one of {known}", param="model")
    if model not in known:
        return error(404, f"model {model!r} is not served here; available: {known}", param="model", code="model_not_found")
    texts = body.get("input")
    if texts is None:
        return error(400, "`input` is required: a string or a list of strings", param="input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error(400, "`input` must be a string or a list of strings (token arrays are not supported)", param="input")
    if not texts:
        return error(400, "`input` must not be an empty list", param="input")
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        return error(400, f"`input` must not contain empty strings (empty at index {empty[:10]})", param="input")
    if len(texts) > max_inputs:
        return error(413, f"`input` has {len(texts)} items; at most {max_inputs} per request", param="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        return error(400, f"encoding_format {encoding!r} is not supported; use one of {list(ENCODINGS)}",
                     param="encoding_format")
    return model, texts, encoding


def encode_vector(vector, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@serve.deployment
class Encoder:
    """One sentence-transformers model; concurrent requests are encoded together."""

    def __init__(self, path: str, max_batch_size: int, batch_wait_timeout_s: float):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, int(os.environ.get("BOOTEMBED_SERVE_THREADS", "1"))))
        self.model = SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = self.model.tokenizer
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches, self.largest_batch = 0, 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, requests: list[list[str]]) -> list[dict]:
        self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(requests))
        flat = [t for texts in requests for t in texts]
        vectors = self.model.encode(flat, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        # Count the tokens the model actually saw (truncated at its max_seq_length, not the tokenizer's).
        ids = self.tokenizer(flat, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        tokens = [len(i) for i in ids]
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append({"vectors": vectors[start:end].astype(np.float32), "tokens": sum(tokens[start:end])})
            start = end
        return out

    async def __call__(self, texts: list[str]) -> dict:
        return await self.embed(texts)

    def stats(self) -> dict:
        """How @serve.batch grouped the requests so far (largest_batch counts requests, not texts)."""
        return {"batches": self.batches, "largest_batch": self.largest_batch}


# The ingress only parses JSON and waits on the encoders: it reserves no CPU, so it is never left
# unscheduled behind the encoders on a small machine.
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Api:
    def __init__(self, encoders: dict[str, DeploymentHandle], max_inputs: int = MAX_INPUTS):
        self.encoders = encoders
        self.max_inputs = max_inputs
        self.created = int(time.time())

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        try:
            body = await request.json()
        except ValueError:  # also UnicodeDecodeError
            return error(400, "request body is not valid JSON")
        parsed = parse_inputs(body, sorted(self.encoders), self.max_inputs)
        if isinstance(parsed, JSONResponse):
            return parsed
        model, texts, encoding = parsed
        try:
            result = await self.encoders[model].remote(texts)
        except Exception as err:  # noqa: BLE001 - an encoder failure is the server's, in OpenAI's shape
            return error(500, f"encoder {model!r} failed: {type(err).__name__}: {err}")
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
                for i, v in enumerate(result["vectors"])]
        usage = {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    @api.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": m, "object": "model", "created": self.created, "owned_by": "bootembed"}
                                           for m in sorted(self.encoders)]}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "models": sorted(self.encoders)}


def build_app(models: dict[str, str], max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01,
              max_inputs: int = MAX_INPUTS, encoder_cpus: float | None = None):
    """The Serve application for {model name: sentence-transformers folder}.

    Each Encoder replica reserves `encoder_cpus` of Ray's CPUs; by default the encoders share one
    (1/len(models) each), so any number of models deploys on a one- or two-core machine instead of
    waiting forever for CPUs (Serve's default is one CPU per replica). Their real thread count is
    BOOTEMBED_SERVE_THREADS (default 1).
    """
    if not models:
        raise ValueError("no models to serve")
    cpus = (10_000 // len(models)) / 10_000 if encoder_cpus is None else encoder_cpus  # Ray counts in 1e-4 CPUs
    encoders = {
        name: Encoder.options(name=f"Encoder-{name}", ray_actor_options={"num_cpus": cpus},
                        max_ongoing_requests=2 * max_batch_size)  # room to fill a batch
        .bind(path, max_batch_size, batch_wait_timeout_s)
        for name, path in models.items()
    }
    return Api.bind(encoders, max_inputs)


def models_of_run(run_dir: str) -> dict[str, str]:
    """{name: folder} of the encoder a run trained; the name is the run directory's name."""
    root = os.path.abspath(os.path.expanduser(run_dir))
    name = os.path.basename(root)
    trained = os.path.join(root, "train", "model")
    if os.path.isfile(os.path.join(trained, "modules.json")):
        return {name: trained}
    if os.path.isfile(os.path.join(root, "modules.json")):
        return {name: root}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{run_dir}: no such directory (expected a run directory or a sentence-transformers folder)")
    raise FileNotFoundError(
        f"{run_dir}: neither a run directory with a trained model ({trained}/modules.json is missing) nor a "
        "sentence-transformers folder (no modules.json); train one with `bootembed run CONFIG` first"
    )
