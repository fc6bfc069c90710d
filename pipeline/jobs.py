"""Submit a run to a Ray cluster through the Ray Jobs API, and follow it.

The job ships only the config (and the seed files it names) in its runtime_env working_dir;
the cluster's nodes have bootembed installed (cluster.yaml's setup commands). Inside the job
the run joins the cluster (`ray.address=auto`) instead of starting a Ray instance of its own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.config import RunConfig

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class JobError(RuntimeError):
    """A job request that cannot be carried out; the message says why and what to do."""


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    # Ray 2.60 clusters use token authentication (token in ~/.ray/auth_token), but the Jobs client sends
    # the token only in token mode; this is what `ray.init` does for a driver (private API, Ray is pinned).
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise JobError(
            f"cannot reach a Ray cluster's job server at {address} ({type(err).__name__}: {str(err)[:200]}); "
            "start one with `ray up cluster.yaml` (or `ray start --head` locally) and pass its dashboard "
            "address, e.g. --address http://HEAD:8265"
        ) from None


def check_shared_run_dir(cfg: RunConfig) -> None:
    if "://" not in cfg.run_dir and not os.path.isabs(os.path.expanduser(cfg.run_dir)):
        raise JobError(
            f"run_dir {cfg.run_dir!r} is relative: inside a job it would land in a temporary working directory and be "
            "lost. Use an absolute path on storage every node sees, or a URI such as s3://bucket/run "
            "(--set run_dir=...)"
        )


def package_job(cfg: RunConfig, stage: str | None) -> tuple[str, str]:
    """(working_dir, entrypoint): the resolved config and seed files in a fresh folder, and the command."""
    workdir = tempfile.mkdtemp(prefix="bootembed-job-")
    data = cfg.model_dump(mode="json")
    files = []
    for i, path in enumerate(cfg.seeds.files):  # seed files travel with the job, under stable names
        name = f"seeds_{i}_{Path(path).name}"
        shutil.copy(Path(path).expanduser(), Path(workdir) / name)
        files.append(name)
    data["seeds"]["files"] = files
    data["ray"]["address"] = "auto"
    data["run_dir"] = cfg.run_dir if "://" in cfg.run_dir else os.path.abspath(os.path.expanduser(cfg.run_dir))
    (Path(workdir) / "run.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    # --verbose: the job's log (`bootembed jobs logs`) is where a person reads a remote run, so it keeps everything
    # a local terminal would only find in run_dir/logs/.
    command = ["bootembed", stage or "run", "run.yaml", "--verbose"]
    return workdir, " ".join(shlex.quote(c) for c in command)


# Ray's JobSubmissionClient does not retry, and one known error is worth a retry: a small loop here rather than a
# retry library as a new dependency for one call.
AGENT_RETRIES = 5


def submit(cfg: RunConfig, address: str, stage: str | None = None) -> str:
    """Submit the run (or one stage of it); return the job's submission id."""
    check_shared_run_dir(cfg)
    jobs = client(address)
    workdir, entrypoint = package_job(cfg, stage)
    try:
        for attempt in range(AGENT_RETRIES + 1):
            try:
                return jobs.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": workdir},
                                       metadata={"tool": "bootembed", "languages": ",".join(cfg.languages)})
            except RuntimeError as err:
                # A cluster that has just started answers before its job agent is up; Ray says to try again.
                if "No available agent" not in str(err) or attempt == AGENT_RETRIES:
                    raise
                time.sleep(2.0 * (attempt + 1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the Jobs API has uploaded it


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return client(address).stop_job(job_id)


def wait(address: str, job_id: str, timeout_s: float, poll_s: float = 2.0) -> str:
    """Poll until the job ends; return its final status."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(address, job_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)
