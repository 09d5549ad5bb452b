"""The studio's password: a login form that sets a signed cookie, or HTTP Basic for scripts; every page and every API
call needs one of them when a password is set. Wrong passwords, by either way, are throttled per client address."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

COOKIE = "tunelab_studio"
SESSION_S = 7 * 24 * 3600
OPEN_PATHS = ("/login", "/favicon.ico")
MAX_CLIENTS = 10_000  # throttle records kept; beyond this, the stalest are forgotten


class LockedOut(Exception):
    """Too many wrong passwords from one client address: no password is checked for ``retry_after`` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"locked out for {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Client:
    failures: int = 0  # wrong passwords in a row
    last_failure: float = 0.0
    locked_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LoginThrottle:
    """Slows password guessing, per client address, for the login form and HTTP Basic alike.

    Each wrong password is answered only after a delay that doubles with every wrong one in a row (``delay_s``,
    2x, 4x, ... at most ``max_delay_s``); after ``max_failures`` in a row the address is locked out for ``lockout_s``:
    its password attempts get 429 with Retry-After and are not checked at all. One address's attempts are checked one
    at a time, so parallel guesses queue behind each other's delays. With the defaults, 200 wrong passwords in a row
    take 111 s for the first ten, and the other 190 are refused unchecked. A right password resets the count.

    Args:
        delay_s: the delay after the first wrong password.
        max_delay_s: the longest delay.
        max_failures: wrong passwords in a row before the lockout.
        lockout_s: how long a lockout lasts.
        forget_s: a count of wrong passwords is forgotten after this long without another.
        clock: the time source (monotonic seconds).
        sleep: how to wait (tests pass one that advances their clock).
    """

    def __init__(
        self,
        delay_s: float = 1.0,
        max_delay_s: float = 16.0,
        max_failures: int = 10,
        lockout_s: float = 300.0,
        forget_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.delay_s, self.max_delay_s, self.max_failures = delay_s, max_delay_s, max_failures
        self.lockout_s, self.forget_s, self.clock, self.sleep = lockout_s, forget_s, clock, sleep
        self.clients: dict[str, _Client] = {}

    def _client(self, address: str) -> _Client:
        if address not in self.clients and len(self.clients) >= MAX_CLIENTS:
            now = self.clock()
            stale = [a for a, c in self.clients.items() if c.locked_until < now and not c.lock.locked()]
            stale.sort(key=lambda a: self.clients[a].last_failure)
            for old in stale[: max(len(stale) // 2, 1)]:
                del self.clients[old]
        return self.clients.setdefault(address, _Client())

    async def check(self, address: str, password_ok: Callable[[], bool]) -> bool:
        """Whether the password is right, after the delay a wrong one earns.

        Raises:
            LockedOut: while the address is locked out (the password is then not checked).
        """
        client = self._client(address)
        async with client.lock:
            now = self.clock()
            if client.locked_until > now:
                raise LockedOut(client.locked_until - now)
            if now - client.last_failure > self.forget_s:
                client.failures = 0
            if password_ok():
                client.failures = 0
                return True
            client.failures += 1
            client.last_failure = now
            delay = min(self.delay_s * 2 ** (client.failures - 1), self.max_delay_s)
            if client.failures >= self.max_failures:
                client.failures = 0
                client.locked_until = now + delay + self.lockout_s
            await self.sleep(delay)
            return False


class Auth:
    """Checks a request's credentials against the studio's password (no password: everything is open).

    Args:
        password: the password, or None.
        secret_file: where the cookie-signing key is kept, so a studio restart does not log everyone out.
        throttle: slows and locks out password guessing (default: ``LoginThrottle()``).
    """

    def __init__(self, password: str | None, secret_file: Path, throttle: LoginThrottle | None = None):
        self.password = password or None
        self.key = _signing_key(secret_file, self.password) if self.password else b""
        self.throttle = throttle or LoginThrottle()

    @property
    def enabled(self) -> bool:
        return self.password is not None

    def password_ok(self, given: str) -> bool:
        assert self.password is not None
        # Digests of equal length: the comparison time tells nothing about the password, not even its length.
        given_digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given_digest, hashlib.sha256(self.password.encode()).digest())

    def new_cookie(self) -> str:
        expires = str(int(time.time()) + SESSION_S)
        return f"{expires}.{self._sign(expires)}"

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def cookie_ok(self, value: str | None) -> bool:
        expires, _, signature = (value or "").partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature.encode(), self._sign(expires).encode())


def basic_password(header: str | None) -> str | None:
    """The password of an HTTP Basic ``Authorization`` header (None: no such header, or not decodable)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, _, given = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return given


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def locked_out(exc: LockedOut, api: bool, next_path: str = "/") -> Response:
    """The answer to a locked-out client: 429 with Retry-After, as JSON for the API and as the login page otherwise."""
    seconds = max(int(exc.retry_after + 0.999), 1)
    message = f"too many wrong passwords from this address: try again in {seconds} s"
    headers = {"Retry-After": str(seconds)}
    if api:
        return JSONResponse({"error": {"message": message, "field": None}}, status_code=429, headers=headers)
    page = login_page(message, next_path, status=429)
    page.headers.update(headers)
    return page


def _signing_key(path: Path, password: str) -> bytes:
    """A key made from a random secret kept in the data folder and the password: changing the password ends every
    session."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return hashlib.sha256(path.read_text().strip().encode() + b"\0" + password.encode()).digest()


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the studio's own pages (another site's form cannot start runs)."""
    origin = request.headers.get("origin")
    if request.method in ("GET", "HEAD", "OPTIONS") or not origin:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


async def guard(request: Request, call_next) -> Response:  # noqa: ANN001 - starlette's middleware signature
    """Middleware: refuse cross-site writes, and anything without credentials when a password is set."""
    auth: Auth = request.app.state.auth
    if not same_origin(request):
        return JSONResponse({"error": {"message": "cross-site request refused", "field": None}}, status_code=403)
    path = request.url.path
    if path in OPEN_PATHS or not auth.enabled or auth.cookie_ok(request.cookies.get(COOKIE)):
        return await call_next(request)
    given = basic_password(request.headers.get("authorization"))
    if given is not None:
        try:
            if await auth.throttle.check(client_address(request), lambda: auth.password_ok(given)):
                return await call_next(request)
        except LockedOut as exc:
            return locked_out(exc, api=path.startswith("/api/"), next_path=path)
    if request.url.path.startswith("/api/"):
        message = "this studio needs its password: log in at /login (or send HTTP Basic credentials)"
        return JSONResponse({"error": {"message": message, "field": None}}, status_code=401)
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def login_page(error: str = "", next_path: str = "/", status: int = 401) -> HTMLResponse:
    """The login form (self-contained: it must show before any other file may be read)."""
    message = f'<p class="err">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab studio · log in</title>
<style>body{{font:15px system-ui,sans-serif;background:#f4f5f7;display:grid;place-items:center;height:100vh;margin:0}}
form{{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:18rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0 1rem;box-sizing:border-box}}button{{padding:.5rem 1rem}}
.err{{color:#b00020}}</style></head><body><form method="post" action="/login">
<h2>tunelab studio</h2>{message}<label>Password<input type="password" name="password" autofocus></label>
<input type="hidden" name="next" value="{html.escape(next_path)}"><button type="submit">Log in</button></form>
</body></html>"""
    return HTMLResponse(body, status_code=status if error else 200)


async def login(request: Request) -> Response:
    """POST /login: check the password, set the session cookie, go back to the page asked for."""
    auth: Auth = request.app.state.auth
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    given = (form.get("password") or [""])[0]
    next_path = (form.get("next") or ["/"])[0]
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/"  # never redirect to another site
    if not auth.enabled:
        return RedirectResponse(next_path, status_code=303)
    try:
        right = await auth.throttle.check(client_address(request), lambda: auth.password_ok(given))
    except LockedOut as exc:
        return locked_out(exc, api=False, next_path=next_path)
    if not right:
        return login_page("wrong password", next_path)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(COOKIE, auth.new_cookie(), max_age=SESSION_S, httponly=True, samesite="strict")
    return response
