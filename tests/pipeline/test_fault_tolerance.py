"""Synthesis survives a crashed generation actor, and an interrupted stage resumes from its answers and the manifests.

Real Ray Data, real (tiny) generator: a thread watches answers/ and strikes once the first answers are written.
"""

import _thread
import glob
import os
import signal
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline import synthesize
from pipeline.run import manifest_path, output_path, run_pipeline
from pipeline.synthesize import OK

pytestmark = pytest.mark.timeout(300)


def answered_rows(answers_dir: str) -> int:
    """Rows in the answer files written so far (a file still being written counts when it is complete)."""
    rows = 0
    for path in glob.glob(os.path.join(answers_dir, "*.parquet")):
        try:
            rows += pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowInvalid):
            pass
    return rows


def live_generator_actors() -> dict[str, int]:
    """actor id -> pid of the live hf generation actors of this test's Ray instance.

    ray.util.state.list_actors asks the dashboard, which the test instance does not start (and without an address it
    looks for Ray instances all over the machine); the GCS actor table belongs to this instance alone.
    """
    import ray._private.state

    return {actor_id: a["Pid"] for actor_id, a in ray._private.state.actors().items()
            if "HFGenerator" in a["ActorClassName"] and a["State"] == "ALIVE"}


def restarts_of(actor_id: str) -> int:
    import ray._private.state

    return ray._private.state.actors(actor_id)["NumRestarts"]


class WhenAnswersAppear(threading.Thread):
    """Calls `strike` once some answers are written to `answers_dir`; records how many rows were written by then."""

    def __init__(self, answers_dir: str, strike):
        super().__init__(daemon=True)
        self.answers_dir, self.strike = answers_dir, strike
        self.answered_before = None
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            answered = answered_rows(self.answers_dir)
            if answered and self.strike():
                self.answered_before = answered
                return
            time.sleep(0.05)


def crash_generator_actor(killed: dict):
    """SIGKILL the generation actor's process, as the OOM killer or a lost node would. (Not ray.kill: by default it
    forbids the restart, which no retry setting can survive.) Returns False while there is no live actor yet."""
    actors = live_generator_actors()
    if not actors:
        return False
    actor_id, pid = next(iter(actors.items()))
    os.kill(pid, signal.SIGKILL)
    killed.update(actor_id=actor_id, pid=pid)
    return True


def request_keys(rows: list[dict]) -> Counter:
    return Counter((r["id"], r["strategy"], r["role"]) for r in rows)


def test_synthesis_answers_every_request_exactly_once_when_its_generation_actor_is_killed(ray_local, make_config,
                                                                                          tiny_generator, tmp_path):
    seeds = [{"id": f"yor-{i:03d}", "lang": "yor", "text": f"Gbogbo ènìyàn ni a bí ní òmìnira, nọ́mbà {i}."} for i in range(100)]
    seeds_path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(seeds), seeds_path)
    # 200 requests in batches of 4: a dozen blocks, so the actor dies with most of them still to answer.
    cfg = make_config(languages=["yor"], generator={"model": tiny_generator, "max_new_tokens": 4, "batch_size": 4},
                      synthesis={"num_shots": 0})
    out = tmp_path / "synth"
    killed: dict = {}
    watcher = WhenAnswersAppear(str(out / "answers"), lambda: crash_generator_actor(killed))
    watcher.start()
    try:
        result = synthesize.run(cfg, {"train": str(seeds_path)}, str(out))
    finally:
        watcher.done.set()

    expected = {(s["id"], "icl", role) for s in seeds for role in ("positive", "negative")}
    assert killed, "the generation actor was never killed: the run finished before the first answers were seen"
    assert 0 < watcher.answered_before < len(expected), "killed mid-run: some but not all requests answered"
    assert restarts_of(killed["actor_id"]) >= 1, "Ray restarted the killed actor"

    answers = pads.dataset(result.outputs["answers"], format="parquet").to_table().to_pylist()
    counts = request_keys(answers)
    assert set(counts) == expected, "no request lost"
    assert max(counts.values()) == 1, f"no request answered twice: {[k for k, n in counts.items() if n > 1][:5]}"
    assert {a["status"] for a in answers} == {OK}, "the crash is not an engine error of any row"
    rows = pq.read_table(result.outputs["generations"]).to_pylist()
    assert sorted(r["id"] for r in rows) == [s["id"] for s in seeds], "one generations row per anchor"
    assert not [r["status"] for r in rows if "missing" in r["status"]], "every role of every anchor has its answer"


STAGES = ["seeds", "adapters", "synthesize"]
SMALL_SYNTHESIS = {"languages": ["yor"], "seeds": {"max_per_language": 30}, "synthesis": {"num_shots": 0}}


def interruptible(tiny_generator: str) -> dict:
    """Generation settings under which synthesis lasts long enough to be interrupted between its first answers and
    its last: greedy, the tiny generator ends every answer at its first token (a newline), and the whole stage can
    finish before a Ctrl-C lands. Sampled tokens rarely stop early, and batches of 2 write answers often."""
    return {"model": tiny_generator, "max_new_tokens": 16, "batch_size": 2, "temperature": 1.0}


