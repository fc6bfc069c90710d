"""Ray Serve application: an OpenAI-compatible embeddings API over bootembed's encoders.

    POST /v1/embeddings {"model": name, "input": str | [str] | [int] | [[int]], "encoding_format": "float" | "base64",
                         "dimensions": int (optional)}             -> OpenAI embeddings response
    GET  /v1/models                                            -> the served encoders (a LoRA adapter's entry also
                                                                  says its language and, once evaluated, its numbers)
    GET  /healthz                                              -> always open (no API key needed)

`build_app(AppArgs(...))` is the application builder, also for Ray's own tools (`serve run configs/serve.yaml`,
`serve deploy`): an `Api` ingress validates requests and routes them by `model` to the `Encoder` deployments
(serve/_encoder.py): one per model, or, beyond `multiplex_above` models, one multiplexed deployment whose replicas
load the models they are asked for. Bad requests get a 4xx JSON error in OpenAI's shape (503 when a model cannot be
loaded); the server keeps serving.

The official `openai` client asks for base64 unless told otherwise (and decodes it itself), so both encodings are
served: base64 is the little-endian float32 bytes of each vector.

`dimensions` truncates each vector to its first n components and renormalises it (meaningful for Matryoshka-trained
encoders; for others it is a lossy projection, as in OpenAI's API).

With an API key, /v1/* needs `Authorization: Bearer <key>` (401 in OpenAI's shape otherwise). Only the key's SHA-256
reaches the replicas, so the key itself is not stored in Ray's application config.
"""

# No `from __future__ import annotations` here: Serve's class-based FastAPI views resolve the endpoints' annotations
# elsewhere (a string "Request" turns `request` into a required query parameter: every POST answered 422), and Ray
# converts a config file's `args` into `AppArgs` by reading build_app's annotation.
import hashlib
import hmac
import ipaddress
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from pipeline import encoder_lora
from pipeline.layout import is_hub_model
from serve._encoder import AdapterMismatchError, Encoder, ModelLoadError
from serve._backends import check_installed
from serve._openai import bad_ids, check_dimensions, embeddings_response, error, parse_inputs, too_long, truncate
from serve.args import API_KEY_ENV, AppArgs

MULTIPLEXED = "Encoders"  # the deployment's name when one deployment serves every model
ADAPTERS = "Adapters"  # the deployment serving LoRA adapters on one base encoder (Adapters-2, ... for more bases)
# The ingress only parses JSON and waits on encoders: many requests in flight cost it little and let the encoders
# fill their batches (Serve's default of 5 capped batches at 5 requests however many clients were waiting).
INGRESS_MAX_ONGOING = 1024
ROUTES = "POST /v1/embeddings, GET /v1/models, GET /healthz"
api = FastAPI(title="bootembed embeddings API")


@api.exception_handler(HTTPException)
async def _route_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths (404) and wrong methods (405) answer in OpenAI's shape too, not FastAPI's {"detail": ...}."""
    return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; this API serves {ROUTES}")


def replica_message(err: Exception) -> str:
    """The message of an exception a replica raised: Ray re-raises it wrapped, and the wrapper's str() is Ray's
    traceback, which a client should not get (it names the server's files)."""
    return str(getattr(err, "cause", None) or err)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_MAX_ONGOING)
