"""configs/serve.yaml, Ray Serve's own config-file format: validated by Ray's schema and deployed as `serve run` does."""

from __future__ import annotations

import copy
import os
import urllib.request

import numpy as np
import pytest
import yaml

from tests.conftest import REPO
from tests.serve.test_app import TEXTS, check_embeddings, http

pytestmark = pytest.mark.timeout(300)

CONFIG = REPO / "configs" / "serve.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_is_a_valid_ray_serve_config_of_the_bootembed_app(config):
    from ray.serve.schema import ServeDeploySchema

    from serve.app import AppArgs

    assert CONFIG.read_text().startswith("# Serve"), "every config starts with a comment saying how to run it"
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    args = AppArgs.model_validate(app.args)  # what Ray does with `args` before calling the builder
    # Ray reports a deployment name the app lacks only once it deploys: check them here, from the args alone.
    encoders = ["Encoders"] if len(args.models) > args.multiplex_above else [f"Encoder-{m}" for m in args.models]
    assert {d.name for d in app.deployments} <= {"Api", *encoders}
    autoscaled = next(d for d in app.deployments if d.name.startswith("Encoder"))
    assert autoscaled.autoscaling_config["min_replicas"] >= 1


def test_app_args_report_every_problem_at_once():
    from pydantic import ValidationError

    from serve.app import AppArgs

    with pytest.raises(ValidationError) as caught:
        AppArgs.model_validate({"models": {"": "/m"}, "max_batch_size": 0, "max_model_per_replica": 2})
    problems = {".".join(map(str, e["loc"])) for e in caught.value.errors()}
    assert problems == {"models", "max_batch_size", "max_model_per_replica"}  # a typo is an error, not ignored
    assert "every model needs a name and a folder" in str(caught.value)


@pytest.mark.parametrize("field,value", [("backend", "onnx"), ("backend", "openvino"), ("quantize", "int8")])
def test_app_args_keep_gpu_replicas_on_torch(field, value):
    from pydantic import ValidationError

    from serve.app import AppArgs

    with pytest.raises(ValidationError, match=rf"`{field}: {value}` runs on CPU replicas only, but `encoder_gpus` is "
                                              r"1.0: GPU replicas run torch in fp16; set `backend: torch` and "
                                              r"`quantize: none`, or `encoder_gpus: 0`"):
        AppArgs(models={"a": "/m"}, encoder_gpus=1, **{field: value})
    assert AppArgs(models={"a": "/m"}, **{field: value}).encoder_gpus == 0  # on CPU replicas: fine


def test_build_app_names_every_missing_model_folder(tmp_path, tiny_encoder):
    from serve.app import AppArgs, build_app

    with pytest.raises(FileNotFoundError) as caught:
        build_app(AppArgs(models={"ok": tiny_encoder, "a": str(tmp_path / "a"), "b": str(tmp_path)}))
    message = str(caught.value)
    assert f"a: {tmp_path / 'a'}" in message and f"b: {tmp_path}" in message and "ok:" not in message
    assert "modules.json" in message


def test_config_deploys_through_rays_config_api_and_answers(serve_url, config, minilm_path):
    """The shipped config with its model pointed at MiniLM (a path relative to this process's working directory,
    resolved inside Ray as `serve run` would) and its HTTP port moved to the session's Serve instance on loopback."""
    from ray import serve
    from ray.serve._private import api as serve_private_api  # what `serve run CONFIG` calls (Ray 2.60)
    from ray.serve.schema import ServeDeploySchema
    from sentence_transformers import SentenceTransformer

    local = copy.deepcopy(config)
    port = int(serve_url.rsplit(":", 1)[1])
    local["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = local["applications"]
    name = next(iter(app["args"]["models"]))
    app["args"]["models"] = {name: os.path.relpath(minilm_path)}
    schema = ServeDeploySchema.model_validate(local)

    client = serve_private_api.serve_start(http_options=schema.http_options.model_dump(),
                                           proxy_location=schema.proxy_location)
    try:
        client.deploy_apps(schema, _blocking=True)
        status = serve.status().applications[app["name"]]
        assert status.status == "RUNNING", status
        assert set(status.deployments) == {"Api", f"Encoder-{name}"}
        server = {"url": f"http://127.0.0.1:{port}"}
        with urllib.request.urlopen(f"{server['url']}/healthz", timeout=30) as response:
            assert response.status == 200
        code, answer = http(server, "POST", "/v1/embeddings", {"model": name, "input": TEXTS})
        assert code == 200, answer
        model = SentenceTransformer(minilm_path, device="cpu")
        check_embeddings(answer, name, TEXTS, lambda _, texts: model.encode(texts, normalize_embeddings=True))
        assert np.asarray(answer["data"][0]["embedding"]).shape == (384,)
    finally:
        serve.delete(app["name"])


def test_encoder_replicas_reserve_the_gpus_asked_for(tiny_encoder):
    """What Ray is asked to reserve per encoder replica (a GPU cannot be scheduled here, so the built app is read)."""
    from serve.app import AppArgs, build_app

    def encoder_options(**args) -> list[dict]:
        api = build_app(AppArgs(models={"a": tiny_encoder, "b": tiny_encoder}, **args))._bound_deployment
        return [encoder._bound_deployment.ray_actor_options for encoder in api.init_args[0].values()]

    assert encoder_options(encoder_gpus=0.5) == [{"num_cpus": 0.5, "num_gpus": 0.5}] * 2
    assert encoder_options() == [{"num_cpus": 0.5}] * 2  # CPU: the two replicas share one CPU between them
