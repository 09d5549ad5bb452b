"""Chat with runs in the browser, streamed: the model serving of ``tunelab serve`` (one worker thread per model,
per-row stopping, server-sent events), with a small cache of loaded models."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi.responses import StreamingResponse

from tunelab.errors import TunelabError

MAX_LOADED = 2  # two models side by side; a third evicts the one used least recently


class ChatModels:
    """Loaded models by (run directory, base or fine-tuned), each with its own generation worker."""

    def __init__(self, max_loaded: int = MAX_LOADED):
        self.max_loaded = max_loaded
        self._models: OrderedDict[tuple[str, bool], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str, base: bool) -> tuple[Any, Any]:
        """(served run, worker) for a finished run, or for the untouched backbone of that run when ``base``.

        Raises:
            TunelabError: for a run that did not save a model or is not a causal LM.
        """
        from tunelab.infer.model import load_base, load_run
        from tunelab.infer.serve import BatchWorker, ServedRun
        from tunelab.rundir import RunDirectory

        key = (str(Path(run_dir).resolve()), base)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            cfg = RunDirectory(run_dir).config()
            if not cfg.spec.can_chat:
                raise TunelabError(
                    f"chat needs a causal-LM run; this one is {cfg.problem_type}",
                    field="run",
                    hint="classification runs answer on the Experiments page's report",
                )
            loaded = load_base(cfg) if base else load_run(run_dir)
            served = ServedRun(loaded, f"{cfg.experiment_name} (base)" if base else cfg.experiment_name)
            worker = BatchWorker(served, max_batch_size=4, batch_wait_ms=5)
            worker.start()
            self._models[key] = (served, worker)
            while len(self._models) > self.max_loaded:
                _, (_, old) = self._models.popitem(last=False)
                old.stop()
            return served, worker

    def close(self) -> None:
        with self._lock:
            for _, worker in self._models.values():
                worker.stop()
            self._models.clear()


async def stream_answer(models: ChatModels, run_dir: str, base: bool, request: dict[str, Any]) -> StreamingResponse:
    """Start generating an answer to ``request`` (OpenAI chat fields) and stream it as server-sent events.

    Raises:
        APIError: for messages or settings the model cannot take (turned into a JSON error by the app).
    """
    from fastapi.concurrency import run_in_threadpool

    from tunelab.infer.serve import ChatBody, GenerationJob, stream_events

    body = ChatBody.model_validate({**request, "stream": True})
    served, worker = await run_in_threadpool(models.get, run_dir, base)
    prompt = await run_in_threadpool(served.chat_prompt, [m.as_turn() for m in body.messages])
    settings = await run_in_threadpool(served.settings, body, [prompt], "messages")
    job = GenerationJob(asyncio.get_running_loop(), [prompt], 1, settings, stream=True)
    worker.submit(job)
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served.name,
    }
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream_events(job, head, True, False), media_type="text/event-stream", headers=headers)
