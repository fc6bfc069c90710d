"""Ray Serve application: an OpenAI-compatible embeddings API over bootembed's encoders.

    POST /v1/embeddings {"model": name, "input": str | [str]}  -> OpenAI embeddings response
    GET  /v1/models                                            -> the served encoders
    GET  /healthz

One `Encoder` deployment per model (with @serve.batch dynamic batching) behind one `Api`
ingress that validates requests and routes them by `model`. Bad requests get a 4xx JSON error
in OpenAI's shape; the server keeps serving.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

MAX_INPUTS = 2048
api = FastAPI(title="bootembed embeddings API")


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def parse_inputs(body: object, known: list[str]) -> tuple[str, list[str]] | JSONResponse:
    """(model, texts) of a valid request body, or the JSON error that explains what is wrong."""
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object with `model` and `input`")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(400, f"`model` must be one of {known}", param="model")
    if model not in known:
        return error(404, f"model {model!r} is not served here; available: {known}", param="model", code="model_not_found")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error(400, "`input` must be a string or a list of strings", param="input")
    if not texts or any(not t for t in texts):
        return error(400, "`input` must not be empty and must not contain empty strings", param="input")
    if len(texts) > MAX_INPUTS:
        return error(413, f"`input` has {len(texts)} items; at most {MAX_INPUTS} per request", param="input")
    if body.get("encoding_format", "float") != "float":
        return error(400, "only encoding_format 'float' is supported", param="encoding_format")
    return model, texts


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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, requests: list[list[str]]) -> list[dict]:
        flat = [t for texts in requests for t in texts]
        vectors = self.model.encode(flat, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        tokens = [len(ids) for ids in self.tokenizer(flat, truncation=True)["input_ids"]]
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append({"vectors": vectors[start:end].tolist(), "tokens": sum(tokens[start:end])})
            start = end
        return out

    async def __call__(self, texts: list[str]) -> dict:
        return await self.embed(texts)


@serve.deployment
@serve.ingress(api)
class Api:
    def __init__(self, encoders: dict[str, DeploymentHandle]):
        self.encoders = encoders

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        try:
            body = await request.json()
        except ValueError:
            return error(400, "request body is not valid JSON")
        parsed = parse_inputs(body, sorted(self.encoders))
        if isinstance(parsed, JSONResponse):
            return parsed
        model, texts = parsed
        result = await self.encoders[model].remote(texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(result["vectors"])]
        usage = {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    @api.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "bootembed"} for m in sorted(self.encoders)]}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "models": sorted(self.encoders)}


def build_app(models: dict[str, str], max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01):
    """The Serve application for {model name: sentence-transformers folder}."""
    encoders = {
        name: Encoder.options(name=f"Encoder-{name}").bind(path, max_batch_size, batch_wait_timeout_s)
        for name, path in models.items()
    }
    return Api.bind(encoders)


def models_of_run(run_dir: str) -> dict[str, str]:
    """{name: folder} of the encoder a run trained; the name is the run directory's name."""
    path = os.path.join(os.path.abspath(os.path.expanduser(run_dir)), "train", "model")
    if os.path.isfile(os.path.join(path, "modules.json")):
        return {os.path.basename(os.path.abspath(run_dir.rstrip("/"))): path}
    if os.path.isfile(os.path.join(run_dir, "modules.json")):
        return {os.path.basename(os.path.abspath(run_dir.rstrip("/"))): os.path.abspath(run_dir)}
    raise FileNotFoundError(
        f"{run_dir}: neither a run directory with a trained model (train/model) nor a sentence-transformers folder; "
        "run `bootembed run CONFIG` first"
    )
