"""The `loraport` command run as a user runs it: a child process with the tests' settings."""

import subprocess
import sys

from app.core.settings import Settings
from tests.helpers.services import ROOT, settings_env


def loraport(settings: Settings, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        cwd=ROOT,
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
