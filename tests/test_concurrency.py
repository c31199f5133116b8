"""The events of a statement are exactly the rows it changed, also while another connection
inserts rows matching its WHERE clause at the same time (PostgreSQL, MariaDB)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections

from dbevents.testing import capture_events
from tests.shop.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def test_filtered_update_events_equal_changed_rows_under_concurrent_inserts():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has a single writer: no concurrent inserts to race with")
    Counter.objects.bulk_create([Counter(value=0) for _ in range(200)])
    stop = threading.Event()
    writing = threading.Event()
    inserted = []

    def writer():
        try:
            while not stop.is_set():
                Counter.objects.bulk_create([Counter(value=0) for _ in range(5)])
                inserted.append(5)
                writing.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    rounds = {}
    try:
        assert writing.wait(10), "the writer thread did not start"
        round_no = 0
        deadline = time.monotonic() + 20
        # At least 30 updates, and until the writer has raced with them for a while.
        while round_no < 30 or (sum(inserted) <= 100 and time.monotonic() < deadline):
            round_no += 1
            with capture_events() as events:
                changed = Counter.objects.filter(value=0).update(value=round_no)
            rounds[round_no] = (changed, {e.pk for e in events})
    finally:
        stop.set()
        thread.join()
    assert sum(inserted) > 30, "the writer must have raced with the updates"
    for round_no, (changed, event_pks) in rounds.items():
        rows = set(Counter.objects.filter(value=round_no).values_list("pk", flat=True))
        assert event_pks == rows, f"round {round_no}: events {len(event_pks)} vs rows changed {len(rows)}"
        assert changed == len(rows)
