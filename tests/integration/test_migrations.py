"""The schema the migrations build is the schema the code declares, and an installed wheel can build it."""

import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.core import tables  # noqa: F401  (registers every table on Base.metadata)
from app.core.db import Base, engine_for
from app.core.settings import Settings
from tests.helpers.services import POSTGRES_ADMIN_URL, ROOT


def test_the_migrated_schema_matches_the_tables_the_code_declares(settings: Settings) -> None:
    with engine_for(settings.require("database_url")).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "tables.py and migrations/ disagree; write a migration for: " + repr(differences)


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"loraport_wheel_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_built_wheel_migrates_a_database_without_the_repository(tmp_path: Path, empty_database: str) -> None:
    """The wheel, not the checkout, must carry the migrations: unpacked away from the repository, it migrates."""
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("app", "worker", "migrations"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("loraport-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    script = (
        "import sys, app, migrations; from app.core.bootstrap import migrate; migrate(sys.argv[1]); "
        "print(app.__file__, migrations.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(installed)!r}); {script}", empty_database],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(Path(path).is_relative_to(installed) for path in result.stdout.split()), result.stdout
    with psycopg.connect(empty_database.replace("postgresql+psycopg://", "postgresql://")) as connection:
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version is not None
