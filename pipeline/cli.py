"""The `bootembed` command: thin wrappers that load a config and call one function."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline import _console
from pipeline.config import ConfigError, RayConfig, RunConfig, ServeConfig, load_config
from pipeline.run import STAGE_NAMES, ClusterResourceError, StageInputError, logs_dir, output_path, run_pipeline
from pipeline.seeds import SeedError
from serve.args import AppArgs

app = typer.Typer(help="Bootstrap sentence-embedding models for low-resource languages.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

ConfigArg = Annotated[Path, typer.Argument(help="A run config YAML (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: --set train.batch_size=64 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if the stage's manifest is current (the stages "
                                                         "after it then count as outdated too).")]


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's, the workers' and the libraries' logs on "
                                          "the terminal too (they always go to RUN_DIR/logs/).")]
# Errors that mean "your config or your files", answered with exit code 2 and the message alone.
USER_ERRORS = (SeedError, StageInputError, ClusterResourceError, ValueError, FileNotFoundError)


def fail(message: str, code: int = 2) -> None:
    console = _console.active()
    if console is not None:  # the terminal is the console's while it runs: sys.stderr goes to the log
        console.echo(typer.style(f"error: {message}", fg=typer.colors.RED), err=True)
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load(config: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        fail(str(err))


def run_stages(cfg: RunConfig, stages: list[str] | None, force: bool, verbose: bool = False, command: str = "run") -> dict:
    """Run stages on a console: a line per stage on the terminal, everything else in RUN_DIR/logs/<command>-<time>.log."""
    names = [n for n in STAGE_NAMES if stages is None or n in stages]
    save_run_config(cfg)  # `bootembed serve RUN_DIR` reads its serve section
    with _console.Console(logs_dir(cfg), command, verbose, names) as console:
        console.echo(f"bootembed {command}: {cfg.run_dir}  (logs: {console.log_path})", err=True)
        try:
            return run_pipeline(cfg, stages, force=force, log=console.note)
        except typer.Exit:
            raise
        except KeyboardInterrupt:  # Ctrl-C: a line saying so, not a traceback (the console named the stage)
            if console.failed_stage is None:
                fail("interrupted", code=130)
            raise typer.Exit(130) from None
        except USER_ERRORS as err:
            if console.failed_stage is not None:  # the console has named the stage, the reason and the log
                raise typer.Exit(2) from None
            fail(str(err))
        except Exception as err:  # noqa: BLE001 - a crash: one sentence here, the traceback in the log
            if console.failed_stage is None:
                console.note(traceback.format_exc())
                fail(f"{_console.reason(err)} (the whole story: {console.log_path})", code=1)
            raise typer.Exit(1) from None


@app.command()
def run(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False, verbose: VerboseOpt = False) -> None:
    """Run every stage (seeds -> adapters -> synthesize -> filter -> train -> evaluate); finished stages are skipped."""
    cfg = load(config, set)
    manifests = run_stages(cfg, None, force, verbose)
    total = sum(m["seconds"] for m in manifests.values())
    typer.echo("\nStage timings: " + ", ".join(f"{n} {m['seconds']:.0f}s" for n, m in manifests.items()) + f" (total {total:.0f}s)")
    averages = manifests["evaluate"]["details"].get("average", {})
    for model, avg in averages.items():
        if "to_eng" in avg:  # languages with held-out UDHR text
            typer.echo(f"  {model:14s} retrieval acc@1  x->eng {avg['to_eng']:.3f}  eng->x {avg['from_eng']:.3f}")
    verdict = manifests["evaluate"]["details"].get("verdict")
    if verdict:
        typer.secho(f"Verdict: {verdict['headline']}", bold=True)
    typer.echo(f"Report:  {output_path(cfg, manifests['evaluate'], 'report')}")
    typer.echo(f"Models:  {output_path(cfg, manifests['train'], 'models')}")
    typer.echo(f"Serve:   bootembed serve {cfg.run_dir}")


def _stage_command(name: str):
    def command(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False, verbose: VerboseOpt = False) -> None:
        run_stages(load(config, set), [name], force, verbose, command=name)

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
    from pipeline.adapter_registry import format_registry, read_registry
    from pipeline.run import local_stage_dir

    folder = local_stage_dir(load(source, None), "adapters") if source.is_file() else str(source / "adapters")
    registry = Path(folder) / "registry.parquet"
    if not registry.is_file():
        fail(f"{registry}: no adapter registry; run `bootembed adapters train CONFIG` (or `bootembed run CONFIG`) first")
    typer.echo(format_registry(read_registry(str(registry))))


lora_app = typer.Typer(help="LoRA adapters on the encoder (train.lora): one per language, served on one base encoder.",
                       no_args_is_help=True)
app.add_typer(lora_app, name="lora")
RunDirArg = Annotated[Path, typer.Argument(help="A run directory trained with train.lora.")]


def run_lora_registry(run_dir: Path) -> dict:
    from pipeline import encoder_lora

    try:
        return encoder_lora.registry_with_evaluations(str(run_dir))
    except encoder_lora.AdapterError as err:
        fail(f"{err}; train one with `train: {{lora: {{rank: 8}}}}` in the run config")


@lora_app.command(name="list")
def lora_list(run_dir: RunDirArg) -> None:
    """Show a run's encoder adapters: id, language, strategy, triplets, steps, size and, once evaluated, x->eng acc@1."""
    from pipeline import encoder_lora

    registry = run_lora_registry(run_dir)
    lora_dir = run_dir / "train" / encoder_lora.LORA_DIR
    typer.echo(f"base: {lora_dir / registry['base']}  ({registry['encoder']}, weights sha256 {registry['base_sha256'][:12]})")
    typer.echo(f"{'id':14s} {'language':8s} {'strategy':10s} {'triplets':>8s} {'steps':>5s} {'MB':>6s}  evaluation")
    for a in registry["adapters"]:
        megabytes = encoder_lora.folder_bytes(str(lora_dir / a["folder"])) / 1e6
        typer.echo(f"{a['id']:14s} {a['language']:8s} {a.get('strategy') or '(all)':10s} {a['triplets']:8d} "
                   f"{a['steps']:5d} {megabytes:6.2f}  {evaluation_line(a['metrics'])}")


