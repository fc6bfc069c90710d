"""`bootembed serve` as a user runs it: a foreground process, queried over loopback, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.serve.test_app import free_port

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


def test_serve_command_answers_then_stops_cleanly_on_ctrl_c(tiny_encoder):
    from sentence_transformers import SentenceTransformer

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", tiny_encoder, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        name = os.path.basename(tiny_encoder)
        assert wait_until_healthy(url, proc, 150) == {"status": "ok", "models": [name]}
        body = json.dumps({"model": name, "input": ["Ẹ kú àárọ̀", "Good morning"]}).encode()
        request = urllib.request.Request(f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            vectors = np.array([d["embedding"] for d in json.load(r)["data"]])
        expected = SentenceTransformer(tiny_encoder, device="cpu").encode(["Ẹ kú àárọ̀", "Good morning"], normalize_embeddings=True)
        assert np.allclose(vectors, expected, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Serving" in output and "stopping" in output
