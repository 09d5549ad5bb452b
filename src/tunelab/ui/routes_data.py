"""Datasets page API: upload a file (or name one on the server) and see it as training will."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tunelab.data.readers import read_columns
from tunelab.errors import TunelabError
from tunelab.ui.analysis import inspect_data
from tunelab.ui.form import check_values
from tunelab.ui.uploads import list_uploads, save_upload

router = APIRouter(prefix="/api/datasets")


class InspectBody(BaseModel):
    path: str = Field(min_length=1)
    values: dict[str, str] = Field(default_factory=dict)
    rows: int = Field(5, ge=1, le=50)


def problems_response(problems: list[dict[str, str]]) -> JSONResponse:
    """A 400 naming the first problem and listing all of them (the form marks each field)."""
    first = problems[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    body = {"error": {"message": message, "field": first["field"] or None, "problems": problems}}
    return JSONResponse(body, status_code=400)


@router.get("")
async def uploads(request: Request) -> dict[str, Any]:
    studio = request.app.state.studio
    return {"uploads": list_uploads(studio.data_dir), "max_upload_mb": studio.settings.max_upload_mb}


@router.post("/upload")
async def upload(request: Request, name: str) -> dict[str, Any]:
    """The request body is the file itself (``fetch(url, {method: 'POST', body: file})``): no multipart parser,
    and the size limit applies while it streams in."""
    studio = request.app.state.studio
    declared = request.headers.get("content-length")
    path = await save_upload(
        request.stream(),
        studio.data_dir,
        name,
        studio.settings.max_upload_bytes,
        int(declared) if declared and declared.isdigit() else None,
    )
    try:
        columns = await run_in_threadpool(read_columns, str(path))
    except TunelabError:
        columns = []  # the inspection then says what is wrong with the file
    return {"name": path.name, "path": str(path), "bytes": path.stat().st_size, "columns": columns}


@router.post("/inspect")
async def inspect(request: Request, body: InspectBody) -> Any:
    """The detected format, the data check, rendered rows and the length histogram of a file."""
    studio = request.app.state.studio
    path = str(Path(body.path).expanduser())
    cfg, problems = check_values({**body.values, "dataset.train_dataframe": path}, str(studio.output_dir))
    if cfg is None:
        return problems_response(problems)
    return await run_in_threadpool(inspect_data, cfg, path, body.rows)