def evaluation_line(metrics: dict) -> str:
    """An adapter's headline from evaluate/adapters.json: x->eng acc@1 on its language and its Δ vs the base encoder."""
    score = (metrics or {}).get("scores", {}).get("retrieval", {}).get("x->eng acc@1")
    if score is None:
        return "not evaluated (run `bootembed evaluate CONFIG`)" if not metrics else "no retrieval score"
    delta = metrics.get("vs_base", {}).get("retrieval", {}).get("x->eng acc@1", {}).get("delta")
    return f"x->eng acc@1 {score:.3f}" + (f" ({delta:+.3f} vs base)" if delta is not None else "")


@lora_app.command(name="merge")
def lora_merge(
    run_dir: RunDirArg,
    adapter: Annotated[str, typer.Argument(help="The adapter's id (`bootembed lora list RUN_DIR`), e.g. yor.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the merged sentence-transformers model to.")],
) -> None:
    """Write one adapter merged into its base encoder as a plain sentence-transformers folder (for users who want one
    model folder: any sentence-transformers or transformers code loads it)."""
    from pipeline import encoder_lora

    folders = {a["id"]: a["folder"] for a in run_lora_registry(run_dir)["adapters"]}
    if adapter not in folders:
        fail(f"{run_dir}: no adapter {adapter!r}; it has {', '.join(sorted(folders)) or 'none'}")
    if out.exists() and any(out.iterdir()):
        fail(f"{out}: not empty; give a new folder")
    try:
        encoder_lora.load_merged(str(run_dir / "train" / encoder_lora.LORA_DIR / folders[adapter])).save(str(out))
    except encoder_lora.AdapterError as err:
        fail(str(err))
    typer.echo(f"Merged {adapter} into its base encoder: {out}")


def resolve_eval_models(refs: list[str], cache_dir: str) -> dict[str, str]:
    """`NAME=REF` or `REF` -> {name: model}; REF = bundled:<name>, a run directory (every encoder it trained),
    a sentence-transformers folder, or a hub id (downloaded by sentence-transformers)."""
    from pipeline.layout import models_of_run
    from pipeline.models import resolve_model

    models: dict[str, str] = {}
    for text in refs:
        name, _, ref = text.rpartition("=")
        if ref.startswith("bundled:"):
            found = {name or ref.split(":", 1)[1]: resolve_model(ref, cache_dir)}
        elif Path(ref).expanduser().is_dir():
            found = models_of_run(ref)  # a LoRA run's adapters too, each merged into its base when loaded
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
    seeds = run_stages(cfg, ["seeds"], False, command="eval")["seeds"]  # the held-out evaluation text
    out_dir = str(out or mirrored(cfg, join(run_root(cfg), "eval")))  # a run at a URI: in its local mirror
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = evaluate.evaluate_models(cfg, models, {"eval": output_path(cfg, seeds, "eval")}, out_dir)
    except (ValueError, OSError) as err:
        fail(str(err))
    for name, avg in result.details["average"].items():
        if "to_eng" in avg:  # languages with held-out UDHR text
            typer.echo(f"  {name:14s} retrieval acc@1  x->eng {avg['to_eng']:.3f}  eng->x {avg['from_eng']:.3f}")
    if result.details.get("verdict"):
        typer.secho(f"Verdict: {result.details['verdict']['headline']}", bold=True)
    typer.echo(f"Report:  {result.outputs['report']}")


