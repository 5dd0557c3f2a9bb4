"""`loraport up` with no URLs configured: every embedded server starts, the API answers, the new key is remembered
for the CLI, Ctrl-C leaves nothing behind, and a second start reuses the data and the key."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from app.cli.embedded.process import free_ports
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import ROOT, sdk_client
from tests.helpers.waiting import eventually

URL_SETTINGS = ("LORAPORT_DATABASE_URL", "LORAPORT_REDIS_URL", "LORAPORT_S3_ENDPOINT_URL", "LORAPORT_BOOTSTRAP_KEY")


def start_up(home: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    """Runs `loraport up` and reads its output until the banner says it is ready."""
    env = {key: value for key, value in os.environ.items() if key not in URL_SETTINGS}
    env.update(LORAPORT_HOME=str(home), LORAPORT_PORT=str(port), XDG_CONFIG_HOME=str(home / "config"))
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            return process, lines
    raise AssertionError("`loraport up` exited before it was ready:\n" + "".join(lines))


def stop_up(process: subprocess.Popen) -> None:
    children = psutil.Process(process.pid).children(recursive=True)
    assert children, "up started no child processes"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


def test_up_runs_everything_embedded_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    process, lines = start_up(tmp_path, port)
    try:
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in output
        key = re.search(r"(lp_[A-Za-z0-9]+)", output)
        assert key, output
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        files = httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": f"Bearer {key.group(1)}"})
        assert files.status_code == 200
        saved = json.loads((tmp_path / "config" / "loraport" / "config.json").read_text())
        assert saved == {"base_url": f"http://127.0.0.1:{port}", "api_key": key.group(1)}  # for the CLI's commands
        # A job on the embedded Redis (a unix socket: every Redis client must take its URL)
        api = sdk_client(f"http://127.0.0.1:{port}", key.group(1))
        training = api.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
        job = api.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
        assert job.status == "queued" and api.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        wrong_key = "lp_" + "x" * 40
        refused = httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": f"Bearer {wrong_key}"})
        assert refused.status_code == 401
        login = httpx.post(f"http://127.0.0.1:{port}/login", data={"api_key": key.group(1)})
        assert login.status_code == 303
        # Metrics: one line per endpoint, each serving Loraport's metrics; never on the public port
        endpoints = dict(re.findall(r"metrics \((\w+)\): (http://\S+/metrics)", output))
        assert set(endpoints) == {"API", "worker", "maintenance"}, output
        for url in endpoints.values():
            eventually(lambda url=url: _serves_metrics(url), timeout=120, what=url)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
    finally:
        stop_up(process)
    logs = {path.name: path.read_text() for path in (tmp_path / "logs").glob("*.log")}
    assert {"api.log", "worker.log"} <= set(logs)
    assert [name for name, text in logs.items() if key.group(1) in text or wrong_key in text] == []  # no key logged

    process, lines = start_up(tmp_path, port)
    try:
        assert "lp_" not in "".join(lines)  # the key is shown only once …
        again = httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": f"Bearer {key.group(1)}"})
        assert again.status_code == 200  # … and still works after a restart
    finally:
        stop_up(process)


def _serves_metrics(url: str) -> bool:
    try:
        return "loraport_" in httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return False


def test_up_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if key not in URL_SETTINGS}
        env.update(LORAPORT_HOME=str(tmp_path), LORAPORT_PORT=str(port))
        result = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stdout + result.stderr
