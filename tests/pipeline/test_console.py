"""The console of `bootembed run` as a person sees it: a real process, a real local Ray instance, its real terminal
output (both streams), and the log file that holds everything else."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline._console import reason

REPO = Path(__file__).resolve().parents[2]
# What the terminal may show: the start line, one line per stage (bars on a pipe are lines too), errors, the summary.
CONSOLE_LINE = re.compile(
    r"bootembed \w+: .* \(logs: .*\.log\)"
    r"|\[\d/6\] \w+ +(up to date .*|done in .*|FAILED after .*|\[[#.]{20}\] .*|\S+ elapsed.*|\d+ \w+ .*)"
    r"|  the whole story \(Ray's logs, tracebacks\): .*\.log"
    r"|error: .*"
    r"|Stage timings: .*|  \S+ +retrieval acc@1 .*|Verdict: .*|Report: .*|Models: .*|Serve: .*"
)
# Lines Ray, its workers and the libraries write, as they look in a terminal without the console.
RAY_LINE = re.compile(r"\(\w+ pid=\d+\)|\(pid=\d+\)|INFO worker\.py|core_worker|raylet|Started a local Ray instance|"
                      r"Running Dataset|ray\.data|ray\.train|Warning|WARNING")


def bootembed(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.mark.timeout(600)
def test_run_shows_one_line_per_stage_and_keeps_rays_logs_in_the_run_log(tmp_path, tiny_generator, tiny_encoder, cache_dir):
    run_dir = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
run_dir: {run_dir}
cache_dir: {cache_dir}
languages: [yor]
ray: {{num_cpus: 2}}
seeds: {{max_per_language: 6}}
generator: {{model: {tiny_generator}, max_new_tokens: 8, batch_size: 4, temperature: 1.0}}
synthesis: {{num_shots: 1, strategies: [icl]}}
filter: {{language_check: false, min_chars: 1, max_chars: 4000}}
train: {{encoder: {tiny_encoder}, batch_size: 4, cpus_per_worker: 0.5, human_nli_baseline: false}}
evaluate: {{tasks: [], bootstrap_samples: 0, plot: false}}
""")
    done = bootembed("run", str(config), timeout=540)
    terminal = done.stdout + done.stderr
    assert done.returncode == 0, terminal
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert [line for line in lines if not CONSOLE_LINE.fullmatch(line)] == [], terminal
    assert not [line for line in lines if RAY_LINE.search(line)], terminal
    for i, stage in enumerate(["seeds", "adapters", "synthesize", "filter", "train", "evaluate"], 1):
        assert re.search(rf"^\[{i}/6\] {stage} +done in \S+: ", terminal, re.M), terminal
    assert re.search(r"^\[3/6\] synthesize +done in \S+: anchors=6, requests=12", terminal, re.M)

    logs = list((run_dir / "logs").glob("run-*.log"))
    assert len(logs) == 1 and f"(logs: {logs[0]})" in terminal
    log = logs[0].read_text()
    assert "Started a local Ray instance" in log  # Ray's driver log
    assert re.search(r"\(\w+ pid=\d+\)", log), "the output of Ray workers and actors"
    assert "[synthesize] running ..." in log and "[train] done in" in log  # the pipeline's own messages
    steps = re.findall(r"^.*\[train\] step \d+/\d+ .*$", log, re.M)
    assert steps and len(steps) == len(set(steps)), "each step line of a Ray Train worker reaches the log once"
    assert "[synthesize] running ..." not in terminal

    # -v: what goes to the log shows on the terminal too. (The last stage: forcing an earlier one would make every
    # stage after it rerun below.)
    verbose = bootembed("evaluate", str(config), "--force", "-v", timeout=120)
    assert verbose.returncode == 0 and "[evaluate] running ..." in verbose.stdout + verbose.stderr
    assert list((run_dir / "logs").glob("evaluate-*.log"))

    # A stage that fails names itself, the reason in one sentence and the log; the traceback is in the log only.
    failed = bootembed("run", str(config), "--set", "filter.min_chars=3999", timeout=300)
    terminal = failed.stdout + failed.stderr
    assert failed.returncode == 2, terminal
    assert re.search(r"^\[1/6\] seeds +up to date", terminal, re.M)
    assert re.search(r"^\[5/6\] train +FAILED after \S+: ValueError: train: .* holds no strategy with at least 2 triplets",
                     terminal, re.M), terminal
    assert "Traceback" not in terminal and not [line for line in terminal.splitlines() if RAY_LINE.search(line)]
    newest = max((run_dir / "logs").glob("run-*.log"), key=os.path.getmtime)
    assert f"the whole story (Ray's logs, tracebacks): {newest}" in terminal
    assert "Traceback" in newest.read_text()


def test_the_reason_is_the_innermost_error_in_one_line():
    class Wrapped(Exception):  # how Ray hands a task's exception to the driver: the original as `.cause`
        def __init__(self, cause):
            super().__init__(f"ray::task() (pid=1)\n  File ...\n{cause!r}")
            self.cause = cause

    inner = FileNotFoundError("data/x.parquet: no such file\nsecond line")
    assert reason(Wrapped(inner)) == "FileNotFoundError: data/x.parquet: no such file"
    try:
        try:
            raise KeyError("lang")
        except KeyError as err:
            raise RuntimeError("reading seeds failed") from err
    except RuntimeError as err:
        assert reason(err) == "KeyError: 'lang'"


def test_a_console_in_a_process_with_ray_up_leaves_ray_env_and_streams_as_it_found_them(ray_local, tmp_path):
    """`bootembed` commands invoked in-process (tests, notebooks) share the process: the console must not shut down a
    Ray instance it did not start, nor leave its environment or streams behind."""
    import logging

    from pipeline._console import Console

    env, streams = dict(os.environ), (sys.stdout, sys.stderr)
    with Console(str(tmp_path / "logs"), "test") as console:
        print("a line for the log")
        logging.getLogger("some.library").warning("a library's warning")
    assert ray_local.is_initialized()
    assert dict(os.environ) == env and (sys.stdout, sys.stderr) == streams
    log = Path(console.log_path).read_text()
    assert "a line for the log" in log and "WARNING some.library: a library's warning" in log


def test_a_workers_step_lines_drive_the_stage_bar(tmp_path):
    """Ray Train's workers print `[train] step N/M ...`: the driver's console turns them into the train bar."""
    from pipeline._console import Console

    with Console(str(tmp_path / "logs"), "test", stages=["train"]) as console:
        console.started("train")
        print("(RayTrainWorker pid=1) [train] step 7/18 parallel epoch 2/3 loss 2.1615")
        assert (console.done, console.total, console.unit) == (7, 18, "steps")
        print("(RayTrainWorker pid=1) [train] parallel: 97 triplets")  # a stage line without a count leaves the bar
        assert (console.done, console.total) == (7, 18) and console.detail == "parallel: 97 triplets"
        print("[evaluate] step 3/4")  # another stage's line is not this stage's progress
        assert (console.done, console.total) == (7, 18)
