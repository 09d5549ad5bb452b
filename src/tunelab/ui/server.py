"""``tunelab studio``: the FastAPI app, its error answers, the static frontend, and the server that binds it."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError
from tunelab.http_guard import HostAllowList, add_request_guard
from tunelab.http_guard import check_bind as refuse_open_bind
from tunelab.ui.auth import Auth, LoginThrottle, guard, login, login_page
from tunelab.ui.chat import ChatModels
from tunelab.ui.exports import ExportManager
from tunelab.ui.manager import RunActionError, RunManager
from tunelab.ui.processes import Children
from tunelab.ui.uploads import UploadError

STATIC = Path(str(resources.files("tunelab.ui") / "static"))
UPLOAD_PATH = "/api/datasets/upload"


@dataclass
class StudioSettings:
    """Where the studio keeps things and who may use it.

    Args:
        output_dir: the runs' output directory (the run registry lives there).
        data_dir: the studio's own folder: uploads, experiment configs, launch records, logs.
        password: required for every page and API call when set.
        max_upload_mb: the largest upload accepted.
        host: the address the studio listens on (a name it answers to).
        allowed_hosts: more names the studio answers to (``--allowed-host``); any other ``Host`` gets 400.
        max_request_mb: the largest body of any other request (JSON, the login form).
        throttle: slows and locks out password guessing (tests pass quick timings).
    """

    output_dir: Path
    data_dir: Path
    password: str | None = None
    max_upload_mb: float = 50
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    max_request_mb: float = 1
    throttle: LoginThrottle | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class Studio:
    """Everything the routes share: settings, runs, exports and loaded chat models."""

    def __init__(self, settings: StudioSettings):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.output_dir = settings.output_dir.resolve()
        self.children = Children()
        self.runs = RunManager(self.output_dir, self.data_dir, self.children)
        self.exports = ExportManager(self.data_dir, self.children)
        self.chat = ChatModels()


def error_body(message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one error shape of the studio's API: the page shows ``message`` next to ``field``."""
    return {"error": {"message": message, "field": field, **extra}}


def install_errors(app: FastAPI) -> None:
    """Every refusal becomes ``{"error": {"message", "field"}}`` with a fitting status; no tracebacks reach a page."""
    from tunelab.runs import RegistryError

    @app.exception_handler(TunelabError)
    async def _tunelab(request: Request, exc: TunelabError) -> JSONResponse:
        status = 400
        if isinstance(exc, UploadError):
            status = exc.status
        elif isinstance(exc, RegistryError):
            status = 404
        elif isinstance(exc, RunActionError):
            status = 409
        return JSONResponse(error_body(exc.line(), exc.field), status_code=status)

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return JSONResponse(error_body(f"{field}: {first['msg']}", field), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # its 'loc' holds a character position, not a field
            reason = first.get("ctx", {}).get("error") or "not JSON"
            where = first["loc"][-1] if isinstance(first["loc"][-1], int) else None
            at = f" at character {where}" if where is not None else ""
            return JSONResponse(error_body(f"the request body is not valid JSON: {reason}{at}"), status_code=400)
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query"))
        return JSONResponse(error_body(f"{field or 'request'}: {first['msg']}", field or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(f"{request.url.path}: {exc.detail}"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}"), status_code=500)


def create_app(settings: StudioSettings) -> FastAPI:
    """The studio app. It holds no run state of its own: a new app over the same folders sees the same runs."""
    from tunelab.ui import routes_data, routes_infer, routes_runs

    studio = Studio(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        studio.chat.close()
        studio.exports.cleanup()

    # No /docs: FastAPI's documentation pages load their scripts from the internet.
    app = FastAPI(title="tunelab studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.studio = studio
    app.state.auth = Auth(settings.password, studio.data_dir / ".studio_secret", settings.throttle)
    app.middleware("http")(guard)
    install_errors(app)
    request_limit = int(settings.max_request_mb * 2**20)

    def body_limit(scope: Any) -> int | None:
        return None if scope["path"] == UPLOAD_PATH else request_limit  # the upload route streams under its own limit

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse(error_body(message), status_code=status)

    # Added last, so it runs first: a foreign Host or an oversized body never reaches the password check or a route.
    hosts = HostAllowList(settings.host, settings.allowed_hosts)
    add_request_guard(app, hosts, body_limit, refuse, "uploads have their own limit, --max-upload-mb")
    for module in (routes_data, routes_runs, routes_infer):
        app.include_router(module.router)

    @app.get("/login")
    async def login_form(next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
        return login_page(next_path=next)

    app.post("/login")(login)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def check_bind(host: str, password: str | None) -> None:
    """Anything beyond this machine may reach a studio bound elsewhere than loopback: it needs a password.

    Raises:
        TunelabError: for a non-loopback host without a password.
    """
    refuse_open_bind(
        host,
        password,
        "the studio",
        "a password",
        "--host",
        "pass --password (or set TUNELAB_STUDIO_PASSWORD), or bind to 127.0.0.1",
    )


def run_studio(
    host: str = "127.0.0.1",
    port: int = 7860,
    password: str | None = None,
    output_directory: str | Path = "output",
    data_dir: str | Path = "studio_data",
    max_upload_mb: float = 50,
    allowed_hosts: tuple[str, ...] | list[str] = (),
) -> None:
    """Serve the studio until interrupted.

    Raises:
        TunelabError: a public host without a password, a bad upload limit or allowed host, a port in use.
    """
    password = password or None
    check_bind(host, password)
    if max_upload_mb <= 0:
        raise TunelabError(f"--max-upload-mb must be above 0, not {max_upload_mb}", field="--max-upload-mb")
    hosts = HostAllowList(host, allowed_hosts)  # a bad --allowed-host is told before the port is taken
    import uvicorn

    from tunelab.infer.serve import bind_socket  # a port in use is told in one line

    settings = StudioSettings(
        Path(output_directory), Path(data_dir), password, max_upload_mb, host=host, allowed_hosts=tuple(allowed_hosts)
    )
    sock = bind_socket(host, port)
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"tunelab studio on http://{shown}:{sock.getsockname()[1]}/ (runs in {settings.output_dir}, "
        f"studio files in {settings.data_dir}{', password required' if password else ''}; answers to "
        f"{hosts.names()}); Ctrl-C stops the studio, not the runs",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
