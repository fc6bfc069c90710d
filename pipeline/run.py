"""Runs stages in order on one Ray instance, skipping every stage whose manifest is current.

    seeds -> adapters -> synthesize -> filter -> train -> evaluate
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline import _console, adapters, evaluate, filtering, seeds, synthesize, train
from pipeline.config import RunConfig
from pipeline.manifest import (
    MANIFEST,
    StageOutput,
    build_manifest,
    copy_tree,
    exists,
    filesystem,
    fingerprint,
    is_uri,
    join,
    read_json,
    reset_dir,
    write_json,
)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[RunConfig, dict[str, str], str], StageOutput]
    sections: tuple[str, ...]  # the config sections the stage reads
    needs: dict[str, tuple[str, str]] = field(default_factory=dict)  # input name -> (stage, output name)
    uses_ray: bool = False
    optional: tuple[str, ...] = ()  # inputs an upstream stage writes only in some runs: absent from `inputs` otherwise
    resumable: tuple[str, ...] = ()  # entries of its folder the stage resumes from itself: kept when it reruns
    # Reads what the stage will read from the user's own files, before the first stage of a run starts: a malformed
    # file fails the run at once rather than after hours of synthesis and training.
    preflight: Callable[[RunConfig], None] | None = None


STAGES = [
    Stage("seeds", seeds.run, ("languages", "seeds", "seed")),
    Stage("adapters", adapters.run, ("generator.model", "adapters", "synthesis.strategies", "synthesis.output_language",
                                     "languages", "seed"), {"train": ("seeds", "train")}, uses_ray=True),
    # train.encoder mines the parallel strategy's hard negatives
    Stage("synthesize", synthesize.run, ("generator", "synthesis", "train.encoder", "train.prefix"),
          {"train": ("seeds", "train"), "registry": ("adapters", "registry")}, uses_ray=True, resumable=("answers",)),
    # The margin filter scores triplets with the base encoder, so the filter depends on which one it is.
    Stage("filter", filtering.run, ("filter", "synthesis", "train.encoder", "train.prefix"),
          {"generations": ("synthesize", "generations")}),
    Stage("train", train.run, ("train", "seed", "languages", "synthesis.strategies"), {"triplets": ("filter", "triplets")},
          uses_ray=True, resumable=("checkpoints",)),  # Ray Train resumes a run of the same name (train.py)
    Stage("evaluate", evaluate.run, ("evaluate", "train"),
          {"eval": ("seeds", "eval"), "models": ("train", "models"), "lora": ("train", "lora"),
           "triplets": ("filter", "triplets"), "fidelity": ("filter", "fidelity")},
          preflight=evaluate.check_user_files, optional=("lora",)),  # LoRA adapters: only a train.lora run has them
]
STAGE_NAMES = [s.name for s in STAGES]


class StageInputError(RuntimeError):
    """A stage was asked to run before the stages it reads from."""


def stage_by_name(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def run_root(cfg: RunConfig) -> str:
    return cfg.run_dir if is_uri(cfg.run_dir) else os.path.abspath(os.path.expanduser(cfg.run_dir))


def mirror_root(cfg: RunConfig) -> str:
    """The local copy of a run kept at a URI (s3://...): stages read and write files here."""
    digest = hashlib.sha256(cfg.run_dir.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(cfg.cache_dir), "runs", digest)


def mirrored(cfg: RunConfig, path: str, back: bool = False) -> str:
    """A path inside the run at its URI -> the same path in the local mirror (back=True: the other way round).
    A local run is its own mirror."""
    if not is_uri(run_root(cfg)):
        return path
    src, dst = (mirror_root(cfg), run_root(cfg)) if back else (run_root(cfg), mirror_root(cfg))
    prefix = src.rstrip("/") + "/"
    return join(dst, *path[len(prefix):].split("/")) if path.startswith(prefix) else path


def logs_dir(cfg: RunConfig) -> str:
    """Where a console keeps the run's logs: `run_dir/logs/` (a run at a URI: in its local mirror, written as it goes)."""
    return mirrored(cfg, join(run_root(cfg), "logs"))


def manifest_path(cfg: RunConfig, stage: str) -> str:
    return join(run_root(cfg), stage, MANIFEST)


def relative_outputs(cfg: RunConfig, outputs: dict[str, str]) -> dict[str, str]:
    """Outputs inside the run directory are recorded relative to it, so a copied or moved run still resumes."""
    root = run_root(cfg).rstrip("/") + "/"
    return {k: v[len(root):] if v.startswith(root) else v for k, v in outputs.items()}


def output_path(cfg: RunConfig, manifest: dict, name: str) -> str:
    """Where a stage output recorded in `manifest` is now."""
    path = manifest["outputs"][name]
    return path if "://" in path or os.path.isabs(path) else join(run_root(cfg), path)


def upstream_manifests(cfg: RunConfig, stage: Stage) -> dict[str, dict]:
    manifests = {}
    for upstream in sorted({s for s, _ in stage.needs.values()}):
        manifest = read_json(manifest_path(cfg, upstream))
        if manifest is None:
            raise StageInputError(
                f"stage '{stage.name}' reads the output of '{upstream}', which has not finished in {cfg.run_dir}; "
                f"run `bootembed {upstream} CONFIG` or `bootembed run CONFIG` first"
            )
        manifests[upstream] = manifest
    return manifests


def start_ray(cfg: RunConfig) -> None:
    """Join the configured cluster, or start a small local Ray instance bound to loopback."""
    if not cfg.ray.address:
        # Ray reads this once, when it is first imported: only then does a local instance listen on loopback
        # instead of the machine's network address. A driver joining a cluster must not have it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address:
        ray.init(address=cfg.ray.address)
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                 object_store_memory=cfg.ray.object_store_mb * 1024 * 1024, _node_ip_address="127.0.0.1")


