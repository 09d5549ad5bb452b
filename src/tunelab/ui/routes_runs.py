"""New experiment and Experiments pages API: the form schema, validation, the plan, and the runs themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.problem_spec import all_specs
from tunelab.ui.analysis import estimate
from tunelab.ui.form import check_values, config_values, default_values, form_schema
from tunelab.ui.manager import read_records
from tunelab.ui.routes_data import problems_response

router = APIRouter(prefix="/api")
MAX_POINTS = 2000


class FormBody(BaseModel):
    values: dict[str, str]


class CompareBody(BaseModel):
    ids: list[str] = Field(min_length=2, max_length=8)


def _studio(request: Request) -> Any:
    return request.app.state.studio


@router.get("/schema")
async def schema() -> dict[str, Any]:
    return form_schema()


@router.get("/problem-types")
async def problem_types() -> dict[str, Any]:
    """Each registered problem type's public facts (``ProblemSpec.public``): the studio's only source for them."""
    return {"problem_types": [spec.public() for spec in all_specs()]}


@router.get("/defaults")
async def defaults(problem_type: str = RunConfig.model_fields["problem_type"].default) -> dict[str, Any]:
    return {"values": default_values(problem_type)}


@router.post("/validate")
async def validate(request: Request, body: FormBody) -> dict[str, Any]:
    """Every problem of the form at once (an empty list when the config is valid)."""
    _, problems = check_values(body.values, str(_studio(request).output_dir))
    return {"ok": not problems, "problems": problems}


@router.post("/plan")
async def plan(request: Request, body: FormBody) -> Any:
    cfg, problems = check_values(body.values, str(_studio(request).output_dir), require_data=True)
    if cfg is None:
        return problems_response(problems)
    return await run_in_threadpool(estimate, cfg)


@router.post("/experiments")
async def start_experiment(request: Request, body: FormBody) -> Any:
    """Validate the form, write its config into the data folder and start ``tunelab train`` on it."""
    studio = _studio(request)
    cfg, problems = check_values(body.values, str(studio.output_dir), require_data=True)
    if cfg is None:
        return problems_response(problems)
    launch = await run_in_threadpool(studio.runs.start, cfg)
    return studio.runs.get(launch["id"])


@router.get("/runs")
async def runs(request: Request) -> dict[str, Any]:
    return {"runs": await run_in_threadpool(_studio(request).runs.list)}


@router.get("/runs/{run_id}")
async def run(request: Request, run_id: str) -> dict[str, Any]:
    studio = _studio(request)
    view = await run_in_threadpool(studio.runs.get, run_id)
    path = Path(view["path"])
    view["info"] = _read_json(path / "run.json")
    view["has_report"] = (path / "report.html").is_file()
    view["has_model"] = any((path / name).is_dir() for name in ("adapter", "model", "partial"))
    return view


@router.post("/runs/{run_id}/stop")
async def stop(request: Request, run_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_studio(request).runs.stop, run_id)


@router.post("/runs/{run_id}/resume")
async def resume(request: Request, run_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_studio(request).runs.resume, run_id)


@router.delete("/runs/{run_id}")
async def delete(request: Request, run_id: str, files: bool = False) -> dict[str, Any]:
    view = await run_in_threadpool(_studio(request).runs.delete, run_id, files)
    return {"deleted": view["id"], "files": files}


@router.get("/runs/{run_id}/metrics")
async def metrics(request: Request, run_id: str) -> dict[str, Any]:
    """The run's metrics.jsonl records (the live chart's source) and its status, thinned to at most 2,000 points."""
    view = await run_in_threadpool(_studio(request).runs.get, run_id)
    records = read_records(Path(view["path"]))
    if len(records) > MAX_POINTS:
        every = len(records) // MAX_POINTS + 1
        records = [r for i, r in enumerate(records) if i % every == 0 or any(k.startswith("eval_") for k in r)]
    return {"status": view["status"], "records": records}


@router.get("/runs/{run_id}/log")
async def log(request: Request, run_id: str, lines: int = 200) -> dict[str, Any]:
    studio = _studio(request)
    view = await run_in_threadpool(studio.runs.get, run_id)
    return {"status": view["status"], "lines": studio.runs.log_lines(view, max(1, min(lines, 5000)))}


@router.get("/runs/{run_id}/config")
async def run_config(request: Request, run_id: str) -> dict[str, Any]:
    """A run's config as form values: 'start from a previous run'."""
    view = await run_in_threadpool(_studio(request).runs.get, run_id)
    path = Path(view["path"]) / "config.yaml"
    if not path.is_file():
        raise TunelabError("this run has no config.yaml yet", file=str(path.parent))
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {"values": config_values(data), "yaml": path.read_text(encoding="utf-8")}


@router.get("/runs/{run_id}/report")
async def report(request: Request, run_id: str) -> FileResponse:
    """The run's report.html; for a run that has none yet, a fresh one written into the studio's folder."""
    from tunelab.report import write_report

    studio = _studio(request)
    view = await run_in_threadpool(studio.runs.get, run_id)
    path = Path(view["path"]) / "report.html"
    if not path.is_file() or view["status"] != "finished":
        target = studio.data_dir / "reports" / f"{view['id']}.html"
        path = await run_in_threadpool(write_report, view["path"], target)
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.post("/compare")
async def compare(request: Request, body: CompareBody) -> dict[str, Any]:
    """Runs side by side: the config fields that differ, the final metrics, and every run's curves."""
    from tunelab.compare import config_differences

    studio = _studio(request)
    views = [await run_in_threadpool(studio.runs.get, run_id) for run_id in body.ids]
    configs = []
    for view in views:
        path = Path(view["path"]) / "config.yaml"
        configs.append(yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {})
    names = sorted({k for v in views for k, x in (v["metrics"].get("after") or {}).items() if isinstance(x, float)})
    return {
        "runs": [{k: v[k] for k in ("id", "name", "status", "problem_type", "backbone")} for v in views],
        "differences": config_differences(configs),
        "metrics": {name: [(v["metrics"].get("after") or {}).get(name) for v in views] for name in names},
        "curves": [read_records(Path(v["path"])) for v in views],
    }


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
