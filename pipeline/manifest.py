"""Stage manifests: the resume marker and the provenance of every stage output.

A stage's manifest.json is written last, after all its outputs. Its `fingerprint` hashes the
config sections the stage reads and the fingerprints of the stages it reads from, so a rerun
skips a stage exactly when nothing it depends on changed. Paths may be local or pyarrow URIs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

MANIFEST = "manifest.json"


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as s3://bucket/run."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def copy_tree(src: str, dst: str) -> None:
    """Copy a file or a folder between local paths and URIs; whatever was at `dst` is replaced, not merged."""
    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    kind = dst_fs.get_file_info(dst_path).type
    if kind == pafs.FileType.Directory:
        dst_fs.delete_dir(dst_path)
    elif kind == pafs.FileType.File:
        dst_fs.delete_file(dst_path)
    dst_fs.create_dir(dst_path.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def read_json(path: str) -> dict | None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return json.loads(f.read())


def write_json(path: str, data: dict) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    tmp = p + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, p)


def reset_dir(path: str, keep: tuple[str, ...] = ()) -> None:
    """Empty a stage directory before it is rewritten, so no stale partial output survives; the entries named in
    `keep` stay (work the stage resumes and checks itself)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        for entry in fs.get_file_info(pafs.FileSelector(p)):
            if entry.base_name in keep:
                continue
            if entry.type == pafs.FileType.Directory:
                fs.delete_dir(entry.path)
            else:
                fs.delete_file(entry.path)
    fs.create_dir(p, recursive=True)


def file_digest(path: str) -> str:
    """A short SHA-256 of a file's bytes: names what a model was trained on (checkpoint names, registries)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fingerprint(stage: str, config_hash: str, upstream: list[dict]) -> str:
    """What a stage's outputs depend on: its config sections and the upstream stages' runs. An upstream stage that ran
    again (forced, or after a crash) with the same config has a new `attempt`, so what was built on its earlier outputs
    is stale: `bootembed filter --force` then retrains and re-evaluates. (Manifests written before `attempt` existed
    count by fingerprint alone, so their runs stay up to date.)"""
    parts = [stage, config_hash, *sorted(f"{m['fingerprint']}@{m['attempt']}" if "attempt" in m else m["fingerprint"]
                                         for m in upstream)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class StageOutput:
    """What a stage function returns: its output paths and the facts worth recording."""

    outputs: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def build_manifest(stage: str, fp: str, config_hash: str, inputs: dict[str, str], result: StageOutput, seconds: float) -> dict:
    return {
        "stage": stage,
        "fingerprint": fp,
        "config_hash": config_hash,
        "inputs": inputs,
        "outputs": result.outputs,
        "counts": result.counts,
        "details": result.details,
        "seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "attempt": uuid.uuid4().hex[:12],  # this run of the stage: see fingerprint()
        "code_version": code_version(),
    }
