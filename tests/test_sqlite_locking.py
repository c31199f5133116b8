"""SQLite file databases: the publisher thread marking outbox rows never makes the
application's own transactions fail with "database is locked" -- read-then-write transactions,
async ORM methods and saving while iterating a queryset, in the default journal mode and WAL.
Each workload runs in a process of its own (tests/sqlite_file/workload.py) on a fresh file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, journal_mode: str, engine: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.sqlite_file.workload", str(tmp_path / "db.sqlite3"), journal_mode, engine],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_no_database_is_locked(tmp_path: Path, journal_mode: str) -> None:
    report = run(tmp_path, journal_mode, "dbevents.backends.sqlite3")
    assert report["read-then-write"] == 0, report
    assert report["async"] == 0, report
    assert report["save-while-iterating"] == 0, report
    # 20 read-then-write; 10 x (acreate, asave, 2 abulk_create); 20 rows saved while iterating.
    assert report["rows"] == 20 + 10 * 3, report
    assert report["published"] == 20 + 10 * 4 + 20, report
