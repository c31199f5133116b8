"""``manage.py dbevents_relay``: publish what is left in the outbox, until stopped."""

from __future__ import annotations

import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dbevents.checks import configuration_errors
from dbevents.relay import Relay, chosen_aliases

# What the relay cannot publish without: a broker URI that parses and a transport to import.
# Every other check concerns capture (MODELS_CRUD_EVENT, serializers), not the rows already in
# the outbox, so the relay runs on and reports them as warnings.
FATAL = frozenset({"dbevents.E007", "dbevents.E015", "dbevents.E016"})


class Command(BaseCommand):
    help = (
        "Publish the events left in the dbevents outbox (broker was down, a process died before "
        "the broker confirmed), in order, with retries and back-off; several relays may run at once. "
        "Stops cleanly on SIGTERM or SIGINT after the batch in hand."
    )
    # The relay is the safety net: a system-check error elsewhere (a bad MODELS_CRUD_EVENT entry,
    # a missing serializer) must not stop it while web processes keep filling the outbox.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Relay this database's outbox (repeatable; default: every database with a "
                                 "dbevents ENGINE).")
        parser.add_argument("--once", action="store_true",
                            help="Exit when nothing is left to publish (for cron jobs and deploy hooks).")
        parser.add_argument("--worker-id", help="Name of this relay in the rows it leases. A relay restarted "
                                                "with the same id takes back its leases at once (default: "
                                                "relay:<host>:<pid>@<pid namespace>).")
        parser.add_argument("--batch-size", type=int, default=1000, help="Rows claimed per batch (default 1000).")
        parser.add_argument("--idle", type=float, default=1.0,
                            help="Seconds to sleep when the outbox is empty (default 1).")
        parser.add_argument("--cleanup-interval", type=float, default=300.0,
                            help="Seconds between deletions of sent rows older than DBEVENTS_OUTBOX_RETENTION "
                                 "(default 300).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            aliases = chosen_aliases(options["databases"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size {options['batch_size']}: must be at least 1.")
        if not aliases:
            raise CommandError("No database uses a dbevents ENGINE, so there is no outbox to relay.")
        found = configuration_errors()
        fatal = [m for m in found if m.id in FATAL]
        if fatal:
            raise CommandError("cannot publish: " + "; ".join(f"{m.msg} ({m.id}; {m.hint})" for m in fatal))
        for m in found:
            self.stderr.write(f"warning: {m.msg} ({m.id}: the relay runs on; fix it for capture. {m.hint})")
        relay = Relay(aliases, worker_id=options["worker_id"], batch_size=options["batch_size"],
                      idle=options["idle"], cleanup_interval=options["cleanup_interval"])
        if not logging.getLogger("dbevents").handlers and not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO if options["verbosity"] > 1 else logging.WARNING,
                                format="%(asctime)s %(levelname)s %(message)s")

        def on_signal(signum: int, frame: Any) -> None:
            self.stderr.write(f"dbevents relay {relay.worker_id}: {signal.Signals(signum).name}, finishing the "
                              "batch in hand")
            relay.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if options["verbosity"] > 0:
            self.stdout.write(f"dbevents relay {relay.worker_id}: relaying {', '.join(aliases)}")
        relay.run(once=options["once"])
        if options["verbosity"] > 0:
            self.stdout.write(f"dbevents relay {relay.worker_id}: stopped; published {relay.published} event(s), "
                              f"{relay.returned} returned unroutable, {relay.failed} failed event publish attempt(s)")
        if options["once"] and relay.left:
            raise CommandError(f"{relay.left} event(s) still pending: the broker did not take them after "
                               "DBEVENTS_PUBLISH_RETRIES attempts (see dbevents_status)", returncode=1)
