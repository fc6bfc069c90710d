"""The `bootembed` command: thin wrappers that load a config and call one function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline.config import ConfigError, RunConfig, ServeConfig, load_config
from pipeline.run import STAGE_NAMES, ClusterResourceError, StageInputError, output_path, run_pipeline
from pipeline.seeds import SeedError
from serve.args import AppArgs

app = typer.Typer(help="Bootstrap sentence-embedding models for low-resource languages.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

ConfigArg = Annotated[Path, typer.Argument(help="A run config YAML (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: --set train.batch_size=64 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if the stage's manifest is current.")]


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def load(config: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        fail(str(err))


def run_stages(cfg: RunConfig, stages: list[str] | None, force: bool) -> dict:
    try:
        return run_pipeline(cfg, stages, force=force, log=lambda m: typer.secho(m, fg=typer.colors.CYAN))
    except (SeedError, StageInputError, ClusterResourceError, ValueError, FileNotFoundError) as err:
        fail(str(err))


@app.command()
def run(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False) -> None:
    """Run every stage (seeds -> adapters -> synthesize -> filter -> train -> evaluate); finished stages are skipped."""
    cfg = load(config, set)
    manifests = run_stages(cfg, None, force)
    total = sum(m["seconds"] for m in manifests.values())
    typer.echo("\nStage timings: " + ", ".join(f"{n} {m['seconds']:.0f}s" for n, m in manifests.items()) + f" (total {total:.0f}s)")
    averages = manifests["evaluate"]["details"].get("average", {})
    for model, avg in averages.items():
        typer.echo(f"  {model:14s} retrieval acc@1  x->eng {avg['to_eng']:.3f}  eng->x {avg['from_eng']:.3f}")
    typer.echo(f"Report:  {output_path(cfg, manifests['evaluate'], 'report')}")
    typer.echo(f"Models:  {output_path(cfg, manifests['train'], 'models')}")
    typer.echo(f"Serve:   bootembed serve {cfg.run_dir}")


def _stage_command(name: str):
    def command(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False) -> None:
        run_stages(load(config, set), [name], force)

    command.__doc__ = f"Run only the `{name}` stage (its inputs must exist in the run directory)."
    return command


for _name in STAGE_NAMES:
    if _name != "adapters":  # `bootembed adapters` is a group: train + list
        app.command(name=_name)(_stage_command(_name))

adapters_app = typer.Typer(help="LoRA adapters of the generator (strategies composition and xllora).", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
adapters_app.command(name="train")(_stage_command("adapters"))


@adapters_app.command(name="list")
def adapters_list(
    source: Annotated[Path, typer.Argument(help="A run directory, or the run config YAML whose run_dir to read.")],
) -> None:
    """Show the adapter registry of a run: name, strategy, role, language, training steps and loss."""
    from pipeline.adapters import format_registry, read_registry
    from pipeline.run import local_stage_dir

    folder = local_stage_dir(load(source, None), "adapters") if source.is_file() else str(source / "adapters")
    registry = Path(folder) / "registry.parquet"
    if not registry.is_file():
        fail(f"{registry}: no adapter registry; run `bootembed adapters train CONFIG` (or `bootembed run CONFIG`) first")
    typer.echo(format_registry(read_registry(str(registry))))


def resolve_eval_models(refs: list[str], cache_dir: str) -> dict[str, str]:
    """`NAME=REF` or `REF` -> {name: model}; REF = bundled:<name>, a run directory (every encoder it trained),
    a sentence-transformers folder, or a hub id (downloaded by sentence-transformers)."""
    from pipeline.models import resolve_model
    from serve.app import models_of_run

    models: dict[str, str] = {}
    for text in refs:
        name, _, ref = text.rpartition("=")
        if ref.startswith("bundled:"):
            found = {name or ref.split(":", 1)[1]: resolve_model(ref, cache_dir)}
        elif Path(ref).expanduser().is_dir():
            found = models_of_run(ref)
            if name:
                found = {name if len(found) == 1 else f"{name}-{k}": v for k, v in found.items()}
        elif "/" in ref and not ref.startswith((".", "/", "~")):
            found = {name or ref.rsplit("/", 1)[1]: ref}  # a hub id
        else:
            raise FileNotFoundError(f"--model {text}: {ref} is not a folder, a bundled:<name> model or a hub id (owner/name)")
        for key in found.keys() & models.keys():
            raise ValueError(f"--model {text}: the name {key!r} is taken twice; name them: --model NAME=REF")
        models.update(found)
    return models


@app.command(name="eval")
def eval_models(
    config: ConfigArg,
    model: Annotated[list[str], typer.Option("--model", help="NAME=REF or REF: bundled:<name>, a run directory, a "
                                             "sentence-transformers folder or a hub id (repeatable).")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: RUN_DIR/eval).")] = None,
    base: Annotated[bool, typer.Option(help="Put the config's base encoder (train.encoder) first, as the deltas' reference.")] = True,
    set: SetOpt = None,
) -> None:
    """Evaluate any encoders on the config's languages and tasks, side by side in one report."""
    from pipeline import evaluate
    from pipeline.models import resolve_model
    from pipeline.manifest import join
    from pipeline.run import mirrored, run_root

    cfg = load(config, set)
    try:
        models = ({"base": resolve_model(cfg.train.encoder, cfg.cache_dir)} if base else {}) | \
            resolve_eval_models(model, cfg.cache_dir)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    seeds = run_stages(cfg, ["seeds"], False)["seeds"]  # the held-out evaluation text
    out_dir = str(out or mirrored(cfg, join(run_root(cfg), "eval")))  # a run at a URI: in its local mirror
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = evaluate.evaluate_models(cfg, models, {"eval": output_path(cfg, seeds, "eval")}, out_dir)
    except (ValueError, OSError) as err:
        fail(str(err))
    for name, avg in result.details["average"].items():
        typer.echo(f"  {name:14s} retrieval acc@1  x->eng {avg['to_eng']:.3f}  eng->x {avg['from_eng']:.3f}")
    typer.echo(f"Report:  {result.outputs['report']}")


