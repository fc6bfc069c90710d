"""What `bootembed run` shows a person: one line per stage with a live progress bar, and nothing else.

Everything else the process prints goes to a log file under `run_dir/logs/`: Ray's own logs, the output of Ray
workers and actors (Ray Data, Ray Train, Serve), warnings, transformers' and the stages' own messages. `-v` shows
them on the terminal as well. A failed stage prints its name, the reason in one sentence and the log file to read.

Outside a console (library use, tests) every hook here is a no-op, and output goes where it always went.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime

# Progress a stage reports about itself (`progress(...)`), or that a probe reads off the files it writes.
Probe = Callable[[], "tuple[int, int | None, str] | None"]

_active: Console | None = None
# Ray workers' lines reach the driver as "(Actor pid=123) [train] epoch 1 step 20/37 ..."; a stage's own message is
# the part from "[stage]" on, shown beside its bar.
_STAGE_LINE = re.compile(r"\[(?P<stage>[a-z_]+)\] (?P<text>.+)")
# A stage line that counts its own steps, e.g. "[train] step 12/54 parallel epoch 2/3 loss 2.1": printed by Ray
# workers, whose progress the driver sees only in their output.
_STEP_COUNT = re.compile(r"^step (?P<done>\d+)/(?P<total>\d+)\b")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour and bold codes some libraries print even into a pipe
# Where the console keeps the bar between lines of a non-interactive terminal (CI logs, a captured pipe).
_PIPE_EVERY_S = 15.0


def progress(done: int, total: int | None = None, unit: str = "rows") -> None:
    """Report a running stage's progress (`done` of `total` units) to the console, if one is showing."""
    if _active is not None:
        _active.progress(done, total, unit)


def active() -> Console | None:
    return _active


