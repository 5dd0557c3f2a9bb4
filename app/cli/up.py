"""`loraport up`: the whole service on one machine, with embedded servers where no URL is configured."""

import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from app.cli import user_config
from app.cli.embedded.process import ServerError, ServerProcess, free_ports, port_is_free
from app.cli.embedded.services import embedded_services
from app.core import bootstrap
from app.core.settings import Settings, get_settings

console = Console(soft_wrap=True)  # one line per message, whatever the terminal width
API_START_TIMEOUT_S = 180.0  # the API imports torch and transformers before it listens


class Shutdown(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException like KeyboardInterrupt, so `except Exception` lets it pass."""


def up() -> None:
    """Run the API, a training worker and, where no URL is set, PostgreSQL, Redis and S3 on this machine."""
    settings = get_settings()
    home = settings.home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _shut_down)
    try:
        with _exclusive(home / "up.lock"):
            if not port_is_free(settings.host, settings.port):
                raise ServerError(
                    f"port {settings.port} is in use; set LORAPORT_PORT to another port or stop what uses it"
                )
            _run(settings)
    except Shutdown:
        console.print("stopped")
    except ServerError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None


def _run(settings: Settings) -> None:
    with embedded_services(settings) as embedded:
        api_metrics, worker_metrics, maintenance_metrics = _metrics_ports(embedded.settings)
        settings = embedded.settings.model_copy(
            update={"metrics_port": api_metrics, "worker_metrics_port": worker_metrics}
        )
        new_key = bootstrap.prepare(settings)
        logs = settings.home / "logs"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings.as_environment()}
        worker = ServerProcess("worker", _worker_argv(), logs / "worker.log", stop_timeout=15.0, env=env)
        maintenance_env = env | {"LORAPORT_WORKER_METRICS_PORT": str(maintenance_metrics)}
        maintenance = ServerProcess(
            "maintenance", _maintenance_argv(settings), logs / "maintenance.log", stop_timeout=10.0, env=maintenance_env
        )
        api = ServerProcess("API", _api_argv(settings), logs / "api.log", stop_timeout=10.0, env=env)
        try:
            worker.start()
            maintenance.start()
            api.start()
            api.wait_ready(lambda: _listens(settings.host, settings.port), API_START_TIMEOUT_S)
            metrics = {"API": api_metrics, "worker": worker_metrics, "maintenance": maintenance_metrics}
            _print_banner(settings, new_key, [p.name for p in embedded.processes], metrics)
            _watch([*embedded.processes, worker, maintenance, api])
        finally:
            _ignore_stop_signals()
            console.print("stopping…")
            api.stop()
            maintenance.stop()
            worker.stop()


def _api_argv(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory",
        "--host", settings.host, "--port", str(settings.port),
    ]  # fmt: skip


def _worker_argv() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery.training", "worker",
        "--queues", "training", "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO",
    ]  # fmt: skip


def _maintenance_argv(settings: Settings) -> list[str]:
    # `--beat` runs the reaper on a schedule (jobs whose worker died, lost messages); one per deployment.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery.maintenance", "worker",
        "--queues", "maintenance", "--pool", "solo", "--loglevel", "INFO",
        "--beat", "--schedule", str(settings.home / "celerybeat-schedule"),
    ]  # fmt: skip


def _watch(processes: list[ServerProcess]) -> NoReturn:
    """Sleep until a signal arrives or a child dies; a dead child is an error."""
    while True:
        for process in processes:
            code = process.exit_code()
            if code is not None:
                _ignore_stop_signals()
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"with code {code}"
                raise ServerError(f"{process.name} exited unexpectedly ({how}); {process.log_tail()}")
        time.sleep(0.5)


def _print_banner(
    settings: Settings, new_key: str | None, embedded_names: list[str], metrics_ports: dict[str, int]
) -> None:
    console.print(f"[bold green]Loraport is up[/bold green] at [bold]http://{settings.host}:{settings.port}/v1[/bold]")
    if new_key:
        console.print(f"API key: [bold]{new_key}[/bold] ({escape(_remember(settings, new_key))})", highlight=False)
    else:
        console.print("API key: use the key printed on first start or LORAPORT_BOOTSTRAP_KEY")
    console.print(f"data: {settings.home}", highlight=False)
    if embedded_names:
        console.print(f"embedded: {', '.join(embedded_names)}; logs in {settings.home / 'logs'}", highlight=False)
    _print_metrics(settings, metrics_ports)
    console.print("Ctrl-C stops everything.")


def _metrics_ports(settings: Settings) -> tuple[int, int, int]:
    """The metrics ports of the API, the training worker and the maintenance worker: LORAPORT_METRICS_PORT and
    LORAPORT_WORKER_METRICS_PORT where set (the maintenance worker takes the port after the worker's), else the
    ports after the API's, or free ones where those are taken."""
    api = settings.metrics_port or settings.port + 1
    worker = settings.worker_metrics_port or api + 1
    wanted = [api, worker, worker + 1]
    chosen: list[int] = []
    for port in wanted:
        configured = port in (settings.metrics_port, settings.worker_metrics_port)
        if not configured and (port in chosen or not port_is_free(settings.metrics_host, port)):
            port = next(free for free in free_ports(4, settings.metrics_host) if free not in chosen)
        chosen.append(port)
    return chosen[0], chosen[1], chosen[2]


def _print_metrics(settings: Settings, ports: dict[str, int]) -> None:
    """One line per metrics endpoint started, as Prometheus would scrape it."""
    host = _reachable(settings.metrics_host)
    host = f"[{host}]" if ":" in host else host
    for name, port in ports.items():
        console.print(f"metrics ({name}): http://{host}:{port}/metrics", highlight=False)


def _remember(settings: Settings, key: str) -> str:
    """Saves the new key and this server's URL for the `loraport` commands on this machine; says where, or why not."""
    host = _reachable(settings.host)
    try:
        path = user_config.save(f"http://{f'[{host}]' if ':' in host else host}:{settings.port}", key)
    except OSError as error:
        return f"save it, it is shown once; it could not be remembered: {error}"
    return f"shown once; remembered in {path}, so `loraport` commands here need no --api-key"


def _listens(host: str, port: int) -> bool:
    with socket.create_connection((_reachable(host), port), timeout=1):
        return True


def _reachable(host: str) -> str:
    """The address a client on this machine connects to: loopback for a server listening on every address."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an flock on `lock_path` for the run; the kernel drops it when this process dies, however it dies."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode().strip() or "unknown"
            raise ServerError(f"another `loraport up` is running with home {lock_path.parent} (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _shut_down(signum: int, frame: object) -> None:
    _ignore_stop_signals()  # a second Ctrl-C must not cut the orderly shutdown short
    raise Shutdown(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
