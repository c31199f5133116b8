"""A fresh process that runs one ``QuerySet.update()`` over every ``benchapp_child`` row through
``argv[1]``'s alias and prints, as JSON, its RSS just before the statement and its peak RSS
until the events were handed to the broker (``VmHWM``, reset to the current RSS first)."""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    alias = sys.argv[1]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.db.models import F

    from bench.benchapp.models import Child

    rows = Child.objects.using(alias).count()
    first = Child.objects.using(alias).order_by("pk").values_list("pk", flat=True)[0]

    def wait() -> None:
        if alias != "default":
            from dbevents import publisher

            publisher.wait(600)

    # Warm-up: imports (DRF, nameko, kombu), the broker connection, the serializer class.
    Child.objects.using(alias).filter(pk=first).update(value=F("value"))
    wait()
    gc.collect()
    baseline = status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    t0 = time.monotonic()
    Child.objects.using(alias).update(value=F("value") + 1)
    t1 = time.monotonic()
    wait()
    t2 = time.monotonic()
    peak = status_kb("VmHWM")
    print(json.dumps({
        "alias": alias, "rows": rows, "baseline_kb": baseline, "peak_kb": peak, "hwm_reset": reset,
        "growth_per_row": (peak - baseline) * 1024 / rows, "statement_seconds": t1 - t0,
        "handed_over_seconds": t2 - t0, "t0": t0,
    }))


if __name__ == "__main__":
    main()