@app.command()
def config(config: ConfigArg, set: SetOpt = None) -> None:
    """Validate a config and print it with every default filled in."""
    typer.echo(yaml.safe_dump(load(config, set).model_dump(mode="json"), sort_keys=False, allow_unicode=True))


_CACHE_DIR = RunConfig.model_fields["cache_dir"].default
_SERVE = ServeConfig()  # host, port and the API key's variable: the run config's serve section
_APP = AppArgs.model_fields  # the Serve app's own knobs: their defaults and help come from serve.args
RUN_CONFIG = "config.yaml"  # the settings a run was made with, as given (bootembed run writes it into the run directory)


def save_run_config(cfg: RunConfig) -> None:
    """Keep the config a run was started with in its directory, so `bootembed serve RUN_DIR` finds its serve section.
    Only the fields that were set: a default is the code's to change, not the run's."""
    from pipeline.manifest import filesystem, join
    from pipeline.run import run_root

    fs, path = filesystem(join(run_root(cfg), RUN_CONFIG))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False, allow_unicode=True).encode())


def run_serve_settings(path: Path) -> ServeConfig:
    """The serve section of the config a run kept (only that section: the rest may name files of another machine)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ServeConfig.model_validate(data.get("serve") or {})
    except (yaml.YAMLError, ValueError) as err:
        fail(f"{path}: its serve section is not valid ({err}); fix or delete the file, or pass --host/--port")


def serve_sources(sources: list[str]) -> tuple[dict[str, str], ServeConfig | None, str | None]:
    """Sources -> ({model name: folder or hub id}, the serve section of the first run config among them, the first
    run's local folder). A source is a run config YAML (its run_dir is served), a run directory, a
    sentence-transformers folder or a hub id."""
    from pipeline.layout import models_of_run
    from pipeline.run import local_stage_dir, mirrored, run_root

    models: dict[str, str] = {}
    settings, run_folder = None, None
    for source in sources:
        root, cfg = source, None
        if source.endswith((".yaml", ".yml")) and Path(source).is_file():
            cfg = load(Path(source), None)
            local_stage_dir(cfg, "train")  # a run at a URI: its trained models, downloaded into the local mirror
            root = mirrored(cfg, run_root(cfg))
        elif (Path(source).expanduser() / RUN_CONFIG).is_file():
            settings = settings or run_serve_settings(Path(source).expanduser() / RUN_CONFIG)
        try:
            found = models_of_run(root)
        except FileNotFoundError as err:
            fail(str(err))
        for name in found.keys() & models.keys():
            fail(f"two sources are both named {name!r} ({models[name]} and {found[name]}); rename one directory")
        models.update(found)
        if cfg is not None and settings is None:
            settings, run_folder = cfg.serve, os.path.abspath(os.path.expanduser(root))
        elif run_folder is None and Path(root).expanduser().is_dir() and not (Path(root).expanduser() / "modules.json").is_file():
            run_folder = os.path.abspath(os.path.expanduser(root))
    return models, settings, run_folder


def serve_settings(settings: ServeConfig | None, host: str | None, port: int | None,
                   api_key_env: str | None) -> tuple[str, int, str | None]:
    """(host, port, api_key_env) to serve with: the command's options, else the run's serve section, else defaults.
    api_key_env is None when no variable was named: then BOOTEMBED_API_KEY is used if set, and nothing if not."""
    settings = settings or _SERVE
    # A variable the run's config names is as explicit as --api-key-env: it must be set. The default one is optional.
    named = settings.api_key_env if "api_key_env" in settings.model_fields_set else None
    return host or settings.host, port or settings.port, api_key_env or named


@app.command()
def serve(
    sources: Annotated[list[str], typer.Argument(help="Run configs (YAML), run directories, sentence-transformers folders "
                                                "or hub ids to serve. A run's `serve` section sets host, port and "
                                                "api_key_env; the options below win over it.")],
    host: Annotated[str | None, typer.Option(help=f"Bind address (default: the run's serve.host, else {_SERVE.host}); "
                                             "use 0.0.0.0 only behind an API key or a firewall.")] = None,
    port: Annotated[int | None, typer.Option(help=f"HTTP port (default: the run's serve.port, else {_SERVE.port}).",
                                             min=1, max=65535)] = None,
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
    max_adapters_per_replica: Annotated[int, typer.Option(help=_APP["max_adapters_per_replica"].description, min=1)]
        = _APP["max_adapters_per_replica"].default,
    truncate: Annotated[bool, typer.Option(help=_APP["truncate"].description)] = _APP["truncate"].default,
    backend: Annotated[str, typer.Option(help=_APP["backend"].description + " One of torch, onnx, openvino.")]
        = _APP["backend"].default,
    quantize: Annotated[str, typer.Option(help=_APP["quantize"].description + " One of none, int8.")]
        = _APP["quantize"].default,
    export_dir: Annotated[str, typer.Option(help=_APP["export_dir"].description)] = _APP["export_dir"].default,
    api_key_env: Annotated[str | None, typer.Option(
        help=f"Require the API key in this environment variable as a Bearer token on /v1/* (default: the run's "
             f"serve.api_key_env, else {_SERVE.api_key_env}, if set).")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Where Ray's and Serve's logs go (default: the first run's "
                                                 "logs/ folder, else ~/.cache/bootembed/logs).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve trained encoders behind an OpenAI-compatible embeddings API (Ctrl-C stops it)."""
    import signal
    import threading

    models, settings, run_folder = serve_sources(sources)
    host, port, api_key_env = serve_settings(settings, host, port, api_key_env)
    from pydantic import ValidationError

    from serve.app import api_key_from_env, build_app, is_loopback

    try:
        api_key = api_key_from_env(api_key_env)
    except ValueError as err:
        fail(str(err))
    if api_key is None and not is_loopback(host):
        typer.secho(f"warning: binding {host} without an API key exposes the API to the network; set "
                    f"{_SERVE.api_key_env} (or --api-key-env NAME) or bind 127.0.0.1", fg=typer.colors.YELLOW, err=True)
    try:
        args = AppArgs(models=models, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                       num_replicas=num_replicas, encoder_gpus=encoder_gpus, multiplex_above=multiplex_above,
                       max_models_per_replica=max_models_per_replica, truncate=truncate, backend=backend,
                       max_adapters_per_replica=max_adapters_per_replica,
                       quantize=quantize, export_dir=export_dir, api_key_env=api_key_env)
    except ValidationError as err:  # e.g. --backend onnx with --encoder-gpus 1: said before Ray starts
        fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" if e["loc"] else
                       e["msg"].removeprefix("Value error, ") for e in err.errors()))
    try:
        application = build_app(args)  # checks every model and the backend's packages first, before Ray starts
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))

    logs = str(log_dir or (Path(run_folder) / "logs" if run_folder else Path(_CACHE_DIR).expanduser() / "logs"))
    stop = threading.Event()
    with _console.Console(logs, "serve", verbose) as console:
        import ray
        from ray import serve as ray_serve

        ray.init(address="local", include_dashboard=False, object_store_memory=RayConfig().object_store_mb * 1024 * 1024,
                 _node_ip_address="127.0.0.1")
        # Our own handler, installed before the (slow) deployment: Ctrl-C or SIGTERM at any point from here on
        # means a clean shutdown, not a traceback and exit code 130.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        # Serve's controller, proxy and replicas write their own log files there too (one per component).
        serve_logs = {"logs_dir": os.path.join(logs, "serve")}
        ray_serve.start(http_options={"host": host, "port": port}, logging_config=serve_logs)
        ray_serve.run(application, name="bootembed", route_prefix="/", logging_config=serve_logs)
        auth = f"API key required (from ${api_key_env or _SERVE.api_key_env})" if api_key else "no API key"
        layout = (f"one multiplexed deployment, {max_models_per_replica} model(s) per replica"
                  if len(models) > multiplex_above else "one deployment per model")
        engine = "torch fp16 on GPU" if encoder_gpus else f"{backend} {'fp32' if quantize == 'none' else quantize}"
        console.echo(f"Serving {sorted(models)} at http://{host}:{port}/v1/embeddings ({layout}, {num_replicas} "
                     f"replica(s) each, {engine}, max batch {max_batch_size}, batch wait {batch_wait_timeout_s}s, {auth}; "
                     "Ctrl-C stops)")
        for name, where in sorted(models.items()):
            console.echo(f"  {name:24s} {where}")
        console.echo(f"Logs: {console.log_path} (Ray, Serve), {serve_logs['logs_dir']}/ (Serve's own files)")
        while not stop.is_set():
            stop.wait(1)
        console.echo("stopping ...")
        ray_serve.shutdown()


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
