"""The ``corral`` command: serve, models, worker, openapi, nginx, bench, locustfile,
wrk-script."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from pydantic import ValidationError

from ..config import ModelOverrides, Settings
from ..errors import StartupError
from ..log import configure_logging
from ..server import Server


def _flag_help(name: str) -> str:
    field = Settings.model_fields[name]
    return f"{field.description}  [default: {field.get_default()}; env CORRAL_{name.upper()}]"


def _settings_help() -> str:
    """Every setting with its environment variable and default, for --help."""
    lines = ["\b", "Settings (environment variables; the flags above override them):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else ("{}" if default == {} else str(default))
        lines.append(f"  CORRAL_{name.upper():<20} {field.description} [default: {shown}]")
    lines.append("  CORRAL_MODELS__<NAME>__<FIELD>  Per-model overrides of the class attributes:")
    for name, field in ModelOverrides.model_fields.items():
        lines.append(f"    CORRAL_MODELS__<NAME>__{name.upper():<14} {field.description}")
    return "\n".join(lines)


def build_settings(**flags: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(f"Invalid settings: {problems}") from None


def _load(target: str, settings: Settings) -> Server:
    from ..discover import load_server, warn_heavy_imports

    try:
        server = load_server(target)
        server.catalog(settings)  # check every model now, before any process starts
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    warn_heavy_imports(f"Importing {target}")
    return server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="corral")
def cli() -> None:
    """Corral: serve machine-learning models over HTTP."""


@cli.command(epilog=_settings_help())
@click.argument("app")
@click.option("--host", help=_flag_help("host"))
@click.option("--port", type=int, help=_flag_help("port"))
@click.option("--workers", type=int, help=_flag_help("workers"))
@click.option("--threads", type=int, help=_flag_help("threads"))
@click.option("--worker-class", type=click.Choice(["gthread", "gevent"]),
              help=_flag_help("worker_class"))
@click.option("--timeout", type=int, help=_flag_help("timeout"))
@click.option("--max-requests", type=int, help=_flag_help("max_requests"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=_flag_help("log_level"))
@click.option("--runtime-dir", help=_flag_help("runtime_dir"))
@click.option("--dev", is_flag=True, help="Run the development server, models in-process.")
@click.option("--reload", is_flag=True,
              help="With --dev: restart the server and its models when the app file or a "
                   "module it imports changes.")
def serve(app: str, dev: bool, reload: bool, **flags: Any) -> None:
    """Serve the models of APP (path/to/app.py, module:attr or path.py:attr)."""
    if reload and not dev:
        raise click.UsageError("--reload is for development: use it with --dev.")
    settings = build_settings(**flags)
    configure_logging(settings.log_level, settings.log_format)
    server = _load(app, settings)
    from .serve import serve_dev, serve_supervised

    _check_jobs(settings)
    if dev:
        serve_dev(app, server, settings, reload)
    else:
        serve_supervised(app, server, settings, jobs=not settings.broker_url)


@cli.command(epilog=_settings_help())
@click.argument("app")
@click.option("--runtime-dir", required=True, help=_flag_help("runtime_dir"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=_flag_help("log_level"))
def models(app: str, **flags: Any) -> None:
    """Run APP's models (supervisor, dispatcher, replicas) without an HTTP server.

    A WSGI app started apart, under uWSGI, Waitress or any WSGI server, with
    CORRAL_RUNTIME_DIR set to the same directory sends its requests here: one copy
    of each model and batching across all its workers.
    """
    settings = build_settings(**flags)
    configure_logging(settings.log_level, settings.log_format)
    server = _load(app, settings)
    from .serve import serve_supervised

    _check_jobs(settings)
    serve_supervised(app, server, settings, http=False, jobs=not settings.broker_url)


@cli.command(epilog=_settings_help())
@click.argument("app")
@click.option("--concurrency", "worker_concurrency", type=int,
              help=_flag_help("worker_concurrency"))
@click.option("--runtime-dir", help=_flag_help("runtime_dir"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=_flag_help("log_level"))
def worker(app: str, **flags: Any) -> None:
    """Run jobs of APP's models from the broker (CORRAL_BROKER_URL) with Celery.

    Starts APP's models (dispatcher, replicas) without an HTTP server, and a Celery
    worker whose processes send each job's inputs to them, so jobs batch together.
    Run as many as you like, on any machine that reaches the broker and the job store.
    """
    settings = build_settings(**flags)
    if not settings.broker_url:
        raise click.UsageError("corral worker runs jobs from a broker: set CORRAL_BROKER_URL "
                               "(redis://host:6379/0 or amqp://user:pass@host:5672//). "
                               "Without one, corral serve runs jobs itself.")
    configure_logging(settings.log_level, settings.log_format)
    server = _load(app, settings)
    _check_jobs(settings)
    from .serve import serve_supervised

    # No HTTP workers here: inline models run in replica processes like the rest.
    serve_supervised(app, server, settings, http=False, jobs=True, inline=False)


def _check_jobs(settings: Settings) -> None:
    """Refuse to start with a job store or broker that cannot work, saying why."""
    from ..jobs.backend import store_url

    try:
        url = store_url(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.broker_url and not settings.broker_url.startswith(
            ("redis://", "rediss://", "amqp://", "amqps://")):
        raise click.UsageError(f"CORRAL_BROKER_URL must be redis://... or amqp://...; got "
                               f"{settings.broker_url!r}.")
    if settings.broker_url:
        try:
            import celery  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "Jobs on a broker need Celery: pip install 'corral[celery]'.") from None
    if not url.startswith(("redis://", "rediss://", "unix://", "sqlite:///")):
        raise click.UsageError(f"CORRAL_JOB_STORE_URL must be redis://... or sqlite:///...; "
                               f"got {url!r}.")


@cli.command()
@click.argument("app")
def openapi(app: str) -> None:
    """Print the OpenAPI 3.1 document of APP's models."""
    from ..schema.openapi import build_openapi

    settings = build_settings()
    server = _load(app, settings)
    doc = build_openapi(server.catalog(settings), settings, server.info)
    click.echo(json.dumps(doc, indent=2))


@cli.command()
@click.argument("instances", nargs=-1, required=True)
@click.option("--port", "listen", default="127.0.0.1:8080", show_default=True,
              help="Where nginx listens: PORT or HOST:PORT.")
@click.option("--app", help="The app the instances serve: proxy timeouts follow its "
              "models' timeouts (default: Corral's default of 30 s).")
def nginx(instances: tuple[str, ...], listen: str, app: str | None) -> None:
    """Print an nginx site config for Corral INSTANCES (HOST:PORT ...)."""
    from ..model import Batching
    from .nginx import site_config

    for instance in instances:
        host, _, port = instance.rpartition(":")
        if not host or not port.isdigit():
            raise click.UsageError(f"{instance!r} is not HOST:PORT.")
    settings = build_settings()
    timeout = Batching().timeout
    if app:
        timeout = max(spec.batching.timeout for spec in _load(app, settings).catalog(settings))
    click.echo(site_config(list(instances), listen, settings, timeout), nl=False)


from .bench import bench, locustfile, wrk_script_command  # noqa: E402

cli.add_command(bench)
cli.add_command(locustfile)
cli.add_command(wrk_script_command)


def main() -> None:
    """Entry point of the ``corral`` script."""
    sys.exit(cli(standalone_mode=True))
