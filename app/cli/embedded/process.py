"""Child processes that `loraport up` and the tests start, watch and stop without leaving any behind."""

import contextlib
import ctypes
import hashlib
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only


class ServerError(RuntimeError):
    """A server could not start or stop; the message is one line that says what to do."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports the kernel says are free now (holding each open until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def socket_dir(preferred: Path) -> Path:
    """`preferred`, or a short directory under /tmp when a socket path there would pass the ~107-byte limit."""
    if len(str(preferred / ".s.PGSQL.5432")) < 100:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"loraport-{digest}"


def user_ids(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """Popen's `user`, `group` and `extra_groups` for running as `user` without root's groups.

    Without `group` and `extra_groups` the child keeps gid 0, and a directory's group bits then deny it
    what its "other" bits allow.
    """
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


def runs_on(pid: int, marker: Path) -> bool:
    """Whether `pid` is alive and its command line names `marker` (its data directory or socket)."""
    try:
        return str(marker) in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def check_pid_file(pid_file: Path, name: str, marker: Path) -> None:
    """Refuse to start over a live earlier server; delete the pid file of a dead one (or of a reused pid)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if runs_on(pid, marker):
        raise ServerError(
            f"{name} from an earlier run is still running on {marker} (pid {pid}); "
            f"stop it with `kill {pid}` and start again"
        )
    pid_file.unlink()


def private_directory(path: Path) -> None:
    """`path`, made if missing, readable and writable by this user only (mode 700): the embedded servers keep
    every tenant's data there, which other users of a shared host must not read or change."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


class ServerProcess:
    """One child in its own session, logging to a file, killed by the kernel if its parent dies.

    Its own session keeps a terminal's Ctrl-C away from it, so the parent decides the order of shutdown;
    the parent-death signal makes sure it does not outlive a parent that was killed outright.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
        death_signal: signal.Signals | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.death_signal = death_signal or stop_signal
        self.env = env
        self.user = user
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        death_signal = self.death_signal

        def die_with_parent() -> None:
            if _prctl is None:
                return
            _prctl(_PR_SET_PDEATHSIG, int(death_signal))
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), death_signal)

        uid, gid, groups = user_ids(self.user)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                user=uid,
                group=gid,
                extra_groups=groups,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self._popen.poll() if self._popen else None

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until it is true; raise with the log's tail if the process exits or time runs out."""
        started = time.monotonic()
        last_error = "not ready"
        while True:
            code = self.exit_code()
            if code is not None:
                raise ServerError(f"{self.name} exited with code {code} while starting; {self.log_tail()}")
            try:
                if ready():
                    return
            except Exception as error:  # any failure of the probe means "not yet"
                last_error = f"{type(error).__name__}: {error}"
            if time.monotonic() - started > timeout:
                self.stop()
                raise ServerError(
                    f"{self.name} did not become ready within {timeout:.0f} s ({last_error}); {self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Ask politely with `stop_signal`, then SIGKILL the whole process group after `stop_timeout`."""
        if self._popen is None:
            return
        stop_group(self._popen, self.stop_signal, self.stop_timeout)
        self._popen = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"no log at {self.log_path}"
        return f"last lines of {self.log_path}: " + " | ".join(line.strip() for line in tail)


def stop_group(popen: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Signal the group led by `popen`, wait for the leader, then SIGKILL whatever is left of the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()
