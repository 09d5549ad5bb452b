"""What ``tunelab studio`` and ``tunelab serve`` check before any route runs: the ``Host`` header against an
allow-list (DNS rebinding) and the size of the request body.

DNS rebinding: a page on an attacker's domain re-points that domain at 127.0.0.1; the browser then sends the page's
requests to a server on this machine as same-origin requests, with the attacker's name in ``Host`` (and a matching
``Origin``). Answering only the names this server is known by stops it, whatever ``Origin`` says. An IP-address
literal in ``Host`` cannot be rebound: it is accepted when the server listens on every address (0.0.0.0 or ::).

This module must not import torch: the studio uses it too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.errors import TunelabError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost is not trusted to be)."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, secret: str | None, what: str, lacking: str, field: str, hint: str) -> None:
    """Refuse to listen beyond this machine without a secret: anyone who can reach the port could use it.

    Args:
        host: the address to listen on.
        secret: the API key or password (None or empty: none).
        what: what is served ("the studio").
        lacking: the secret, as the message names it ("a password").
        field: the option or field that set ``host``.
        hint: how to fix it.

    Raises:
        TunelabError: for a non-loopback host without a secret.
    """
    if not secret and not is_loopback(host):
        raise TunelabError(f"refusing to serve {what} on {host} without {lacking}", field=field, hint=hint)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6]:port`` as ``(lower-case name without brackets or trailing dot, port)``; None when it
    is not a host at all (a URL, a path, spaces, a bad port)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        if not _is_ip(name) or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:  # a bare IPv6 address (only in our own options: Host headers bracket it)
        name, port_text = value, None
        if not _is_ip(name):
            return None
    else:
        name, _, port_text = value.partition(":")
        port_text = port_text if ":" in value else None
        name = name.rstrip(".")
        if not (_NAME.match(name) or _is_ip(name)):
            return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


class HostAllowList:
    """The names a server answers to: loopback names and addresses (any port), the address it was bound to, and those
    given with ``--allowed-host`` (``name`` for any port, ``name:port`` for one; ``*`` turns the check off).

    Args:
        bind_host: the ``--host`` the server listens on.
        extra: the ``--allowed-host`` values.

    Raises:
        TunelabError: for an ``--allowed-host`` value that is not a host name or address.
    """

    def __init__(self, bind_host: str = "127.0.0.1", extra: Iterable[str] = ()):
        self.entries: set[tuple[str, int | None]] = {(name, None) for name in LOOPBACK_NAMES}
        self.any_host = False
        bind = bind_host.strip().strip("[]").lower()
        self.any_address = bind in WILDCARD_BINDS
        if not self.any_address:
            parsed = split_host(bind)
            if parsed is not None:
                self.entries.add((parsed[0], None))
        for value in extra:
            if value.strip() == "*":
                self.any_host = True
                continue
            parsed = split_host(value)
            if parsed is None:
                raise TunelabError(
                    f"'{value}' is not a host name or address",
                    field="--allowed-host",
                    hint="give a name as the browser's address bar shows it, e.g. studio.lan or studio.lan:7860",
                )
            self.entries.add(parsed)

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        parsed = split_host(header or "")
        if parsed is None:
            return False
        name, port = parsed
        if is_loopback(name) or (name, None) in self.entries or (name, port) in self.entries:
            return True
        return self.any_address and _is_ip(name)

    def names(self) -> str:
        """The allowed names, for messages."""
        shown = sorted(f"[{n}]" if ":" in n else n for n, p in self.entries if p is None)
        shown += sorted(f"{f'[{n}]' if ':' in n else n}:{p}" for n, p in self.entries if p is not None)
        if self.any_address:
            shown.append("any IP address")
        return ", ".join(shown)


class BodyTooLarge(HTTPException):
    """Raised from the request body's ``receive`` once a body without ``Content-Length`` passes the limit, to stop
    the app reading; the 413 has been sent already."""


def too_large_message(limit: int, note: str) -> str:
    return f"the request body is larger than the limit of {limit / 2**20:.3g} MB ({note})"


class RequestGuard:
    """ASGI middleware, outermost: a ``Host`` not on the allow-list gets 400, a body over the limit 413, before any
    route, password check or body parsing runs.

    Args:
        app: the application.
        hosts: the allowed hosts.
        body_limit: the most bytes a request body may have, for a scope (None: no limit here, e.g. a route that
            enforces its own).
        refuse: makes the error response, in the app's own error shape: ``refuse(status, message)``.
        limit_option: what sets the limit, in the 413 message (e.g. 'set by --max-request-mb').
    """

    def __init__(
        self,
        app: ASGIApp,
        hosts: HostAllowList,
        body_limit: Callable[[Scope], int | None],
        refuse: Callable[[int, str], Response],
        limit_option: str,
    ):
        self.app, self.hosts, self.body_limit, self.refuse, self.option = app, hosts, body_limit, refuse, limit_option

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if not self.hosts.allows(host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            message = (
                f"the Host '{host}' is not one this server answers to ({self.hosts.names()}); "
                "to reach it under another name, start it with --allowed-host NAME"
                if host
                else "the request has no Host header"
            )
            await self.refuse(400, message)(scope, receive, send)
            return
        limit = self.body_limit(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        message = too_large_message(limit, self.option)
        if declared.isdigit() and int(declared) > limit:
            # Answered without reading a byte of the body: the server discards it as it arrives.
            await self.refuse(413, message)(scope, receive, send)
            return
        await self._limited(scope, receive, send, limit, message)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int, message: str) -> None:
        """A body without (or with a lying) Content-Length: counted as it arrives and, once past the limit, answered
        413 from here; whatever the app does after that (an error of its own, a response) is dropped."""
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    if not started and not refused:
                        refused = True
                        await self.refuse(413, message)(scope, receive, send)
                    raise BodyTooLarge(413, message)
            return event

        async def watching_send(event: Message) -> None:
            nonlocal started
            if refused:
                return
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not refused:  # the app's own failure: not ours to hide
                raise


def add_request_guard(
    app: Any, hosts: HostAllowList, body_limit: Callable[[Scope], int | None], refuse: Any, limit_option: str
) -> None:
    """Install ``RequestGuard`` as the outermost middleware of a FastAPI app: add it after every other middleware."""
    app.add_middleware(RequestGuard, hosts=hosts, body_limit=body_limit, refuse=refuse, limit_option=limit_option)
