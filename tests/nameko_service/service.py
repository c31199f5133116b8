"""A nameko service that records the ``test_service`` customer events it receives.

Run by tests/test_nameko_service.py with ``nameko run``. Environment:

- ``DBEVENTS_TEST_SERVICE_NAME``: the service's name (fresh per test run, so its queues are too);
- ``DBEVENTS_TEST_OUTPUT``: the file each event is appended to as one JSON line
  ``{"event": <name>, "payload": <payload>}``.
"""

import json
import os

from nameko.events import event_handler


def _record(event: str, payload: object) -> None:
    with open(os.environ["DBEVENTS_TEST_OUTPUT"], "a") as f:
        f.write(json.dumps({"event": event, "payload": payload}) + "\n")
        f.flush()


class CustomerListener:
    name = os.environ.get("DBEVENTS_TEST_SERVICE_NAME", "dbevents_test_listener")

    @event_handler("test_service", "customer__created")
    def on_created(self, payload: object) -> None:
        _record("customer__created", payload)

    @event_handler("test_service", "customer__updated")
    def on_updated(self, payload: object) -> None:
        _record("customer__updated", payload)
