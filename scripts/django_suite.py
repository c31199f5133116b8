"""``make test-django``: Django's own ORM tests through the dbevents engines.

    python scripts/django_suite.py [--db sqlite|postgresql|mysql] [--parallel N] [APP_OR_TEST ...]

Fetches the test suite of the *installed* Django (its sdist on PyPI ships ``tests/``; cached in
``.django-suite/``), runs the apps of :data:`APPS` through ``dbevents.backends.<vendor>`` with
every concrete model registered (``tests/django_suite``), then runs whatever failed there again
on Django's stock engine. A test that passes on the stock engine and fails through dbevents is
*broken*: the run fails, unless the test is in :data:`ALLOWED` with its reason. The run also
fails when no event was published, so a run that captures nothing cannot pass.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".django-suite"

#: The ORM-heavy apps of Django's suite that every run covers.
APPS = (
    "basic update delete delete_regress bulk_create queries model_inheritance model_inheritance_regress "
    "custom_pk many_to_many m2m_through m2m_regress transactions select_for_update expressions "
    "update_only_fields get_or_create force_insert_update save_delete_hooks raw_query one_to_one "
    "generic_relations proxy_models fixtures lookup model_fields backends select_related prefetch_related "
    "signals null_fk ordering aggregation annotations custom_managers defer from_db_value composite_pk"
).split()

#: Tests that inspect the engine's own execute wrappers, which dbevents adds to by design.
ALLOWED = {
    "backends.base.test_base.ExecuteWrapperTests.test_wrapper_connection_specific":
        "asserts connection.execute_wrappers is empty; dbevents' capture is one of them",
}

_RESULT = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \((?P<where>[\w.]+)\)", re.M)
_RAN = re.compile(r"^Ran (\d+) tests? in", re.M)


def suite_dir() -> Path:
    """Django's ``tests/`` folder for the installed Django version, fetched once."""
    import django

    version = django.__version__
    tests = CACHE / f"django-{version}" / "tests"
    if (tests / "runtests.py").exists():
        return tests
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        print(f"fetching the test suite of Django {version} (its sdist) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"Django=={version}", "-d", tmp],
            check=True,
        )
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            tar.extractall(tmp, members=members, filter="data")
        target = CACHE / f"django-{version}"
        target.mkdir(exist_ok=True)
        (Path(tmp) / top / "tests").rename(tests)
    return tests


def run_suite(tests: Path, engine: str, db: str, labels: list[str], parallel: int, log: Path,
              report_dir: str) -> str:
    """One run of ``runtests.py`` in a process of its own; returns its output (also in ``log``)."""
    env = {
        **os.environ,
        "DBEVENTS_SUITE_ENGINE": engine,
        "DBEVENTS_TEST_DB": db,
        "DBEVENTS_SUITE_REPORT_DIR": report_dir,
        "PYTHONPATH": os.pathsep.join([str(tests), str(ROOT)]),
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, str(Path(__file__)), "--inner", str(tests), "--settings=tests.django_suite.settings",
           "--noinput", f"--parallel={parallel}", "-v", "1", *labels]
    print(f"--- Django {tests.parent.name.split('-', 1)[1]} / {db} / {engine} engine: {len(labels)} label(s)",
          flush=True)
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=tests, env=env, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if not _RAN.search(text):
        sys.stdout.write(text[-5000:])
        raise SystemExit(f"the {engine} run did not run the tests (exit {proc.returncode}); log: {log}")
    return text


def failures(output: str) -> set[str]:
    """The labels of the tests (or classes, for a failing ``setUpClass``) that failed or erred."""
    out = set()
    for m in _RESULT.finditer(output):
        name, where = m.group(2), m.group("where")
        out.add(where if where.endswith("." + name) or name in ("setUpClass", "tearDownClass") else f"{where}.{name}")
    return out


def inner(tests: str, argv: list[str]) -> None:
    """Run Django's ``runtests.py`` with dbevents' apps added to its ``ALWAYS_INSTALLED_APPS``."""
    import importlib.util

    path = os.path.join(tests, "runtests.py")
    spec = importlib.util.spec_from_file_location("runtests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtests"] = module
    spec.loader.exec_module(module)  # defines everything; its __main__ block is run below
    from tests.django_suite import settings as suite_settings

    module.ALWAYS_INSTALLED_APPS.extend(getattr(suite_settings, "DBEVENTS_SUITE_APPS", []))
    source = Path(path).read_text()
    main = source[source.index('if __name__ == "__main__":'):].split("\n", 1)[1]
    sys.argv = [path, *argv]
    exec(compile(textwrap.dedent(main), path, "exec"), module.__dict__)  # noqa: S102


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--inner":
        inner(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("DBEVENTS_TEST_DB", "sqlite"),
                        choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--parallel", type=int, default=int(os.environ.get("DJANGO_SUITE_PARALLEL", "2")))
    parser.add_argument("labels", nargs="*", help=f"apps or tests (default: the {len(APPS)} apps of APPS)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.django_suite.report import merge

    tests = suite_dir()
    logs = Path(tempfile.mkdtemp(prefix=f"django-suite-{args.db}-"))
    labels = args.labels or list(APPS)
    report_dir = str(logs / "report")
    os.mkdir(report_dir)
    through = run_suite(tests, "dbevents", args.db, labels, args.parallel, logs / "dbevents.log", report_dir)
    ran = int(_RAN.search(through).group(1))  # type: ignore[union-attr]
    failed = failures(through)
    stock_failed: set[str] = set()
    if failed:
        stock = run_suite(tests, "stock", args.db, sorted(failed), args.parallel, logs / "stock.log",
                          str(logs / "report"))
        stock_failed = failures(stock)
    broken = sorted(failed - stock_failed - set(ALLOWED))
    counts = merge(report_dir)
    events = counts["events"]
    print(f"\n{ran} tests through dbevents ({args.db}); {len(failed)} failed there, "
          f"{len(failed & stock_failed)} of them fail on the stock engine too; "
          f"{len(failed & set(ALLOWED))} allowed.")
    print(f"{counts['registered']} models registered; {sum(events.values())} events published "
          f"({len(events)} models), e.g. {', '.join(f'{m}: {n}' for m, n in events.most_common(5))}")
    built = counts["built"]
    print(f"{sum(built.values())} events built at TestCase teardown, whose transaction never commits "
          f"({len(built)} models), e.g. {', '.join(f'{m}: {n}' for m, n in built.most_common(5))}")
    if counts["logs"]:
        print(f"dbevents logged {sum(counts['logs'].values())} warning(s)/error(s):")
        for message, n in counts["logs"].most_common(15):
            print(f"  {n:6d}  {message}")
    for label in sorted(failed & set(ALLOWED)):
        print(f"allowed: {label}: {ALLOWED[label]}")
    if broken:
        print(f"\nBROKEN through dbevents ({len(broken)}); logs in {logs}:")
        for label in broken:
            print(f"  {label}")
        return 1
    if not events or not built:
        print("no event was published or built: the run captured nothing")
        return 1
    print(f"0 tests broken through dbevents ({args.db}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
