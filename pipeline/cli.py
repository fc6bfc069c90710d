"""The `bootembed` command: thin wrappers that load a config and call one function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.run import STAGE_NAMES, StageInputError, run_pipeline
from pipeline.seeds import SeedError

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
    except (SeedError, StageInputError, ValueError, FileNotFoundError) as err:
        fail(str(err))


@app.command()
def run(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False) -> None:
    """Run every stage (seeds -> synthesize -> filter -> train -> evaluate); finished stages are skipped."""
    cfg = load(config, set)
    manifests = run_stages(cfg, None, force)
    total = sum(m["seconds"] for m in manifests.values())
    typer.echo("\nStage timings: " + ", ".join(f"{n} {m['seconds']:.0f}s" for n, m in manifests.items()) + f" (total {total:.0f}s)")
    averages = manifests["evaluate"]["details"].get("average", {})
    for model, avg in averages.items():
        typer.echo(f"  {model:8s} retrieval acc@1  x->eng {avg['to_eng']:.3f}  eng->x {avg['from_eng']:.3f}")
    typer.echo(f"Report:  {manifests['evaluate']['outputs']['report']}")
    typer.echo(f"Model:   {manifests['train']['outputs']['model']}")
    typer.echo(f"Serve:   bootembed serve {cfg.run_dir}")


def _stage_command(name: str):
    def command(config: ConfigArg, set: SetOpt = None, force: ForceOpt = False) -> None:
        run_stages(load(config, set), [name], force)

    command.__doc__ = f"Run only the `{name}` stage (its inputs must exist in the run directory)."
    return command


for _name in STAGE_NAMES:
    app.command(name=_name)(_stage_command(_name))


@app.command()
def config(config: ConfigArg, set: SetOpt = None) -> None:
    """Validate a config and print it with every default filled in."""
    typer.echo(yaml.safe_dump(load(config, set).model_dump(mode="json"), sort_keys=False, allow_unicode=True))


@app.command()
def serve(
    sources: Annotated[list[str], typer.Argument(help="Run directories or sentence-transformers folders to serve.")],
    host: Annotated[str, typer.Option(help="Bind address; use 0.0.0.0 only behind an API key or a firewall.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
) -> None:
    """Serve trained encoders behind an OpenAI-compatible embeddings API (Ctrl-C stops it)."""
    import signal
    import threading

    import ray
    from ray import serve as ray_serve

    from serve.app import build_app, models_of_run

    models: dict[str, str] = {}
    for source in sources:
        try:
            found = models_of_run(source)
        except FileNotFoundError as err:
            fail(str(err))
        for name in found.keys() & models.keys():
            fail(f"two sources are both named {name!r} ({models[name]} and {found[name]}); rename one directory")
        models.update(found)
    ray.init(address="local", include_dashboard=False, object_store_memory=256 * 1024 * 1024, _node_ip_address="127.0.0.1")
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(build_app(models), name="bootembed", route_prefix="/")
    typer.echo(f"Serving {sorted(models)} at http://{host}:{port}/v1/embeddings (Ctrl-C stops)")
    sys.stdout.flush()
    stop = threading.Event()
    # Our own handler: Ctrl-C (or SIGTERM from a supervisor) means a clean shutdown, not a traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1)
    typer.echo("stopping ...")
    ray_serve.shutdown()
    ray.shutdown()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