class ClusterResourceError(RuntimeError):
    """The Ray cluster lacks what the config asks for; raised before any work is scheduled."""


def check_cluster_resources(cfg: RunConfig, stage: Stage) -> None:
    """Fail fast where Ray would otherwise wait forever for resources that never appear."""
    import ray

    if stage.name == "train" and cfg.train.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < cfg.train.num_workers:
            raise ClusterResourceError(
                f"train.use_gpu is true with train.num_workers={cfg.train.num_workers}, but the Ray cluster has "
                f"{gpus:g} GPU(s); set train.use_gpu=false, lower train.num_workers, or add GPU workers (cluster.yaml)"
            )


def run_stage(cfg: RunConfig, stage: Stage, force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run one stage unless its manifest is current; return the manifest."""
    console = _console.active() or _console.NO_CONSOLE  # `bootembed run` shows stages on a console; library use prints
    upstream = upstream_manifests(cfg, stage)
    config_hash = cfg.section_hash(*stage.sections)
    fp = fingerprint(stage.name, config_hash, list(upstream.values()))
    path = manifest_path(cfg, stage.name)
    existing = read_json(path)
    if existing and existing.get("fingerprint") == fp and not force:
        log(f"[{stage.name}] up to date (finished {existing['finished_at']}), skipped")
        console.skipped(stage.name, existing)
        return existing

    inputs = {name: output_path(cfg, upstream[s], out) for name, (s, out) in stage.needs.items()
              if name not in stage.optional or out in upstream[s]["outputs"]}
    inputs.update({f"{s}_manifest": manifest_path(cfg, s) for s in STAGE_NAMES[: STAGE_NAMES.index(stage.name)]})
    out_dir = join(run_root(cfg), stage.name)
    fs, local = filesystem(out_dir)
    fs.create_dir(local, recursive=True)
    if existing:  # an outdated manifest must not vouch for outputs that are about to change
        fs.delete_file(filesystem(path)[1])
    if force:  # a forced rerun redoes the work: no answer or checkpoint of an earlier attempt is resumed
        discard_earlier_work(cfg, out_dir)
    if stage.uses_ray:
        start_ray(cfg)
        check_cluster_resources(cfg, stage)
    log(f"[{stage.name}] running ...")
    console.started(stage.name, _console.probe_for(stage.name, cfg, mirrored(cfg, out_dir), inputs))
    started = time.perf_counter()
    try:
        result = call_stage(cfg, stage, inputs, out_dir)
    except BaseException as err:
        console.failed(stage.name, err)
        raise
    result.outputs = relative_outputs(cfg, result.outputs)
    manifest = build_manifest(stage.name, fp, config_hash, relative_outputs(cfg, inputs), result, time.perf_counter() - started)
    write_json(path, manifest)
    log(f"[{stage.name}] done in {manifest['seconds']:.1f} s: " + ", ".join(f"{k}={v}" for k, v in result.counts.items()))
    console.finished(stage.name, manifest)
    return manifest


def discard_earlier_work(cfg: RunConfig, out_dir: str) -> None:
    """Empty a stage's folder, and its local mirror for a run at a URI, resumable entries included."""
    reset_dir(out_dir)
    if is_uri(out_dir):
        reset_dir(mirrored(cfg, out_dir))


def local_stage_dir(cfg: RunConfig, stage: str) -> str:
    """A stage's folder on local disk: in place for a local run, downloaded into the mirror for a run at a URI."""
    path = join(run_root(cfg), stage)
    if not is_uri(path):
        return path
    local = mirrored(cfg, path)
    if exists(path):
        copy_tree(path, local)
    return local


def call_stage(cfg: RunConfig, stage: Stage, inputs: dict[str, str], out_dir: str) -> StageOutput:
    """Run the stage function on local files.

    Stages hand their paths to libraries that only know local files (save_pretrained, sentence-transformers,
    matplotlib), so a run kept at a URI is mirrored: the stage's inputs are downloaded into a local copy of the run,
    the stage writes its folder there, and the folder is uploaded once the stage has succeeded. A failed stage
    uploads nothing, so the run at the URI never holds half a stage.
    """
    if not is_uri(run_root(cfg)):
        return stage.fn(cfg, inputs, out_dir)
    local_inputs = {}
    for name, path in inputs.items():
        local_inputs[name] = mirrored(cfg, path)
        if local_inputs[name] != path and exists(path):
            copy_tree(path, local_inputs[name])
    local_out = mirrored(cfg, out_dir)
    reset_dir(local_out, keep=stage.resumable)  # a failed attempt's resumable work stays, on this machine
    result = stage.fn(cfg, local_inputs, local_out)
    copy_tree(local_out, out_dir)
    result.outputs = {name: mirrored(cfg, path, back=True) for name, path in result.outputs.items()}
    return result


def run_pipeline(cfg: RunConfig, stages: list[str] | None = None, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the named stages (default: all) in pipeline order; return their manifests."""
    chosen = [s for s in STAGES if stages is None or s.name in stages]
    for s in chosen:
        if s.preflight:
            s.preflight(cfg)
    return {s.name: run_stage(cfg, s, force=force, log=log) for s in chosen}
