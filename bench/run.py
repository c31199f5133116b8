"""``make bench``: dbevents against the stock engines, and django-events-sourcing 0.8 against its
own disabled state, on PostgreSQL, MariaDB and SQLite, with every event counted at RabbitMQ.

Runs one worker process per library and database (``bench/worker.py``): dbevents in this
interpreter, django-events-sourcing in ``bench/.venv-des`` (``make bench`` creates it). Prints
Markdown tables and writes them to ``bench/RESULTS.md``.

Environment: ``BENCH_DATABASES`` (default ``postgresql mysql sqlite``), ``BENCH_LIBS`` (default
``dbevents des``), ``BENCH_ROUNDS`` (default 5), ``BENCH_QUICK=1`` (smaller workloads, for a
smoke run), ``BENCH_WORKLOADS`` (a subset: reads creates saves update update_filtered bulk_create
bulk_update cascade), ``BENCH_MEMORY`` (databases for the 100,000- and 1,000,000-row update memory test; default
``postgresql``; ``none`` to skip; ``BENCH_MEMORY_ROWS`` the row counts), ``BENCH_DELIVERY`` (sets ``DBEVENTS_DELIVERY``; default:
unset, the library's default), ``BENCH_DES_PYTHON``, ``BENCH_AMQP_URI``, ``BENCH_PG_HOST``/``_PORT``,
``BENCH_MYSQL_HOST``/``_PORT``, ``BENCH_OUTPUT`` (default ``bench/RESULTS.md``).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DB_TITLES = {"postgresql": "PostgreSQL", "mysql": "MariaDB", "sqlite": "SQLite"}
LIB_TITLES = {"dbevents": "dbevents", "des": "django-events-sourcing 0.8"}
# Median ratio targets against the stock engine (issue 8), per database where they differ.
RATIO_TARGETS = {"reads": 1.03, "saves": 1.3, "creates": 2.0, "bulk_update": 1.3}
RATIO_TARGETS_BY_DB = {"sqlite": {"creates": 1.5}}
BULK = ("update", "update_filtered", "bulk_create", "bulk_update")
RATE_TARGETED = ("update", "update_filtered", "bulk_create", "cascade")
RATE_DBS = ("postgresql", "mysql")
BULK_RATE_TARGET = 15_000          # events/s end to end, on PostgreSQL and MariaDB
MEMORY_TARGET_MIB = 256            # peak RSS growth of the largest memory run (issue 8)
MEMORY_SCALING = 1.5               # largest vs smallest run's growth: bounded, not per row


def env_list(name: str, default: str) -> list[str]:
    return [x for x in os.environ.get(name, default).replace(",", " ").split() if x]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def main() -> int:
    databases = env_list("BENCH_DATABASES", "postgresql mysql sqlite")
    libs = env_list("BENCH_LIBS", "dbevents des")
    memory_dbs = env_list("BENCH_MEMORY", "postgresql")
    rounds = os.environ.get("BENCH_ROUNDS", "5")
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    des_python = os.environ.get("BENCH_DES_PYTHON", str(ROOT / "bench" / ".venv-des" / "bin" / "python"))
    run_id = f"{os.getpid()}_{int(time.time())}"
    servers = {
        "postgresql": (os.environ.get("BENCH_PG_HOST", "127.0.0.1"), int(os.environ.get("BENCH_PG_PORT", "5432"))),
        "mysql": (os.environ.get("BENCH_MYSQL_HOST", "127.0.0.1"), int(os.environ.get("BENCH_MYSQL_PORT", "3306"))),
    }
    rabbit = rabbitmq_version(amqp)
    if rabbit is None:
        print(f"bench: RabbitMQ is not reachable at {amqp} (set BENCH_AMQP_URI)", file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    failures = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbevents-bench-") as tmp:
        for db in databases:
            if db in servers and not reachable(*servers[db]):
                print(f"bench: {DB_TITLES[db]} is not reachable at {servers[db][0]}:{servers[db][1]}", file=sys.stderr)
                failures += 1
                continue
            for lib in libs:
                python = sys.executable if lib == "dbevents" else des_python
                if not Path(python).exists():
                    print(f"bench: no {python} for {LIB_TITLES[lib]} (`make bench` creates it)", file=sys.stderr)
                    failures += 1
                    continue
                out = Path(tmp) / f"{lib}-{db}.json"
                env = {
                    **os.environ, "BENCH_LIB": lib, "BENCH_DB": db, "BENCH_AMQP_URI": amqp,
                    "BENCH_SERVICE": f"dbevents_bench_{run_id}_{lib}_{db}",
                    "BENCH_SQLITE_PATH": str(Path(tmp) / f"{lib}.sqlite3"),
                    "PYTHONPATH": str(ROOT),
                }
                cmd = [python, "-m", "bench.worker", "--out", str(out), "--rounds", rounds]
                if lib == "dbevents" and db in memory_dbs:
                    cmd.append("--memory")
                print(f"bench: {LIB_TITLES[lib]} on {DB_TITLES[db]} ...", file=sys.stderr, flush=True)
                t = time.monotonic()
                proc = subprocess.run(cmd, cwd=ROOT, env=env)
                if proc.returncode != 0 or not out.exists():
                    print(f"bench: the {lib}/{db} worker failed (exit {proc.returncode})", file=sys.stderr)
                    failures += 1
                    continue
                data = json.loads(out.read_text())
                data["wall"] = time.monotonic() - t
                results.append(data)
    markdown = render(results, rabbit, time.monotonic() - started)
    print(markdown)
    output = Path(os.environ.get("BENCH_OUTPUT", ROOT / "bench" / "RESULTS.md"))
    output.write_text(markdown)
    print(f"bench: written to {output}", file=sys.stderr)
    failed = [w for r in results for w in r["workloads"] if w["failed"]]
    return 1 if failures or failed else 0


def rabbitmq_version(uri: str) -> str | None:
    try:
        from kombu import Connection

        with Connection(uri, connect_timeout=5) as conn:
            conn.connect()
            props = conn.connection.server_properties
            version = props.get("version")
            return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 -- any failure means: not usable
        return None


# ------------------------------------------------------------------------------ rendering

def fmt_time(seconds: float, ops: int, unit: str) -> str:
    per = seconds / ops * 1e6
    if unit == "op":
        return f"{per:,.0f} µs/op" if per >= 100 else f"{per:,.1f} µs/op"
    total = f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:,.1f} ms"
    return f"{total} ({per:,.1f} µs/row)"


def fmt_ratio(w: dict[str, Any]) -> str:
    # Reads are judged against 1.03x: two decimals would show 1.034 as "1.03x, missed".
    d = 3 if w["key"] == "reads" else 2
    return f"{w['ratio']:.{d}f}x ({w['ratio_min']:.{d}f}–{w['ratio_max']:.{d}f})"


def fmt_delivered(w: dict[str, Any]) -> str:
    if not w["rows_written"]:
        return "—"
    got = sorted(set(w["delivered"]))
    shown = "/".join(f"{g:,}" for g in got)
    return f"{shown} of {w['rows_written']:,}"


def fmt_rate(w: dict[str, Any]) -> str:
    if not w["e2e_seconds"]:
        return "—"
    return f"{w['expected'] / w['e2e_seconds']:,.0f} ev/s ({w['e2e_seconds'] * 1000:,.0f} ms)"


def target(w: dict[str, Any], db: str) -> tuple[str, str]:
    """(target, verdict) of a dbevents row."""
    if w["failed"]:
        return _target_text(w, db), "**FAILED**"
    limit = _ratio_target(w, db)
    if limit is not None:
        return f"≤ {limit:.2f}x", "met" if w["ratio"] <= limit else "**missed**"
    if w["key"] in RATE_TARGETED and db in RATE_DBS:
        rate = w["expected"] / w["e2e_seconds"] if w["e2e_seconds"] else 0
        return f"≥ {BULK_RATE_TARGET:,} ev/s", "met" if rate >= BULK_RATE_TARGET else "**missed**"
    return "—", ""


def _ratio_target(w: dict[str, Any], db: str) -> float | None:
    return RATIO_TARGETS_BY_DB.get(db, {}).get(w["key"], RATIO_TARGETS.get(w["key"]))


def _target_text(w: dict[str, Any], db: str) -> str:
    limit = _ratio_target(w, db)
    if limit is not None:
        return f"≤ {limit:.2f}x"
    if w["key"] in RATE_TARGETED and db in RATE_DBS:
        return f"≥ {BULK_RATE_TARGET:,} ev/s"
    return "—"


def render(results: list[dict[str, Any]], rabbit: str, wall: float) -> str:
    lines: list[str] = []
    first = results[0] if results else {"versions": {}, "rounds": "?", "quick": False}
    v = first["versions"]
    dbs = {r["db"]: r["versions"].get("database", "") for r in results}
    dbe = next((r for r in results if r["lib"] == "dbevents"), None)
    des = next((r for r in results if r["lib"] == "des"), None)
    lines.append(f"Generated by `make bench` on {time.strftime('%Y-%m-%d')} at commit {commit()}, in {wall / 60:.1f} min"
                 f"{' (BENCH_QUICK: smaller workloads)' if first.get('quick') else ''}. Medians of "
                 f"{first['rounds']} rounds ({first.get('bulk_rounds', first['rounds'])} for the 10,000-row "
                 "workloads; reads: 5 measurements a round, each alternating the two sides over 40 slices), the two "
                 "sides alternating; ratios are medians "
                 "of the per-round ratios. Times are of the operation in the application thread; \"end to "
                 "end\" runs from its start until the consumer counted the last event.")
    lines.append("")
    lines.append(f"- Machine: {machine()}")
    lines.append(f"- Servers on the same machine: {', '.join(dbs[d] for d in dbs)}; RabbitMQ {rabbit}")
    lines.append(f"- Python {v.get('python')}, Django {v.get('django')}, DRF {v.get('djangorestframework')}, "
                 f"kombu {v.get('kombu')}"
                 + (f", nameko {dbe['versions'].get('nameko')}, dbevents {dbe['versions'].get('dbevents')}" if dbe else "")
                 + (f", django-events-sourcing {des['versions'].get('django-events-sourcing')}" if des else ""))
    if dbe:
        lines.append(f"- dbevents delivery mode: `DBEVENTS_DELIVERY` = {dbe['versions'].get('delivery')}")
    lines.append("")
    for db in dict.fromkeys(r["db"] for r in results):
        here = {r["lib"]: r for r in results if r["db"] == db}
        lines.append(f"### {DB_TITLES[db]} ({dbs[db]})")
        lines.append("")
        if "dbevents" in here and "des" in here:
            lines += side_by_side(here["dbevents"], here["des"])
        if "dbevents" in here:
            lines += dbevents_table(here["dbevents"], db)
        if "des" in here:
            lines += des_table(here["des"])
        if "dbevents" in here and here["dbevents"].get("relay"):
            lines += relay_table(here["dbevents"]["relay"], db)
        if "dbevents" in here and here["dbevents"].get("memory"):
            lines += memory_table(here["dbevents"]["memory"])
    return "\n".join(lines).rstrip() + "\n"


def side_by_side(dbe: dict[str, Any], des: dict[str, Any]) -> list[str]:
    by_key = {w["key"]: w for w in des["workloads"]}
    out = [
        "Side by side (each library against itself off: the stock engine for dbevents, "
        "`disable_dispatcher()` for django-events-sourcing):",
        "",
        "| workload | dbevents ratio | dbevents events | django-events-sourcing ratio | django-events-sourcing events |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w in dbe["workloads"]:
        d = by_key.get(w["key"])
        dr = "—" if d is None else ("FAILED" if d["failed"] else fmt_ratio(d).split(" ")[0])
        dd = "—" if d is None else fmt_delivered(d) + (" (not seen)" if d["rows_written"] and not max(d["delivered"]) else "")
        wr = "FAILED" if w["failed"] else fmt_ratio(w).split(" ")[0]
        out.append(f"| {w['title']} | {wr} | {fmt_delivered(w)} | {dr} | {dd} |")
    return [*out, ""]


def dbevents_table(r: dict[str, Any], db: str) -> list[str]:
    out = [
        f"dbevents against the stock engine (delivery: {r['versions'].get('delivery')}):",
        "",
        "| workload | stock engine | dbevents engine | ratio: median (min–max) | events delivered | end to end | target | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in r["workloads"]:
        tgt, verdict = target(w, db)
        ratio = "FAILED" if w["failed"] else fmt_ratio(w)
        out.append(
            f"| {w['title']} | {fmt_time(w['base_seconds'], w['ops'], w['unit'])} | "
            f"{fmt_time(w['other_seconds'], w['ops'], w['unit'])} | {ratio} | {fmt_delivered(w)} | "
            f"{fmt_rate(w)} | {tgt} | {verdict} |"
        )
    out.append("")
    ceiling = [f"{w['key']} {w['ops'] / w['base_seconds']:,.0f} rows/s" for w in r["workloads"] if w["key"] in BULK]
    if ceiling:
        out += [f"The stock engine alone writes (no events): {', '.join(ceiling)} — the ceiling of the bulk "
                "paths' end-to-end rate.", ""]
    fails = [f"{w['key']}: {p}" for w in r["workloads"] for p in dict.fromkeys(w["failed"])]
    if fails:
        out += ["Failures:", ""] + [f"- {f}" for f in fails] + [""]
    return out


def des_table(r: dict[str, Any]) -> list[str]:
    out = [
        "django-events-sourcing 0.8 against its own `disable_dispatcher()` (stock engine):",
        "",
        "| workload | disabled | enabled | ratio: median (min–max) | events delivered / rows written | end to end |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w in r["workloads"]:
        ratio = "FAILED" if w["failed"] else fmt_ratio(w)
        delivered = fmt_delivered(w)
        if w["rows_written"] and not w["signal_based"]:
            delivered += " (not seen)"
        out.append(
            f"| {w['title']} | {fmt_time(w['base_seconds'], w['ops'], w['unit'])} | "
            f"{fmt_time(w['other_seconds'], w['ops'], w['unit'])} | {ratio} | {delivered} | {fmt_rate(w)} |"
        )
    return [*out, ""]


def relay_table(r: dict[str, Any], db: str) -> list[str]:
    rate = r["delivered"] / r["e2e"] if r.get("e2e") else 0
    targeted = db in RATE_DBS
    verdict = ("met" if rate >= BULK_RATE_TARGET else "**missed**") if targeted else ""
    return [
        f"`dbevents_relay --once` draining a backlog of {r['backlog']:,} events (updates of {r['rows']:,} rows, "
        "written while the broker refused them), from its start to the last event at the consumer:",
        "",
        "| events delivered | relay run | rate | target | |",
        "| --- | --- | --- | --- | --- |",
        f"| {r['delivered']:,} of {r['backlog']:,} | {r['relay_seconds']:.2f} s | {rate:,.0f} ev/s | "
        f"{f'≥ {BULK_RATE_TARGET:,} ev/s' if targeted else '—'} | {verdict} |",
        "",
    ]


def memory_table(m: dict[str, Any]) -> list[str]:
    runs = m.get("runs") or [m]
    sizes = " and ".join(f"{r['rows']:,}" for r in runs)
    out = [
        f"`QuerySet.update()` of {sizes} rows, each engine in a fresh process (peak RSS growth over the RSS "
        "just before the statement, until the events were handed over):",
        "",
        "| engine | rows | statement | until handed over | peak RSS growth | per row | events delivered | target | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    growths = []
    for run in runs:
        for alias, name in (("default", "stock"), ("events", "dbevents")):
            res = run.get(alias)
            if not res:
                continue
            if "error" in res:
                out.append(f"| {name} | {run['rows']:,} | **FAILED**: {res['error'][-200:]!r} | | | | | | |")
                continue
            growth = (res["peak_kb"] - res["baseline_kb"]) / 1024
            delivered = f"{res['delivered']:,} of {run['rows']:,}" if alias == "events" else "—"
            tgt = verdict = ""
            if alias == "events":
                growths.append(growth)
                if run is runs[-1]:
                    ok = res["complete"] and growth <= MEMORY_TARGET_MIB
                    tgt, verdict = f"completes, ≤ {MEMORY_TARGET_MIB} MiB", "met" if ok else "**missed**"
            out.append(
                f"| {name} | {run['rows']:,} | {res['statement_seconds']:.2f} s | {res['handed_over_seconds']:.2f} s | "
                f"{growth:,.1f} MiB | {res['growth_per_row']:,.0f} B | {delivered} | {tgt} | {verdict} |"
            )
    if len(growths) > 1 and growths[0] > 0:
        ratio = growths[-1] / growths[0]
        out += ["", f"Largest vs smallest run (dbevents): {ratio:.2f}x the peak RSS growth for "
                    f"{runs[-1]['rows'] / runs[0]['rows']:.0f}x the rows (target ≤ {MEMORY_SCALING}x): "
                    f"{'met' if ratio <= MEMORY_SCALING else '**missed**'}."]
    return [*out, ""]


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=True)
        return f"`{out.stdout.strip()}`"
    except (OSError, subprocess.CalledProcessError):
        return "(unknown)"


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    osname = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem}, {osname} (Linux {platform.release()})"


if __name__ == "__main__":
    sys.exit(main())