class _NoConsole:
    """Stands in for a console outside one: every hook does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


NO_CONSOLE = _NoConsole()


def reason(err: BaseException) -> str:
    """The cause of an error in one sentence: the innermost exception, first line of its message.

    Ray wraps a task's exception (RayTaskError.cause) and Ray Train a worker's, with remote tracebacks in the text;
    the person at the terminal needs what went wrong, the log holds the rest.
    """
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    return f"{type(err).__name__}: {text[:300]}"


class _LogStream(io.TextIOBase):
    """sys.stdout / sys.stderr while a console runs: each line goes to the log (and to the terminal with -v); a line
    a running stage writes, on the driver or in a Ray worker, becomes the text beside its bar."""

    def __init__(self, console: Console, echo: io.TextIOBase | None):
        self.console, self.echo, self.pending = console, echo, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.console.log.write(_ANSI.sub("", text))
        if self.echo is not None:
            self.echo.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.console.saw_line(line)
        return len(text)

    def flush(self) -> None:
        self.console.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:  # libraries that draw bars on a terminal must not draw them into the log
        return False


class Console:
    """A context: from entry to exit the process's output goes to `log_dir/<command>-<time>.log` and the terminal
    shows stage lines only (everything, with verbose=True)."""

    def __init__(self, log_dir: str, command: str = "run", verbose: bool = False, stages: list[str] | None = None):
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{command}-{datetime.now():%Y%m%d-%H%M%S}.log")
        self.verbose, self.stages = verbose, stages or []
        self.lock = threading.Lock()
        self.stage: str | None = None
        self.failed_stage: str | None = None  # set once a stage's failure is on the terminal
        self._saved: list = []
        self._drawn = False  # a bar is on the terminal's last line, without a newline

    # ------------------------------------------------------------ set-up and tear-down

    def __enter__(self) -> Console:
        global _active
        # Set before Ray starts: local Ray workers inherit the driver's environment, and these are read at import.
        # Progress bars drawn into a log file are thousands of carriage returns; the console draws its own.
        quiet = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                 "RAY_COLOR_PREFIX": "0"}  # the last: no colour codes around workers' "(pid=...)" in a file
        self._env = {key: os.environ.get(key) for key in quiet}  # given back on exit
        for key, value in quiet.items():
            os.environ.setdefault(key, value)
        self._data_bars = None
        if "ray.data" in sys.modules:  # its default was read at import: switch the live context too (until exit)
            from ray.data import DataContext

            self._data_bars = DataContext.get_current().enable_progress_bars
            DataContext.get_current().enable_progress_bars = False
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in __exit__
        self.out, self.err = sys.stdout, sys.stderr
        redirect = not self.verbose and _fileno(sys.stdout) == 1 and _fileno(sys.stderr) == 2
        if redirect:
            # Ray's C++ core worker, glog and child processes write to the file descriptors, not to sys.stdout:
            # point fds 1 and 2 at the log, and keep copies of the terminal's for the console itself.
            sys.stdout.flush(), sys.stderr.flush()
            self._saved = [os.dup(1), os.dup(2)]
            self.out = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
            self.err = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
            os.dup2(self.log.fileno(), 1)
            os.dup2(self.log.fileno(), 2)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = _LogStream(self, self.out if self.verbose else None)
        sys.stderr = _LogStream(self, self.err if self.verbose else None)
        # Python logging and warnings of every library (transformers, Ray's Python side, py.warnings) into the log.
        self._handler = logging.StreamHandler(sys.stderr)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self._root_level = root.level
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        self.tty = self.err.isatty() and not self.verbose
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="bootembed-console", daemon=True)
        self._ticker.start()
        self.log.write(f"=== bootembed {' '.join(sys.argv[1:])} ({datetime.now():%Y-%m-%d %H:%M:%S}) ===\n")
        ray = sys.modules.get("ray")
        self._ray_was_up = ray is not None and ray.is_initialized()  # then it is someone else's to shut down
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        # Ray's shutdown talks (workers' last lines, raylet exit): let it do so into the log, not onto the prompt.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and not self._ray_was_up:
            ray.shutdown()
        _active = None
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._data_bars is not None:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = self._data_bars
        self._stop.set()
        self._ticker.join(timeout=2)
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger().setLevel(self._root_level)
        sys.stdout, sys.stderr = self._streams
        sys.stdout.flush(), sys.stderr.flush()
        if self._saved:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            self.out.close(), self.err.close()
        self.log.close()

    # ------------------------------------------------------------ what the terminal shows

    def echo(self, text: str = "", err: bool = False, log: bool = True) -> None:
        """A line for the person (and the log, unless the pipeline's own message already put it there)."""
        with self.lock:
            self._clear()
            (self.err if err else self.out).write(text + "\n")
            (self.err if err else self.out).flush()
            if log:
                self.log.write(_ANSI.sub("", text) + "\n")

    def note(self, text: str) -> None:
        """A line for the log (and with verbose=True, where everything goes, for the terminal too)."""
        if self.verbose:
            self.echo(text, err=True)
        else:
            self.log.write(text + "\n")

    def skipped(self, name: str, manifest: dict) -> None:
        self.echo(f"{self._label(name)} up to date (finished {manifest['finished_at']}), skipped", err=True, log=False)

    def started(self, name: str, probe: Probe | None = None) -> None:
        with self.lock:
            self.stage, self.probe, self.detail = name, probe, ""
            self.t0 = self.last_print = time.monotonic()
            self.done, self.total, self.unit, self.first_progress = 0, None, "", None
        self._draw(force=True)

    def progress(self, done: int, total: int | None, unit: str) -> None:
        with self.lock:
            if self.first_progress is None and done:
                self.first_progress = (time.monotonic(), 0)
            self.done, self.total, self.unit = done, total, unit

    def finished(self, name: str, manifest: dict) -> None:
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items())
        with self.lock:
            self.stage = None
        self.echo(f"{self._label(name)} done in {_duration(manifest['seconds'])}: {counts}", err=True, log=False)

    def failed(self, name: str, err: BaseException) -> None:
        self.log.write(f"[{name}] failed:\n{''.join(traceback.format_exception(err))}")
        with self.lock:
            seconds = time.monotonic() - self.t0 if self.stage == name else 0.0
            self.stage, self.failed_stage = None, name
        if isinstance(err, KeyboardInterrupt):
            self.echo(f"{self._label(name)} interrupted after {_duration(seconds)}; run the same command again to "
                      "go on (finished stages are skipped)", err=True)
            return
        self.echo(f"{self._label(name)} FAILED after {_duration(seconds)}: {reason(err)}", err=True)
        self.echo(f"  the whole story (Ray's logs, tracebacks): {self.log_path}", err=True)

    def saw_line(self, line: str) -> None:
        match = _STAGE_LINE.search(line)
        if match and match["stage"] == self.stage:
            self.detail = match["text"].strip()
            if count := _STEP_COUNT.match(self.detail):
                self.progress(int(count["done"]), int(count["total"]), "steps")

    # ------------------------------------------------------------ drawing

    def _label(self, name: str) -> str:
        where = f"[{self.stages.index(name) + 1}/{len(self.stages)}] " if name in self.stages else ""
        return f"{where}{name:<10}"

    def _tick(self) -> None:
        while not self._stop.wait(0.5 if self.tty else 1.0):
            self._draw()

    def _draw(self, force: bool = False) -> None:
        with self.lock:
            if self.stage is None:
                return
            # Not at the stage's first draw: its folder may still hold an earlier attempt's files it is about to clear.
            if self.probe is not None and not force:
                try:
                    found = self.probe()
                except Exception:  # noqa: BLE001 - a file half-written as we read it: the next tick reads it again
                    found = None
                if found is not None:
                    if self.first_progress is None and found[0]:
                        self.first_progress = (time.monotonic(), found[0])
                    self.done, self.total, self.unit = found
            now = time.monotonic()
            if not self.tty and not force and now - self.last_print < _PIPE_EVERY_S:
                return
            self.last_print = now
            line = f"{self._label(self.stage)} {self._bar(now)}"
            if self.tty:
                width = shutil.get_terminal_size((100, 20)).columns
                self.err.write("\r\x1b[K" + line[: width - 1])
                self._drawn = True
            else:
                self.err.write(line + "\n")
            self.err.flush()

    def _bar(self, now: float) -> str:
        elapsed = now - self.t0
        parts = []
        if self.total:
            filled = min(20, int(20 * self.done / self.total))
            parts.append(f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.unit}")
        elif self.done:
            parts.append(f"{self.done} {self.unit}")
        if self.first_progress is not None and self.done > self.first_progress[1]:
            # The rate since the first unit finished: start-up (Ray, model loading) would make the ETA too long.
            since, base = self.first_progress
            rate = (self.done - base) / max(now - since, 1e-9)
            parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
            if self.total and rate > 0:
                parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(parts)

    def _clear(self) -> None:
        if self._drawn:  # the bar's line is about to hold something else
            self.err.write("\r\x1b[K")
            self._drawn = False