@serve.ingress(api)
class Api:
    # No CPU reserved: it is never left unscheduled behind the encoders on a small machine.
    def __init__(self, encoders: dict[str, DeploymentHandle], max_inputs: int, api_key_sha256: str | None,
                 cards: dict[str, dict] | None = None):
        self.encoders = encoders  # {model: handle of the deployment serving it} (one handle for all when multiplexed)
        self.cards = cards or {}  # {model: fields its /v1/models entry has beyond OpenAI's} (adapter_cards)
        self.models = sorted(encoders)
        self.max_inputs = max_inputs
        self.api_key_sha256 = api_key_sha256
        self.routes: dict[str, DeploymentHandle] = {}  # {model: handle tagged with it}, made on first need
        self.dimensions: dict[str, int] = {}  # asked from each encoder on first need
        self.created = int(time.time())

    def route(self, model: str) -> DeploymentHandle:
        """The handle that sends requests to `model`: Serve batches and routes by the multiplexed model id."""
        if model not in self.routes:
            self.routes[model] = self.encoders[model].options(multiplexed_model_id=model)
        return self.routes[model]

    def unauthorized(self, request: Request) -> JSONResponse | None:
        """The 401 to answer when a key is required and the request lacks the right one, else None."""
        if self.api_key_sha256 is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
        # Constant-time comparison of digests: the answer time says nothing about the key.
        if not hmac.compare_digest(sha256(token.strip()), self.api_key_sha256):
            return error(401, "incorrect API key provided", code="invalid_api_key")
        return None

    async def model_dimension(self, model: str) -> int:
        if model not in self.dimensions:
            self.dimensions[model] = await self.route(model).dimension.remote()
        return self.dimensions[model]

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        denied = self.unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:  # also UnicodeDecodeError
            return error(400, "request body is not valid JSON")
        parsed = parse_inputs(body, self.models, self.max_inputs)
        if isinstance(parsed, JSONResponse):
            return parsed
        model, texts, encoding, dimensions = parsed
        try:
            if dimensions is not None:  # checked before encoding, so a bad request costs no compute
                too_big = check_dimensions(dimensions, model, await self.model_dimension(model))
                if too_big is not None:
                    return too_big
            result = await self.route(model).remote(texts)
        except ModelLoadError as err:  # this model only: the others keep serving
            return error(503, replica_message(err), code="model_not_available")
        except AdapterMismatchError as err:  # never the base's (or another encoder's) vectors for an adapter
            return error(400, replica_message(err), param="model", code="adapter_base_mismatch")
        except Exception as err:  # noqa: BLE001 - an encoder failure is the server's, in OpenAI's shape
            return error(500, f"encoder {model!r} failed: {type(err).__name__}: {err}")
        if "too_long" in result:
            return too_long(model, result["too_long"], result["limit"])
        if "bad_ids" in result:
            return bad_ids(model, result["bad_ids"], result["vocabulary"])
        return embeddings_response(model, truncate(result["vectors"], dimensions), encoding, result["tokens"])

    @api.get("/v1/models")
    async def list_models(self, request: Request):
        denied = self.unauthorized(request)
        if denied is not None:
            return denied
        return {"object": "list", "data": [{"id": m, "object": "model", "created": self.created, "owned_by": "bootembed",
                                            **self.cards.get(m, {})} for m in self.models]}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "models": self.models}


