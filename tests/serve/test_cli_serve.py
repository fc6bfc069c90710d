"""`bootembed serve` as a user runs it: a foreground process, queried over loopback, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(240)


def wait_until_healthy(url: str, proc: subprocess.Popen, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bootembed serve exited early:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(1)
    raise AssertionError("bootembed serve did not become healthy in time")


def post(url: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/v1/embeddings", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_serve_command_with_key_and_options_answers_then_stops_cleanly_on_ctrl_c(tiny_encoder, tmp_path):
    """Every option of the command reaches the app: the key, replicas, batching, multiplexing, refusing long texts.
    The terminal shows where it serves which model; Ray's and Serve's logs go to files."""
    from sentence_transformers import SentenceTransformer

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "sk-cli-test"
    command = [sys.executable, "-m", "pipeline.cli", "serve", tiny_encoder, "--port", str(port),
               "--api-key-env", "BOOTEMBED_TEST_KEY", "--num-replicas", "2", "--max-batch-size", "4",
               "--batch-wait-timeout-s", "0.02", "--multiplex-above", "0", "--no-truncate",
               "--log-dir", str(tmp_path / "logs")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOOTEMBED_TEST_KEY": key}
    env.pop("BOOTEMBED_API_KEY", None)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        name = os.path.basename(tiny_encoder)
        assert wait_until_healthy(url, proc, 150) == {"status": "ok", "models": [name]}  # open without the key
        texts = ["Ẹ kú àárọ̀", "Good morning"]
        status, answer = post(url, {"model": name, "input": texts})
        assert status == 401 and answer["error"]["code"] == "invalid_api_key", answer
        status, answer = post(url, {"model": name, "input": texts}, key="sk-wrong")
        assert status == 401 and answer["error"]["code"] == "invalid_api_key", answer
        status, answer = post(url, {"model": name, "input": texts}, key=key)
        assert status == 200, answer
        vectors = np.array([d["embedding"] for d in answer["data"]])
        expected = SentenceTransformer(tiny_encoder, device="cpu").encode(texts, normalize_embeddings=True)
        assert np.allclose(vectors, expected, atol=1e-5)
        status, answer = post(url, {"model": name, "input": ["word " * 100]}, key=key)  # beyond its 64 tokens
        assert status == 400 and answer["error"]["code"] == "context_length_exceeded", answer
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Serving" in output and "stopping" in output
    assert ("one multiplexed deployment, 4 model(s) per replica, 2 replica(s) each, torch fp32, max batch 4, "
            "batch wait 0.02s, "
            "API key required (from $BOOTEMBED_TEST_KEY)") in output
    assert key not in output  # the key itself is never printed
    [log] = (tmp_path / "logs").glob("serve-*.log")
    assert output.splitlines() == [
        next(line for line in output.splitlines() if line.startswith("Serving")),
        f"  {name:24s} {tiny_encoder}",
        f"Logs: {log} (Ray, Serve), {tmp_path / 'logs' / 'serve'}/ (Serve's own files)",
        "stopping ...",
    ], output
    text = log.read_text()
    assert "Started a local Ray instance" in text and re.search(r"\((ServeController|ProxyActor|ServeReplica:\S+) pid=\d+\)", text)
    assert list((tmp_path / "logs" / "serve").glob("controller_*.log")), "Serve's controller keeps its own log file"


def cli(monkeypatch, args: list[str], env: dict[str, str]):
    """Run `bootembed serve ...` in-process up to the point where it would start Ray (nothing binds)."""
    import ray
    from typer.testing import CliRunner

    from pipeline.cli import app

    def no_ray(*_, **__):
        raise RuntimeError("ray.init reached")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.delenv("BOOTEMBED_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return CliRunner().invoke(app, ["serve", *args])


def test_serve_warns_on_non_loopback_host_without_key(monkeypatch, tiny_encoder):
    result = cli(monkeypatch, [tiny_encoder, "--host", "0.0.0.0"], {})
    assert "ray.init reached" in str(result.exception)
    assert "warning: binding 0.0.0.0 without an API key" in result.output

    for args, env in (([tiny_encoder, "--host", "0.0.0.0"], {"BOOTEMBED_API_KEY": "k"}),  # a key: no warning
                      ([tiny_encoder, "--host", "127.0.0.1"], {})):  # loopback: no key needed
        result = cli(monkeypatch, args, env)
        assert "ray.init reached" in str(result.exception)
        assert "warning" not in result.output


def test_serve_refuses_a_named_but_unset_key_variable(monkeypatch, tiny_encoder):
    result = cli(monkeypatch, [tiny_encoder, "--api-key-env", "BOOTEMBED_NO_SUCH_KEY"], {})
    assert result.exit_code == 2
    assert "BOOTEMBED_NO_SUCH_KEY is not set or empty" in result.output


def test_serve_refuses_a_cpu_backend_on_gpus_before_ray_starts(monkeypatch, tiny_encoder):
    for args, words in ((["--backend", "onnx", "--encoder-gpus", "1"], "`backend: onnx` runs on CPU replicas only"),
                        (["--quantize", "int8", "--encoder-gpus", "0.5"], "`quantize: int8` runs on CPU replicas only")):
        result = cli(monkeypatch, [tiny_encoder, *args], {})
        assert result.exit_code == 2, result.output
        assert words in result.output and "GPU replicas run torch in fp16" in result.output
        assert "ray.init reached" not in str(result.exception)


@pytest.mark.parametrize("option,value", [("--num-replicas", "0"), ("--max-batch-size", "0"),
                                          ("--batch-wait-timeout-s", "-1"), ("--multiplex-above", "-1"),
                                          ("--max-models-per-replica", "0"), ("--backend", "tensorrt"),
                                          ("--quantize", "int4")])
def test_serve_rejects_bad_options(monkeypatch, tiny_encoder, option, value):
    result = cli(monkeypatch, [tiny_encoder, option, value], {})
    assert result.exit_code == 2 and option in result.output


def test_serve_takes_host_port_and_key_variable_from_the_runs_config(tmp_path, tiny_encoder):
    """`bootembed serve CONFIG` and `bootembed serve RUN_DIR` (which keeps the config `bootembed run` was given)
    serve the run's encoders with its `serve` section; the command's options win over it."""
    import shutil

    from pipeline.cli import save_run_config, serve_settings, serve_sources
    from pipeline.config import load_config

    run_dir = tmp_path / "myrun"
    shutil.copytree(tiny_encoder, run_dir / "train" / "models" / "icl")
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {run_dir}\nlanguages: [yor]\nserve: {{host: 0.0.0.0, port: 8123, api_key_env: MY_KEY}}\n")

    models, settings, folder = serve_sources([str(config)])
    assert models == {"myrun": str(run_dir / "train" / "models" / "icl")} and folder == str(run_dir)
    assert serve_settings(settings, None, None, None) == ("0.0.0.0", 8123, "MY_KEY")
    assert serve_settings(settings, "127.0.0.1", 9000, "OTHER") == ("127.0.0.1", 9000, "OTHER")

    save_run_config(load_config(config))  # what `bootembed run` does first
    models, settings, folder = serve_sources([str(run_dir)])
    assert models == {"myrun": str(run_dir / "train" / "models" / "icl")} and folder == str(run_dir)
    assert serve_settings(settings, None, None, None) == ("0.0.0.0", 8123, "MY_KEY")

    # A run that names no key variable: BOOTEMBED_API_KEY if set, no key otherwise (None: not required).
    config.write_text(f"run_dir: {run_dir}\nlanguages: [yor]\n")
    assert serve_settings(serve_sources([str(config)])[1], None, None, None) == ("127.0.0.1", 8000, None)
    assert serve_settings(serve_sources([tiny_encoder])[1], None, 8001, None) == ("127.0.0.1", 8001, None)


def test_serve_config_naming_an_unset_key_variable_is_refused(monkeypatch, tmp_path, tiny_encoder):
    import shutil

    shutil.copytree(tiny_encoder, tmp_path / "run" / "train" / "models" / "icl")
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nlanguages: [yor]\nserve: {{api_key_env: BOOTEMBED_NO_SUCH_KEY}}\n")
    result = cli(monkeypatch, [str(config)], {})
    assert result.exit_code == 2 and "BOOTEMBED_NO_SUCH_KEY is not set or empty" in result.output
