"""The test suite's network guard: an audit hook (``sys.addaudithook``) on socket connections and name look-ups.

:func:`install` adds a hook that refuses (``NetworkRefused``, a ``ConnectionRefusedError``) every attempt that
:func:`attempt` describes, and hands the description to ``record`` first, so a caller that swallows the error is
still caught. ``tests/conftest.py`` installs it with ``allow_local=True`` for every test (loopback addresses,
``localhost``, this machine's own hostname and unix sockets stay allowed: Ray and multiprocessing use them);
``tests/test_offline.py`` installs it with ``allow_local=False`` in fresh interpreters, where even a look-up of
``localhost`` is logged. Audit hooks cannot be removed, so the hook asks ``active()`` on every event.

Only the standard library is imported here: a test's child interpreter imports this module first.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any, Callable

ADDRESS_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}  # args: (socket, address)
LOOKUP_EVENTS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
EVENTS = ADDRESS_EVENTS | LOOKUP_EVENTS
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", socket.gethostname().lower()}


class NetworkRefused(ConnectionRefusedError):
    """A test tried to reach the network."""


def is_local(host: Any) -> bool:
    """Whether ``host`` (a name, an IP literal, or None for the wildcard) stays on this machine."""
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%")[0].lower()
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def attempt(event: str, args: tuple, allow_local: bool) -> str | None:
    """A one-line description of the network access an audit event tries, or None when it is none (unix
    sockets, other events) or a local one and ``allow_local``."""
    if event not in EVENTS:
        return None
    if event in ADDRESS_EVENTS:
        if getattr(args[0], "family", None) == socket.AF_UNIX:
            return None  # a local socket file, not the network
        address = args[1] if len(args) > 1 else None
        host = address[0] if isinstance(address, tuple) and address else address
        shown = args[1:]
    else:
        host = args[0] if args else None
        shown = args
    if allow_local and is_local(host):
        return None
    return f"{event} {shown!r}"


def install(record: Callable[[str], None], allow_local: bool, active: Callable[[], bool] = lambda: True) -> None:
    """Add the audit hook: while ``active()``, every network attempt is passed to ``record`` and refused."""

    def hook(event: str, args: tuple) -> None:
        if event not in EVENTS or not active():
            return
        what = attempt(event, args, allow_local)
        if what is not None:
            record(what)
            raise NetworkRefused(f"network access refused by the test suite's guard: {what}")

    sys.addaudithook(hook)
