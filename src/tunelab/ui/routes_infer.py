"""Chat and Export pages API: streamed answers from a run (or its base model), exports with their parity check."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.ui.chat import stream_answer
from tunelab.ui.server import error_body

router = APIRouter(prefix="/api")


class ChatRequest(BaseModel):
    """A chat turn for one run; the generation fields are those of ``tunelab serve`` (OpenAI's and its extras),
    checked there: unset ones take the run's prediction settings."""

    model_config = ConfigDict(extra="forbid")
    run: str = Field(min_length=1)
    base: bool = False
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    num_beams: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None


GENERATION_FIELDS = set(ChatRequest.model_fields) - {"run", "base"}


class ExportRequest(BaseModel):
    format: str = "adapter"
    dtype: str = "float32"
    quant: str = "q8_0"


@router.post("/chat")
async def chat(request: Request, body: ChatRequest) -> Any:
    """Server-sent events in OpenAI's chunk format (``data: {...choices[0].delta.content...}``, ``data: [DONE]``)."""
    from tunelab.infer.serve import APIError, describe_validation  # imports torch: only when a chat begins

    studio = request.app.state.studio
    view = await run_in_threadpool(studio.runs.get, body.run)
    fields = body.model_dump(include=GENERATION_FIELDS, exclude_none=True)
    try:
        return await stream_answer(studio.chat, view["path"], body.base, fields)
    except APIError as exc:  # the serving code's refusal (a prompt too long for the run, ...)
        return JSONResponse(error_body(exc.message, exc.param), status_code=exc.status)
    except ValidationError as exc:  # a generation field out of range, checked by the serving code's request body
        error = describe_validation(list(exc.errors()))
        return JSONResponse(error_body(error.message, error.param), status_code=400)


@router.get("/runs/{run_id}/exports")
async def exports(request: Request, run_id: str) -> dict[str, Any]:
    studio = request.app.state.studio
    view = await run_in_threadpool(studio.runs.get, run_id)
    return {
        "exports": await run_in_threadpool(studio.exports.exports, view["path"]),
        "jobs": studio.exports.list_jobs(view["path"]),
    }


@router.post("/runs/{run_id}/exports")
async def start_export(request: Request, run_id: str, body: ExportRequest) -> dict[str, Any]:
    studio = request.app.state.studio
    view = await run_in_threadpool(studio.runs.get, run_id)
    if view["status"] != "finished":
        from tunelab.errors import TunelabError

        raise TunelabError(f"run {view['name']} has not finished (status {view['status']})", field="run")
    return studio.exports.start(view["path"], body.format, body.dtype, body.quant)


@router.get("/runs/{run_id}/exports/{name}/download")
async def download(request: Request, run_id: str, name: str, background: BackgroundTasks) -> FileResponse:
    studio = request.app.state.studio
    view = await run_in_threadpool(studio.runs.get, run_id)
    path, filename = await run_in_threadpool(studio.exports.archive, view["path"], name)
    if path.suffix == ".zip" and path.parent == studio.exports.tmp:
        background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, filename=filename, background=background)
