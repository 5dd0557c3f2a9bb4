"""Object names that would be written outside the download directory are refused (audit #17)."""

from pathlib import Path

import pytest

from app.core.storage import UnsafeObjectKey, _contained


@pytest.mark.parametrize("relative", ["../escape", "a/../../escape", "/etc/cron.d/x", "a/b/../../../x"])
def test_a_name_leaving_the_directory_is_refused(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafeObjectKey, match="outside"):
        _contained(tmp_path / "dest", relative, f"prefix/{relative}")


def test_a_link_inside_the_directory_pointing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeObjectKey):
        _contained(tmp_path / "dest", "link/escape", "prefix/link/escape")


def test_names_inside_are_kept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert _contained(dest, "adapter_model.safetensors", "k") == (dest / "adapter_model.safetensors").resolve()
    assert _contained(dest, "sub/dir/file.json", "k") == (dest / "sub/dir/file.json").resolve()
