"""The `loraport` command run as a user runs it: a child process with the tests' settings."""

import subprocess
import sys

from app.core.settings import Settings
from tests.helpers.services import ROOT, settings_env


def loraport(settings: Settings, *args: str, exit_code: int = 0) -> str:
    """What the command printed, once it exited with `exit_code`."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        cwd=ROOT,
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == exit_code, result.stdout + result.stderr
    return result.stdout
