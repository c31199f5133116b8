"""``manage.py dbevents_status``: the state of the outbox, for people and for monitoring."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dbevents import status
from dbevents.checks import configuration_errors
from dbevents.relay import chosen_aliases


class Command(BaseCommand):
    help = ("Show the dbevents outbox per database: pending events, age of the oldest, rows being retried and "
            "the last error, unroutable and sent rows. Exits with status 2 when --max-age or --max-pending "
            "is exceeded.")
    # Status must report even when the configuration is broken: that is when it is needed.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Only this database (repeatable).")
        parser.add_argument("--json", action="store_true", help="Print JSON (one object per database).")
        parser.add_argument("--max-age", type=float, metavar="SECONDS",
                            help="Exit 2 when the oldest pending event is older than this.")
        parser.add_argument("--max-pending", type=int, metavar="N",
                            help="Exit 2 when more than N events are pending.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            aliases = chosen_aliases(options["databases"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        rows = [status.stats(alias) for alias in aliases]
        for m in configuration_errors():
            self.stderr.write(f"configuration error: {m.msg} ({m.id}; {m.hint})")
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
        else:
            for s in rows:
                age = "-" if s["oldest_pending_age"] is None else f"{s['oldest_pending_age']:.1f}s"
                self.stdout.write(
                    f"{s['alias']}: pending {s['pending']} (oldest {age}, leased {s['leased']}, "
                    f"retrying {s['retrying']}, most attempts {s['max_attempts']}); "
                    f"sent {s['sent']}; unroutable {s['unroutable']}; dead {s['dead']}"
                )
                if s["last_error"]:
                    self.stdout.write(f"  last error: {s['last_error']}")
                if s["last_dead_error"]:
                    self.stdout.write(f"  last dead: {s['last_dead_error']}")
        problems = []
        for s in rows:
            if options["max_age"] is not None and (s["oldest_pending_age"] or 0) > options["max_age"]:
                problems.append(f"{s['alias']}: oldest pending event is {s['oldest_pending_age']:.0f}s old "
                                f"(--max-age {options['max_age']:g})")
            if options["max_pending"] is not None and s["pending"] > options["max_pending"]:
                problems.append(f"{s['alias']}: {s['pending']} events pending (--max-pending {options['max_pending']})")
        if problems:
            self.stderr.write("; ".join(problems))
            raise SystemExit(2)
