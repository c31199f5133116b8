"""Where the time goes on the dbevents side: ``python -m bench.profile [workload ...]`` runs each
workload once untimed, then once through the dbevents alias under yappi (wall clock, every
thread: the request thread and the publisher), from the statement until ``publisher.wait()``
returns. Reports go to ``bench/profiles/<db>-<workload>.txt``; ``BENCH_DB`` picks the database,
``BENCH_QUICK`` and ``BENCH_DELIVERY`` work as for ``bench/run.py``. ``make bench-profile``
installs yappi (into the development virtualenv only: it is no dependency of the package).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "profiles"


def main() -> None:
    os.environ["BENCH_LIB"] = "dbevents"
    os.environ.setdefault("BENCH_SERVICE", f"dbevents_bench_profile_{os.getpid()}")
    import yappi
    from django.conf import settings

    from bench.consumer import Consumer
    from bench.worker import build

    suite = build()
    # A bound queue: the publisher makes events mandatory, unroutable ones are logged as lost.
    consumer = Consumer(settings.AMQP_URI, settings.SERVICE_NAME)
    wanted = sys.argv[1:] or ["creates", "saves", "update", "bulk_create", "bulk_update"]
    side = suite.variants[1]
    OUT.mkdir(exist_ok=True)
    try:
        for w in suite.workloads:
            if w.key not in wanted:
                continue
            w.run(side.alias, w.setup(side.alias))   # warm-up
            suite.settle(120)
            state = w.setup(side.alias)
            yappi.clear_stats()
            yappi.set_clock_type("wall")
            yappi.start(builtins=False)
            t0 = time.monotonic()
            w.run(side.alias, state)
            t1 = time.monotonic()
            suite.settle(300)
            t2 = time.monotonic()
            yappi.stop()
            buf = io.StringIO()
            buf.write(f"# {w.title} on {suite.db} through dbevents\n")
            buf.write(f"# statement(s): {t1 - t0:.3f} s; until publisher.wait() returned: {t2 - t0:.3f} s\n\n")
            for thread in yappi.get_thread_stats():
                stats = yappi.get_func_stats(ctx_id=thread.id)
                if not stats:
                    continue
                buf.write(f"## thread {thread.name} (id {thread.id}): {thread.ttot:.3f} s\n")
                for sort in ("ttot", "tsub"):
                    buf.write(f"\n### top 30 by {sort}\n")
                    stats.sort(sort, "desc")
                    stats.print_all(out=buf, columns={
                        0: ("name", 90), 1: ("ncall", 10), 2: ("tsub", 8), 3: ("ttot", 8), 4: ("tavg", 8)})
                    # print_all prints everything; keep the head only
                buf.write("\n")
            text = _trim(buf.getvalue())
            path = OUT / f"{suite.db}-{w.key}.txt"
            path.write_text(text)
            print(f"{w.key}: statement(s) {t1 - t0:.3f} s, handed over after {t2 - t0:.3f} s -> {path}")
    finally:
        consumer.stop()
        suite.drop()


def _trim(text: str, keep: int = 32) -> str:
    """yappi prints every function; keep the first ``keep`` lines of each table."""
    out, count = [], None
    for line in text.splitlines():
        if line.startswith("### "):
            count = 0
        elif line.startswith("## ") or line.startswith("# "):
            count = None
        if count is not None:
            count += 1
            if count > keep and line.strip():
                continue
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
