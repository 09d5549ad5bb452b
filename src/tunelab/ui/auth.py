"""The studio's password: a login form that sets a signed cookie, or HTTP Basic for scripts; every page and every API
call needs one of them when a password is set."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import os
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

COOKIE = "tunelab_studio"
SESSION_S = 7 * 24 * 3600
OPEN_PATHS = ("/login", "/favicon.ico")


class Auth:
    """Checks a request's credentials against the studio's password (no password: everything is open).

    Args:
        password: the password, or None.
        secret_file: where the cookie-signing key is kept, so a studio restart does not log everyone out.
    """

    def __init__(self, password: str | None, secret_file: Path):
        self.password = password or None
        self.key = _signing_key(secret_file, self.password) if self.password else b""

    @property
    def enabled(self) -> bool:
        return self.password is not None

    def password_ok(self, given: str) -> bool:
        assert self.password is not None
        return hmac.compare_digest(given.encode(), self.password.encode())

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

    def basic_ok(self, header: str | None) -> bool:
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, given = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return self.password_ok(given)

    def allows(self, request: Request) -> bool:
        if not self.enabled:
            return True
        return self.cookie_ok(request.cookies.get(COOKIE)) or self.basic_ok(request.headers.get("authorization"))


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
    if request.url.path in OPEN_PATHS or auth.allows(request):
        return await call_next(request)
    if request.url.path.startswith("/api/"):
        message = "this studio needs its password: log in at /login (or send HTTP Basic credentials)"
        return JSONResponse({"error": {"message": message, "field": None}}, status_code=401)
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def login_page(error: str = "", next_path: str = "/") -> HTMLResponse:
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
    return HTMLResponse(body, status_code=401 if error else 200)


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
    if not auth.password_ok(given):
        await asyncio.sleep(1.0)  # slows down guessing
        return login_page("wrong password", next_path)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(COOKIE, auth.new_cookie(), max_age=SESSION_S, httponly=True, samesite="strict")
    return response
