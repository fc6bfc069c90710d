"""Job submission against a real Ray cluster started on loopback with `ray start --head`."""

from __future__ import annotations

import os
import sys
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


VENV_BIN = Path(sys.executable).parent


def ray_start(*args: str, temp: Path) -> subprocess.Popen:
    """`ray start --block` on loopback with every port a free one, in its own process group.

    With Ray's fixed default agent ports, a second Ray instance on the machine (the session's ray_local) keeps this
    cluster's job agent from starting ("No available agent to submit job"). The `ray` beside this Python, with its
    folder first on the cluster's PATH (jobs run `bootembed ...`): the venv may not be activated.
    """
    agent, agent_grpc, runtime_env, metrics = (free_port() for _ in range(4))
    return subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", *args,
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop the cluster: SIGTERM, then SIGKILL to its whole process group (`ray start --block` spends ~30 s on a
    graceful shutdown that a throw-away test cluster does not need)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(ready, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} failed:\n{proc.stdout.read() if proc.poll() is not None else ''}")
        time.sleep(2)


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on loopback (`ray start --head`) with its job server.

    One node: Ray 2.60 binds loopback only in single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); a second
    `ray start --address` node insists on the machine's network address, which tests here must not use.
    """
    import shutil
    import tempfile

    gcs, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    # A short temp dir: Ray puts Unix sockets under it (session_<date>_<pid>/sockets/dash_MetricsHead), and a path over
    # 107 bytes makes the dashboard fail to start; pytest's tmp paths (popen-gw0/ under xdist) are too long.
    temp = Path(tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp"))
    head = ray_start("--head", f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
                     "--include-dashboard=true", temp=temp)
    try:
        wait_for(lambda: reachable(address), head, "ray start --head")
        yield address
    finally:
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def reachable(address: str) -> bool:
    try:
        jobs.client(address).list_jobs()
        return True
    except JobError:
        return False


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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_whole_run_submitted_to_the_cluster_finishes_with_its_outputs_and_logs(cluster, make_config, tmp_path,
                                                                                        tiny_generator, tiny_encoder):
    cfg = make_config(
        languages=["yor"], seeds={"max_per_language": 6},
        generator={"model": tiny_generator, "max_new_tokens": 8, "batch_size": 8, "temperature": 1.0},
        synthesis={"num_shots": 1, "strategies": ["icl", "xllora"]}, adapters={"steps": 1, "batch_size": 2},
        filter={"language_check": False, "min_chars": 1, "max_chars": 4000},
        train={"encoder": tiny_encoder, "batch_size": 4, "cpus_per_worker": 0.5, "human_nli_baseline": False},
        evaluate={"tasks": [], "bootstrap_samples": 0, "plot": False},
    )
    result = runner.invoke(app, ["submit", str(write_config(cfg, tmp_path)), "--address", cluster, "--wait"])
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[1]
    assert jobs.status(cluster, job_id) == "SUCCEEDED"
    logs = jobs.logs(cluster, job_id)
    assert all(f"[{stage}] done" in logs for stage in ("seeds", "adapters", "synthesize", "filter", "train", "evaluate"))
    run = Path(cfg.run_dir)
    assert (run / "train" / "models" / "icl" / "modules.json").is_file() and (run / "evaluate" / "report.md").is_file()
    assert (run / "adapters" / "xllora-positive" / "adapter_config.json").is_file()


def write_config(cfg, tmp_path) -> Path:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path
