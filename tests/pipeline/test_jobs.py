"""Job submission against a real Ray cluster started on loopback with `ray start --head`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import jobs
from pipeline.cli import app
from pipeline.jobs import JobError
from tests.conftest import free_port

runner = CliRunner()


def test_an_unreachable_cluster_is_a_clear_error_before_anything_is_sent():
    with pytest.raises(JobError, match=r"cannot reach a Ray cluster's job server at http://127.0.0.1:9.*ray up cluster.yaml"):
        jobs.status("http://127.0.0.1:9", "raysubmit_x")
    result = runner.invoke(app, ["jobs", "status", "raysubmit_x", "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot reach" in result.output


def test_a_relative_run_dir_is_refused_for_a_cluster(make_config):
    with pytest.raises(JobError, match="run_dir 'runs/x' is relative"):
        jobs.submit(make_config(run_dir="runs/x"), "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head --block` on loopback; its process group is ended after the module.

    Every port is a free one: with Ray's fixed default agent ports, a second Ray instance on the machine (the
    session's ray_local) keeps this cluster's job agent from starting ("No available agent to submit job").
    """
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics = (free_port() for _ in range(6))
    temp = tmp_path_factory.mktemp("ray")
    proc = subprocess.Popen(
        [shutil.which("ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--num-cpus=1", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                jobs.client(address).list_jobs()
                break
            except JobError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"ray start failed:\n{proc.stdout.read() if proc.poll() is not None else ''}")
                time.sleep(2)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(400)
def test_submit_runs_a_stage_on_the_cluster_with_the_users_seed_file(cluster, make_config, tmp_path):
    seed = tmp_path / "seeds.yor.txt"
    seed.write_text("Ọmọ náà ń lọ sí ilé-ìwé lójoojúmọ́.\nMo fẹ́ràn láti ka ìwé ní alẹ́ gan-an.\n")
    cfg = make_config(languages=["yor"], seeds={"udhr": False, "files": [str(seed)]})
    result = runner.invoke(app, ["submit", str(write_config(cfg, tmp_path)), "--address", cluster, "--stage", "seeds", "--wait"])
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output and "[seeds] done" in result.output
    manifest = Path(cfg.run_dir) / "seeds" / "manifest.json"
    assert manifest.is_file() and '"anchors": 2' in manifest.read_text()
    job_id = result.output.split()[1]
    assert jobs.status(cluster, job_id) == "SUCCEEDED"
    assert "[seeds] done" in jobs.logs(cluster, job_id)


def write_config(cfg, tmp_path) -> Path:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path
