"""The user's Loraport config file: `loraport up` remembers its server and key there, so later commands need
neither --base-url nor --api-key."""

import json
import os
import tempfile
from pathlib import Path

KEYS = ("base_url", "api_key")


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/loraport/config.json`, ~/.config when the variable is unset (the XDG default)."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "loraport" / "config.json"


def load() -> dict[str, str]:
    """The saved settings, none when there is no file; OSError or ValueError when it cannot be read."""
    try:
        saved = json.loads(config_path().read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
    return {key: saved[key] for key in KEYS if isinstance(saved.get(key), str)}


def save(base_url: str, api_key: str) -> Path:
    """Writes both settings, readable by this user only (mode 0600, as the key is a secret); returns the path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600 before the key is in it; the rename swaps it in whole.
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"base_url": base_url, "api_key": api_key}, handle, indent=2)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path