@app.command()
def config(config: ConfigArg, set: SetOpt = None) -> None:
    """Validate a config and print it with every default filled in."""
    typer.echo(yaml.safe_dump(load(config, set).model_dump(mode="json"), sort_keys=False, allow_unicode=True))


_SERVE = ServeConfig()  # host, port and the API key's variable: the run config's serve section
_APP = AppArgs.model_fields  # the Serve app's own knobs: their defaults and help come from serve.args


@app.command()
def serve(
    sources: Annotated[list[str], typer.Argument(help="Run directories or sentence-transformers folders to serve.")],
    host: Annotated[str, typer.Option(help="Bind address; use 0.0.0.0 only behind an API key or a firewall.")] = _SERVE.host,
    port: Annotated[int, typer.Option(help="HTTP port.", min=1, max=65535)] = _SERVE.port,
    max_batch_size: Annotated[int, typer.Option(help=_APP["max_batch_size"].description, min=1)]
        = _APP["max_batch_size"].default,
    batch_wait_timeout_s: Annotated[float, typer.Option(help=_APP["batch_wait_timeout_s"].description, min=0)]
        = _APP["batch_wait_timeout_s"].default,
    num_replicas: Annotated[int, typer.Option(help=_APP["num_replicas"].description, min=1)] = _APP["num_replicas"].default,
    encoder_gpus: Annotated[float, typer.Option(help=_APP["encoder_gpus"].description, min=0)]
        = _APP["encoder_gpus"].default,
    multiplex_above: Annotated[int, typer.Option(help=_APP["multiplex_above"].description, min=0)]
        = _APP["multiplex_above"].default,
    max_models_per_replica: Annotated[int, typer.Option(help=_APP["max_models_per_replica"].description, min=1)]
        = _APP["max_models_per_replica"].default,
    truncate: Annotated[bool, typer.Option(help=_APP["truncate"].description)] = _APP["truncate"].default,
    backend: Annotated[str, typer.Option(help=_APP["backend"].description + " One of torch, onnx, openvino.")]
        = _APP["backend"].default,
    quantize: Annotated[str, typer.Option(help=_APP["quantize"].description + " One of none, int8.")]
        = _APP["quantize"].default,
    export_dir: Annotated[str, typer.Option(help=_APP["export_dir"].description)] = _APP["export_dir"].default,
    api_key_env: Annotated[str | None, typer.Option(
        help=f"Require the API key in this environment variable as a Bearer token on /v1/* (default: "
             f"{_SERVE.api_key_env}, if set).")] = None,
) -> None:
    """Serve trained encoders behind an OpenAI-compatible embeddings API (Ctrl-C stops it)."""
    import signal
    import threading

    import ray
    from pydantic import ValidationError
    from ray import serve as ray_serve

    from serve.app import api_key_from_env, build_app, is_loopback, models_of_run

    models: dict[str, str] = {}
    for source in sources:
        try:
            found = models_of_run(source)
        except FileNotFoundError as err:
            fail(str(err))
        for name in found.keys() & models.keys():
            fail(f"two sources are both named {name!r} ({models[name]} and {found[name]}); rename one directory")
        models.update(found)
    try:
        api_key = api_key_from_env(api_key_env or None)
    except ValueError as err:
        fail(str(err))
    if api_key is None and not is_loopback(host):
        typer.secho(f"warning: binding {host} without an API key exposes the API to the network; set "
                    f"{_SERVE.api_key_env} (or --api-key-env NAME) or bind 127.0.0.1", fg=typer.colors.YELLOW, err=True)
    try:
        args = AppArgs(models=models, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                       num_replicas=num_replicas, encoder_gpus=encoder_gpus, multiplex_above=multiplex_above,
                       max_models_per_replica=max_models_per_replica, truncate=truncate, backend=backend,
                       quantize=quantize, export_dir=export_dir, api_key_env=api_key_env)
    except ValidationError as err:  # e.g. --backend onnx with --encoder-gpus 1: said before Ray starts
        fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" if e["loc"] else
                       e["msg"].removeprefix("Value error, ") for e in err.errors()))
    try:
        application = build_app(args)  # checks every model and the backend's packages first, before Ray starts
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))

    stop = threading.Event()
    ray.init(address="local", include_dashboard=False, object_store_memory=256 * 1024 * 1024, _node_ip_address="127.0.0.1")
    # Our own handler, installed before the (slow) deployment: Ctrl-C or SIGTERM at any point from here on
    # means a clean shutdown, not a traceback and exit code 130.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(application, name="bootembed", route_prefix="/")
    auth = f"API key required (from ${api_key_env or _SERVE.api_key_env})" if api_key else "no API key"
    layout = (f"one multiplexed deployment, {max_models_per_replica} model(s) per replica"
              if len(models) > multiplex_above else "one deployment per model")
    engine = "torch fp16 on GPU" if encoder_gpus else f"{backend} {'fp32' if quantize == 'none' else quantize}"
    typer.echo(f"Serving {sorted(models)} at http://{host}:{port}/v1/embeddings ({layout}, {num_replicas} replica(s) "
               f"each, {engine}, max batch {max_batch_size}, batch wait {batch_wait_timeout_s}s, {auth}; Ctrl-C stops)")
    sys.stdout.flush()
    while not stop.is_set():
        stop.wait(1)
    typer.echo("stopping ...")
    ray_serve.shutdown()
    ray.shutdown()