# ---------------------------------------------------------------- progress read off a stage's files

def probe_for(stage: str, cfg, local_out: str, inputs: dict[str, str]) -> Probe | None:
    """How far a stage is, read from what it writes as it goes, for stages that do not call progress() themselves.

    synthesize writes its answers/ as batches finish (one row per request; answers/_plan.json says how many it
    plans). (train's workers print their steps instead: see _STEP_COUNT.)
    """
    import glob

    if stage == "synthesize":
        from pipeline.manifest import read_json

        rows: dict[tuple[str, float], int] = {}  # complete files, read once

        def answered() -> tuple[int, int | None, str]:
            import pyarrow.parquet as pq

            # written by the stage once it has planned its requests (the parallel strategy plans fewer than 2 per anchor)
            total = (read_json(os.path.join(local_out, "answers", "_plan.json")) or {}).get("requests")

            count = 0
            # Files there now: the stage deletes an earlier attempt's answers when it cannot resume from them.
            for path in glob.glob(os.path.join(local_out, "answers", "*.parquet")):
                key = (path, os.path.getmtime(path))
                if key not in rows:
                    try:
                        rows[key] = pq.read_metadata(path).num_rows
                    except Exception:  # noqa: BLE001 - still being written; counted once complete
                        continue
                count += rows[key]
            return count, total, "requests"

        return answered
    return None


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # a test runner's in-memory stream
        return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