def interrupt_once_answers_appear(cfg, answers_dir: str) -> int:
    """Run seeds -> synthesize, Ctrl-C it once the first answers are on disk; the rows answered by then."""
    watcher = WhenAnswersAppear(answers_dir, lambda: _thread.interrupt_main() or True)
    # Ctrl-C as in a fresh `bootembed run` process: KeyboardInterrupt. Earlier tests of the session may have left
    # another SIGINT handler installed (one that logs and returns), which would swallow the interrupt.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, STAGES)
    finally:
        watcher.done.set()
        signal.signal(signal.SIGINT, handler)
    # Write tasks already running when Ctrl-C came may still finish their files: count once the folder is still.
    answered, still_since, deadline = answered_rows(answers_dir), time.monotonic(), time.monotonic() + 60
    while time.monotonic() - still_since < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        if (now := answered_rows(answers_dir)) != answered:
            answered, still_since = now, time.monotonic()
    assert 0 < answered <= 60, "interrupted after the first answers of the 30 anchors x 2 roles"
    return answered


def test_an_interrupted_synthesis_resumes_where_it_stopped(ray_local, make_config, tiny_generator):
    cfg = make_config(**SMALL_SYNTHESIS, generator=interruptible(tiny_generator))
    answers_dir = os.path.join(cfg.run_dir, "synthesize", "answers")
    answered = interrupt_once_answers_appear(cfg, answers_dir)
    assert os.path.exists(manifest_path(cfg, "adapters")) and not os.path.exists(manifest_path(cfg, "synthesize"))

    logs = []
    manifests = run_pipeline(cfg, STAGES, log=logs.append)
    stage_of = lambda line: line.split("]")[0][1:]  # noqa: E731
    assert [stage_of(line) for line in logs if "up to date" in line] == ["seeds", "adapters"], logs
    assert [stage_of(line) for line in logs if "running" in line] == ["synthesize"], logs
    answers = pads.dataset(output_path(cfg, manifests["synthesize"], "answers"), format="parquet").to_table().to_pylist()
    anchors = pq.read_table(output_path(cfg, manifests["seeds"], "train")).column("id").to_pylist()
    counts = request_keys(answers)
    assert set(counts) == {(a, "icl", role) for a in anchors for role in ("positive", "negative")}
    assert max(counts.values()) == 1, "no request is answered twice"
    assert manifests["synthesize"]["counts"]["rows"] == len(anchors) == 30
    # The rerun resumed: it kept the interrupted attempt's complete answers and generated only the rest.
    assert manifests["synthesize"]["counts"]["resumed"] == answered

    # What an interrupted attempt is known by (the key resume_answers compares): other generation settings start over,
    # throughput settings alone keep every answer.
    key = lambda c: synthesize.attempt_key(c, {}, tiny_generator)  # noqa: E731
    changed = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"max_new_tokens": 5})})
    faster = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"batch_size": 8, "num_actors": 2})})
    assert key(changed) != key(cfg) and key(faster) == key(cfg)


def test_resume_keeps_complete_answer_files_of_the_same_attempt_only(tmp_path):
    answers_dir = str(tmp_path / "answers")
    assert synthesize.resume_answers(answers_dir, "key-a") == set()  # first attempt: marks the folder as its own
    rows = [{"id": f"a{i}", "strategy": "icl", "role": "positive", "raw": "x", "status": OK} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(answers_dir, "done.parquet"))
    pq.write_table(pa.Table.from_pylist(rows[:1]), os.path.join(answers_dir, "cut.parquet"))
    with open(os.path.join(answers_dir, "cut.parquet"), "r+b") as f:
        f.truncate(20)  # a write killed halfway: no footer

    assert synthesize.resume_answers(answers_dir, "key-a") == {(f"a{i}", "icl", "positive") for i in range(3)}
    assert sorted(os.listdir(answers_dir)) == ["_attempt.json", "done.parquet"]  # the cut file is gone
    assert synthesize.resume_answers(answers_dir, "key-b") == set()  # other settings: start over
    assert os.listdir(answers_dir) == ["_attempt.json"]


def test_a_run_kept_in_s3_resumes_synthesis_from_its_local_mirror(ray_local, make_config, s3_bucket, tiny_generator):
    """A failed stage uploads nothing, so the answers an interrupted attempt wrote live in the local mirror: a rerun
    on the same machine keeps them, and the bucket gets the whole stage once it finishes."""
    from pipeline.manifest import join
    from pipeline.run import mirrored, run_root

    cfg = make_config(**SMALL_SYNTHESIS, run_dir=f"{s3_bucket}/run",
                      generator=interruptible(tiny_generator))
    answered = interrupt_once_answers_appear(cfg, os.path.join(mirrored(cfg, join(run_root(cfg), "synthesize")), "answers"))

    manifests = run_pipeline(cfg, STAGES)
    assert manifests["synthesize"]["counts"]["resumed"] == answered
    answers = pads.dataset(output_path(cfg, manifests["synthesize"], "answers"), format="parquet").to_table().to_pylist()
    assert output_path(cfg, manifests["synthesize"], "answers").startswith("s3://")
    counts = request_keys(answers)
    assert len(counts) == 60 and max(counts.values()) == 1