AddressOpt = Annotated[str, typer.Option("--address", help="The cluster's job server (dashboard) address.")]
jobs_app = typer.Typer(help="Follow jobs submitted with `bootembed submit` (Ray Jobs API).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def job_call(fn, *args):
    from pipeline.jobs import JobError

    try:
        return fn(*args)
    except JobError as err:
        fail(str(err))


@app.command()
def submit(
    config: ConfigArg,
    set: SetOpt = None,
    address: AddressOpt = "http://127.0.0.1:8265",
    stage: Annotated[str | None, typer.Option(help=f"Run only this stage ({', '.join(STAGE_NAMES)}).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end and print its logs.")] = False,
) -> None:
    """Submit the run to a Ray cluster through the Ray Jobs API; prints the job id."""
    from pipeline import jobs

    if stage is not None and stage not in STAGE_NAMES:
        fail(f"--stage {stage!r} is not a stage; one of {STAGE_NAMES}")
    cfg = load(config, set)
    job_id = job_call(jobs.submit, cfg, address, stage)
    typer.echo(f"Submitted {job_id} to {address}\n  bootembed jobs status {job_id} --address {address}\n"
               f"  bootembed jobs logs {job_id} --address {address}")
    if wait:
        state = job_call(jobs.wait, address, job_id, 24 * 3600)
        typer.echo(job_call(jobs.logs, address, job_id))
        typer.echo(f"{job_id}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(1)


@jobs_app.command("status")
def job_status(job_id: str, address: AddressOpt = "http://127.0.0.1:8265") -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from pipeline import jobs

    typer.echo(job_call(jobs.status, address, job_id))


@jobs_app.command("logs")
def job_logs(job_id: str, address: AddressOpt = "http://127.0.0.1:8265") -> None:
    """Print a job's logs so far."""
    from pipeline import jobs

    typer.echo(job_call(jobs.logs, address, job_id))


@jobs_app.command("stop")
def job_stop(job_id: str, address: AddressOpt = "http://127.0.0.1:8265") -> None:
    """Ask the cluster to stop a job."""
    from pipeline import jobs

    typer.echo("stop requested" if job_call(jobs.stop, address, job_id) else "the job had already ended")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
