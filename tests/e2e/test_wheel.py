"""A plain (non-editable) install carries migrations/ and the message store SQL inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_projector_migrate_works_from_a_wheel_install(
    tmp_path: Path, empty_database_url: str
) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT], check=True
    )
    (wheel,) = wheels.glob("messagedb_projector-*.whl")  # "projector" on PyPI is another's
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    # PYTHONPATH comes before site-packages, so the wheel's copy shadows the editable one.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import projector.storage.migrate as m; print(m.migrations_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "projector",
            "migrate",
            "--message-store",
            "--database-url",
            empty_database_url,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    version = subprocess.run(
        [sys.executable, "-m", "projector", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    assert "(distribution messagedb-projector)" in version.stdout
    assert Path(where.stdout.strip()) == target / "projector" / "migrations"
    assert (target / "projector" / "py.typed").is_file(), "handlers could not type-check"
    assert result.returncode == 0, result.stderr
    assert "message store created" in result.stdout
    assert "projector tables created or upgraded (schema projector)" in result.stdout
