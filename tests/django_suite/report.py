"""Counters of one test process, written to ``$DBEVENTS_SUITE_REPORT_DIR/<pid>.json`` as they
change (the test runner's worker processes end with ``os._exit``: no atexit hook runs)."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from typing import Any

_lock = threading.Lock()
_counters: dict[str, Counter[str]] = {"events": Counter(), "built": Counter(), "logs": Counter()}
_values: dict[str, Any] = {}


def _forked() -> None:
    # A worker process starts with counters of its own (the parent writes its own file), and
    # with a fresh lock: the parent's publisher thread may have held it at fork time.
    global _lock
    _lock = threading.Lock()
    for counter in _counters.values():
        counter.clear()


os.register_at_fork(after_in_child=_forked)


def add(kind: str, key: str) -> None:
    with _lock:
        _counters[kind][key] += 1
        _write()


def set_value(name: str, value: Any) -> None:
    with _lock:
        _values[name] = value
        _write()


def _write() -> None:
    folder = os.environ.get("DBEVENTS_SUITE_REPORT_DIR")
    if not folder:
        return
    path = os.path.join(folder, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**{k: dict(v) for k, v in _counters.items()}, **_values}, f)
    os.replace(path + ".tmp", path)


def merge(folder: str) -> dict[str, Any]:
    """The counters of every process that wrote to ``folder``, added up."""
    total: dict[str, Counter[str]] = {"events": Counter(), "built": Counter(), "logs": Counter()}
    registered = 0
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                data = json.load(f)
            for kind in total:
                total[kind].update(data.get(kind, {}))
            registered = max(registered, data.get("registered", 0))
    return {**total, "registered": registered}
