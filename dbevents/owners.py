"""Who holds an outbox lease: the names written to ``lease_owner`` and how a relay tells that
the process behind one is gone (so that its rows are taken within seconds, not after
``DBEVENTS_OUTBOX_LEASE``).

A name carries the host and the process id, and the identity of the process-id namespace: on
Kubernetes a relay in a sidecar shares the pod's host name but not its pids, and must not take
the leases of live web workers it cannot see.
"""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def _pid_namespace() -> str:
    """The inode of this process's pid namespace (Linux), or "" where it cannot be read."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def process_owner() -> str:
    """The lease owner written on the rows this process commits: ``commit:<host>:<pid>@<ns>``."""
    return f"commit:{socket.gethostname()}:{os.getpid()}@{_pid_namespace()}"[:100]


def default_worker_id() -> str:
    """A relay's name when ``--worker-id`` is not given: ``relay:<host>:<pid>@<ns>``."""
    return f"relay:{socket.gethostname()}:{os.getpid()}@{_pid_namespace()}"


def owner_is_dead(owner: str) -> bool:
    """Whether the lease owner ``owner`` (a :func:`process_owner` or :func:`default_worker_id`,
    possibly followed by ``:<claim token>``) is a process of this host and pid namespace that no
    longer exists. Unknown owners, other hosts or namespaces and processes we may not signal
    count as alive: their rows wait for their lease."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] not in ("commit", "relay") or parts[1] != socket.gethostname():
        return False
    pid, _, namespace = parts[2].partition("@")
    if not namespace or namespace != _pid_namespace() or not pid.isdigit():
        return False
    if int(pid) == os.getpid() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:   # EPERM: it exists, under another user
        return False
    return False