def build_app(args: AppArgs) -> serve.Application:
    """The Serve application for `args` (see AppArgs): Python callers pass AppArgs, Ray's `serve run` / `serve deploy`
    the `args:` mapping of a config file, which Ray validates into AppArgs through this annotation.

    Raises:
        FileNotFoundError: a model folder has no modules.json, or a hub id names no sentence-transformers model there
            (nor in the local cache, offline); every such model named at once.
        ValueError: `api_key_env` names a variable that is unset or empty, or `backend`'s packages are not installed.
    """
    adapters = {name: os.path.abspath(os.path.expanduser(source)) for name, source in args.models.items()
                if encoder_lora.is_adapter_folder(source)}
    plain = {name: source for name, source in args.models.items() if name not in adapters}
    hub = {name for name, source in plain.items() if is_hub_model(source)}
    models = {name: source if name in hub else os.path.abspath(os.path.expanduser(source))
              for name, source in plain.items()}
    missing = [f"{name}: {path}" for name, path in models.items()
               if name not in hub and not os.path.isfile(os.path.join(path, "modules.json"))]
    unknown = [f"{name}: {models[name]} ({problem})" for name in sorted(hub) if (problem := hub_model_problem(models[name]))]
    problems = ([f"not a sentence-transformers folder (no modules.json): {'; '.join(missing)}"] if missing else []) + (
        [f"no such folder, nor a sentence-transformers model on the Hugging Face hub: {'; '.join(unknown)}"] if unknown else [])
    bases, adapter_problems = adapter_bases(adapters, args)
    problems += adapter_problems
    if problems:
        raise FileNotFoundError("; ".join(problems))
    check_installed(args.backend)
    if adapters and (args.backend, args.quantize) != ("torch", "none"):
        raise ValueError(f"LoRA adapters ({', '.join(sorted(adapters))}) are served with backend torch, quantize none "
                         f"only; got backend {args.backend}, quantize {args.quantize}; serve the merged folders "
                         "(train/models/lora-<id>) for an exported or int8 path")
    api_key = api_key_from_env(args.api_key_env)
    # {deployment name: ({model: folder}, LoRA base or None)}: one deployment for all models, or one per model, plus
    # one per base encoder of the adapters
    groups = ({MULTIPLEXED: (models, None)} if len(models) > args.multiplex_above
              else {f"Encoder-{name}": ({name: path}, None) for name, path in models.items()})
    for i, (base, names) in enumerate(sorted(bases.items())):
        groups[ADAPTERS if i == 0 else f"{ADAPTERS}-{i + 1}"] = ({n: adapters[n] for n in names}, base)
    shares = len(groups) * args.num_replicas
    cpus = args.encoder_cpus or (10_000 // shares) / 10_000  # Ray counts in 1e-4 CPUs
    encoders = {}
    for deployment, (paths, base) in groups.items():
        handle = Encoder.options(
            name=deployment, num_replicas=args.num_replicas,
            ray_actor_options={"num_cpus": cpus, **({"num_gpus": args.encoder_gpus} if args.encoder_gpus else {})},
            max_ongoing_requests=2 * args.max_batch_size * args.concurrent_batches,  # room to fill every batch
        ).bind(paths, args.max_batch_size, args.batch_wait_timeout_s,
               args.max_models_per_replica if base is None else args.max_adapters_per_replica, args.truncate,
               args.torch_threads, args.concurrent_batches, args.backend, args.quantize, args.export_dir, base)
        encoders.update(dict.fromkeys(paths, handle))
    return Api.bind(encoders, args.max_inputs, sha256(api_key) if api_key else None, adapter_cards(adapters))


def adapter_cards(adapters: dict[str, str]) -> dict[str, dict]:
    """{served name: {"adapter": {id, language, strategy, base_sha256[, evaluation]}}}: what /v1/models adds to each
    LoRA adapter's entry (OpenAI clients ignore fields they do not know). `evaluation` is the adapter's numbers on its
    language when it lies in a run whose evaluate stage scored it (pipeline/encoder_lora.adapter_evaluation)."""
    cards, runs = {}, {}
    for name, folder in adapters.items():
        meta = encoder_lora.adapter_meta(folder)  # build_app has checked every adapter folder before
        card = {"id": meta.get("id"), "language": meta.get("language"), "strategy": meta.get("strategy"),
                "base_sha256": meta["base_sha256"]}
        evaluation = encoder_lora.adapter_evaluation(folder, runs)
        if evaluation:
            card["evaluation"] = evaluation
        cards[name] = {"adapter": card}
    return cards


def adapter_bases(adapters: dict[str, str], args: AppArgs) -> tuple[dict[str, list[str]], list[str]]:
    """({base encoder folder: [adapter names]}, problems): each adapter on `args.lora_base` or the base it names.

    Checked before anything starts, cheaply (no tensor read): every adapter folder complete (a truncated weights file,
    a missing record of its base), every base a sentence-transformers folder; each problem names the adapter."""
    bases: dict[str, list[str]] = {}
    problems = []
    for name, folder in sorted(adapters.items()):
        problem = encoder_lora.adapter_problem(folder)
        if problem:
            problems.append(f"LoRA adapter {name}: {folder}: {problem}")
            continue
        base = os.path.abspath(os.path.expanduser(args.lora_base)) if args.lora_base else encoder_lora.adapter_base(folder)
        if not os.path.isfile(os.path.join(base, "modules.json")):
            problems.append(f"LoRA adapter {name}: its base encoder {base} is not a sentence-transformers folder "
                            "(no modules.json)")
            continue
        bases.setdefault(base, []).append(name)
    return bases, problems


def hub_model_problem(model_id: str) -> str | None:
    """Why `model_id` cannot be served from the hub (or its local cache, offline), or None: only its modules.json is
    fetched here; each replica loads the model itself, into its own node's cache."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model_id, "modules.json")
    except Exception as err:  # noqa: BLE001 - not found, gated, offline and not cached, a bad id: all say why
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return None


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def api_key_from_env(name: str | None) -> str | None:
    """The API key in environment variable `name` (default BOOTEMBED_API_KEY), or None when there is none.

    Naming a variable explicitly means a key is wanted: an unset or empty one is an error, not a silent
    unauthenticated server.
    """
    key = os.environ.get(name or API_KEY_ENV, "").strip()
    if not key and name is not None:
        raise ValueError(f"--api-key-env {name}: environment variable {name} is not set or empty")
    return key or None
