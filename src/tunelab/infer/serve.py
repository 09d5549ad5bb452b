"""``tunelab serve``: an OpenAI-compatible HTTP server for a finished run.

Request handlers only validate, tokenise and queue work: ONE worker thread owns the model, because a model is not
safe to drive from several threads and one owner keeps memory predictable. The worker waits up to ``batch_wait_ms``
for more requests, then answers the ones with the same sampling settings with a single left-padded ``generate``
call. A per-row stopping criterion gives every row its own ``max_tokens`` and stop strings and hands its new text to
the client as it is generated, so streaming requests share batches with the others.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.data.collate import pad_left
from tunelab.errors import ConfigError, TunelabError
from tunelab.generation.constrain import COMPILERS, check_vocabulary, vocab_size
from tunelab.generation.settings import (
    GenerationSettings,
    cut_at_stops,
    generate_kwargs,
    held_back,
    model_eos_ids,
    seeded,
    until_end,
)
from tunelab.http_guard import HostAllowList, add_request_guard
from tunelab.http_guard import check_bind as refuse_open_bind
from tunelab.infer.model import LoadedRun, load_run
from tunelab.infer.openai_api import (
    PARAMS,
    ChatBody,
    ClassifyBody,
    CompletionBody,
    GenerationBody,
    ScoreBody,
)
from tunelab.models.adapters import is_prompt_learning, unwrap
from tunelab.problem_spec import ENDPOINT_PATHS, Endpoint, all_specs

log = logging.getLogger("tunelab.serve")

DEFAULT_MAX_REQUEST_MB = 4.0


# ------------------------------------------------------------------ errors
class APIError(Exception):
    """A refused request, answered with an OpenAI-style error body so that OpenAI clients raise the right error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def describe_validation(errors: list[dict[str, Any]]) -> APIError:
    """One readable 400 from pydantic's error list (the first problem names the ``param``)."""
    if not errors:
        return APIError(400, "invalid request")
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = errors[0].get("ctx", {}).get("error", "")
        detail = f" ({reason})" if reason else ""
        return APIError(400, f"the request body is not valid JSON{detail}", code="json_invalid")
    if errors[0].get("loc") == ("body",) and errors[0].get("type") in ("missing", "model_attributes_type", "dict_type"):
        return APIError(400, "the request body must be a JSON object (sent as Content-Type: application/json)")
    parts, params = [], []
    for error in errors[:4]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        # A union field reports one error per alternative ('prompt.str', 'prompt.list[int]'): keep the field name.
        param = ".".join(p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int"))
        params.append(param)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{param}: {message}" if param else message)
    return APIError(400, "invalid request: " + "; ".join(dict.fromkeys(parts)), param=params[0] or None)


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal, including FastAPI's own (422, 404, 405), gets the OpenAI error shape; 422 becomes 400."""

    @app.exception_handler(APIError)
    async def _refused(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return describe_validation(list(exc.errors())).response()

    @app.exception_handler(json.JSONDecodeError)
    async def _not_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return APIError(400, f"the request body is not valid JSON ({exc.msg})", code="json_invalid").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # No logging here: Starlette re-raises the exception after this answer, and uvicorn logs its traceback.
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()


# The request bodies live in tunelab.infer.openai_api.


# ------------------------------------------------------------------ jobs
class Job:
    """A request queued for the worker; its events go back to the request's event loop through a queue."""

    size = 1

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.cancelled = False  # set by the request side when its client is gone: the worker stops its rows

    def emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.cancelled = True

    async def result(self) -> tuple[Any, ...]:
        """The final event; a worker failure becomes a 500 and a cancelled request stops its rows."""
        try:
            while True:
                event = await self.events.get()
                if event[0] == "error":
                    raise APIError(500, event[1])
                if event[0] == "done":
                    return event
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class Row:
    """One generated sequence: choice ``index`` of a request, followed token by token."""

    def __init__(self, job: GenerationJob, index: int, prompt: list[int]):
        self.job, self.index, self.prompt = job, index, prompt
        self.tokens: list[int] = []
        self.text = ""  # the text handed out so far: exactly what the stream sent
        self.generated = 0  # tokens generated, the end-of-sequence token included
        self.finish: str | None = None


class GenerationJob(Job):
    """A completion or chat request: ``n`` rows per prompt, all generated with the same settings."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        prompts: list[list[int]],
        n: int,
        settings: GenerationSettings,
        stream: bool = False,
    ):
        super().__init__(loop)
        self.prompts = prompts
        self.settings = settings
        self.max_tokens = settings.max_new_tokens
        self.stops = list(settings.stop)
        self.stream = stream
        # Jobs with equal keys share ``generate`` calls. The per-row tracker gives each row its own length and stop
        # strings, but beam search is followed only at its end: those share calls with equal settings alone. A
        # seeded job samples alone, so that what others ask never changes its random numbers.
        shared = settings if settings.num_beams > 1 else settings.replace(max_new_tokens=1, stop=())
        self.key = (shared, None if settings.seed is None else id(self))
        self.rows = [Row(self, i * n + j, prompt) for i, prompt in enumerate(prompts) for j in range(n)]
        self.size = len(self.rows)
        self.rows_left = len(self.rows)

    def row_finished(self, row: Row) -> None:
        self.rows_left -= 1
        if self.stream and row.finish != "cancelled":
            self.emit("finish", row.index, row.finish)
        if self.rows_left == 0:
            self.emit("done")

    def usage(self) -> dict[str, int]:
        prompt, completion = sum(map(len, self.prompts)), sum(row.generated for row in self.rows)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ClassifyJob(Job):
    """A classification or scoring request: its examples join the other requests' in one ``predict`` call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, examples: list[dict[str, Any]]):
        super().__init__(loop)
        self.examples = examples
        self.size = len(examples)


class RowTracker(StoppingCriteria):
    """Follows the rows of one ``generate`` call step by step: ends each at its own ``max_tokens``, end-of-sequence
    token or stop string, and hands new text to streaming requests. Stop strings are checked on the decoded text,
    and text that might begin one is held back, so the stream never sends what the final answer cuts."""

    def __init__(self, rows: list[Row], tokenizer: Any, eos_ids: set[int], lock: threading.Lock):
        self.rows, self.tokenizer, self.eos_ids, self.lock = rows, tokenizer, eos_ids, lock

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        latest = input_ids[:, -1].tolist()
        with self.lock:
            for row, token in zip(self.rows, latest):
                if row.finish is None:
                    self.advance(row, token)
        return torch.tensor([row.finish is not None for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def advance(self, row: Row, token: int) -> None:
        if row.job.cancelled:
            self.close(row, "cancelled", publish=False)
            return
        row.generated += 1
        if token in self.eos_ids:
            self.close(row, "stop")
            return
        row.tokens.append(token)
        if len(row.tokens) >= row.job.max_tokens:
            self.close(row, "length")
        else:
            self.publish(row, final=False)

    def publish(self, row: Row, final: bool) -> bool:
        """Hand out the row's new text; True when a stop string ended it."""
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = cut_at_stops(text, row.job.stops)
        stopped = len(cut) < len(text)
        if not stopped and not final:
            cut = cut[: len(cut) - held_back(cut, row.job.stops)]
        if len(cut) > len(row.text):
            delta = cut[len(row.text) :]
            row.text += delta
            if row.job.stream:
                row.job.emit("delta", row.index, delta)
        if stopped:
            self.close(row, "stop", publish=False)
        return stopped

    def close(self, row: Row, reason: str, publish: bool = True) -> None:
        if publish and self.publish(row, final=True):
            return  # a stop string in the text closed the row already
        row.finish = reason
        row.job.row_finished(row)


class AllCancelled(StoppingCriteria):
    """Ends a beam search once every request it answers has gone."""

    def __init__(self, rows: list[Row]):
        self.jobs = list({id(row.job): row.job for row in rows}.values())

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = all(job.cancelled for job in self.jobs)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


# ------------------------------------------------------------------ the run
def context_length(loaded: LoadedRun) -> int:
    """The most tokens (prompt and completion) the model takes: its position limit, else the run's max_length."""
    config = getattr(unwrap(loaded.model), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            # Prompt tuning's soft tokens take positions too.
            return value - (loaded.cfg.training.num_virtual_tokens if is_prompt_learning(loaded.model) else 0)
    return loaded.cfg.tokenizer.max_length


class TokenizerCopies:
    """Copies of the run's tokenizer (and of its prompt renderer) lent to request threads, so that preparing one
    request never waits for another, nor for the worker's tokenizer: a long prompt takes seconds to tokenise.

    At most ``size`` copies are made (lazily); a request finding all of them lent waits for one. ``lock`` guards the
    original, which the worker uses: a copy is made while the worker is not tokenising.
    """

    def __init__(self, tokenizer: Any, renderer: Any, lock: threading.Lock, size: int = 4):
        self.tokenizer, self.renderer, self.original_lock, self.size = tokenizer, renderer, lock, size
        self.free: queue.LifoQueue[tuple[Any, Any]] = queue.LifoQueue()
        self.made = 0
        self.lock = threading.Lock()

    def _make(self) -> tuple[Any, Any]:
        with self.original_lock:
            tokenizer = copy.deepcopy(self.tokenizer)
        renderer = None
        if self.renderer is not None:
            renderer = copy.copy(self.renderer)
            renderer.tokenizer = tokenizer
        return tokenizer, renderer

    @contextmanager
    def borrow(self) -> Iterator[tuple[Any, Any]]:
        """``(tokenizer, renderer)`` for the duration of the block, used by this thread alone."""
        try:
            item = self.free.get_nowait()
        except queue.Empty:
            with self.lock:
                make = self.made < self.size
                self.made += make
            item = self.free.get() if not make else None
        if item is None:
            try:
                item = self._make()
            except BaseException:
                with self.lock:
                    self.made -= 1
                raise
        try:
            yield item
        finally:
            self.free.put(item)


class ServedRun:
    """What the routes and the worker share: the loaded run, its public name, limits and default settings."""

    def __init__(self, loaded: LoadedRun, model_name: str | None):
        self.loaded = loaded
        self.name = model_name or loaded.cfg.experiment_name
        self.kind = loaded.cfg.problem_type
        self.spec = loaded.cfg.spec
        if not self.spec.endpoints:
            raise TunelabError(
                f"serve has no endpoint for {self.kind} runs",
                field="problem_type",
                hint="use 'tunelab predict' for this run",
            )
        self.tokenizer = loaded.tokenizer
        # Fast tokenizers refuse concurrent use when a call changes their truncation: the worker's tokenizer has one
        # user at a time, and request threads tokenise with copies of their own.
        self.tokenizer_lock = threading.Lock()
        self.copies = TokenizerCopies(self.tokenizer, getattr(loaded.problem, "renderer", None), self.tokenizer_lock)
        self.context = context_length(loaded)
        self.device = next(loaded.model.parameters()).device
        self.created = int(time.time())
        # The run's prediction settings are every request's defaults.
        self.defaults = GenerationSettings.from_prediction(loaded.cfg.prediction)
        self.eos_ids = model_eos_ids(self.tokenizer, loaded.model)
        self.vocab_size = vocab_size(loaded.model) if self.spec.generative else 0

    def card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tunelab"}

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.name:
            message = f"the model '{name}' does not exist: this server serves '{self.name}'"
            raise APIError(404, message, param="model", code="model_not_found")

    def require(self, endpoint: Endpoint) -> None:
        """Refuse a request to an endpoint this run's problem type does not offer (``ProblemSpec.endpoints``)."""
        if endpoint not in self.spec.endpoints:
            other = " or ".join(ENDPOINT_PATHS[e] for e in self.spec.endpoints)
            wanted = " or ".join(s.name for s in all_specs() if endpoint in s.endpoints)
            message = (
                f"{ENDPOINT_PATHS[endpoint]} needs a {wanted} run, but '{self.name}' is a {self.kind} run: use {other}"
            )
            raise APIError(400, message, code="wrong_endpoint")

    # -------------------------------------------------------------- request preparation (in a thread-pool thread)
    def chat_prompt(self, turns: list[dict[str, str]]) -> list[int]:
        """The conversation rendered with the run's own chat template, exactly as in training and ``tunelab chat``.

        The renderer cuts prompts to ``tokenizer.max_length_prompt`` from the left; an API must not drop what a
        client sent without saying so, so a conversation that would be cut is refused instead.
        """
        from jinja2 import TemplateError

        limit = self.loaded.cfg.tokenizer.max_length_prompt
        with self.copies.borrow() as (tokenizer, renderer):
            try:
                text = renderer.prompt_text(turns)
                ids = renderer.prompt_ids(turns)
            except TemplateError as exc:
                raise APIError(400, f"the run's chat template refused the messages: {exc}", param="messages") from exc
            full = len(tokenizer(text, add_special_tokens=not renderer.use_template)["input_ids"])
        if full > len(ids):
            message = (
                f"the conversation is {full} tokens, but this run takes prompts of at most {limit} tokens "
                "(tokenizer.max_length_prompt in its config); shorten or drop earlier messages"
            )
            raise APIError(400, message, param="messages", code="context_length_exceeded")
        return ids

    def completion_prompts(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """Raw prompts tokenised as they are (no template); token-id prompts are checked against the vocabulary."""
        out = []
        with self.copies.borrow() as (tokenizer, _):
            vocab = len(tokenizer)
            for prompt in prompts:
                if isinstance(prompt, str):
                    out.append(tokenizer(prompt)["input_ids"])
                elif all(0 <= token < vocab for token in prompt):
                    out.append(list(prompt))
                else:
                    raise APIError(400, f"token ids must lie in [0, {vocab})", param="prompt")
        if not all(out):
            raise APIError(400, "the prompt has no tokens", param="prompt")
        return out

    def settings(self, body: GenerationBody, prompts: list[list[int]], param: str) -> GenerationSettings:
        """The request's generation settings: what it sets, the run's prediction settings for the rest, and
        max_tokens checked against the context. Refusals name the request's field."""
        prediction = self.loaded.cfg.prediction
        longest = max(map(len, prompts))
        wanted = body.max_completion_tokens or body.max_tokens
        max_tokens = wanted or max(min(prediction.max_length_inference, self.context - longest), 1)
        if longest + max_tokens > self.context:
            message = (
                f"this model's context is {self.context} tokens, but the request needs {longest + max_tokens} "
                f"({longest} in the prompt, {max_tokens} to generate); shorten the prompt or lower max_tokens"
            )
            raise APIError(400, message, param=param, code="context_length_exceeded")
        try:
            settings = body.settings(self.defaults, max_tokens)
            check_vocabulary(settings, self.vocab_size)
            if settings.response_format:  # compiled (and cached) now: a schema xgrammar refuses is the client's 400
                with self.copies.borrow() as (tokenizer, _):
                    COMPILERS.compile(tokenizer, self.vocab_size, settings.response_format)
        except ConfigError as exc:
            name = PARAMS.get(exc.field or "", exc.field)
            raise APIError(400, f"{name}: {exc.what}" if name else exc.what, param=name) from None
        return settings

    def count_inputs(self, texts: list[str]) -> int:
        """Tokens the classifier reads (it cuts at ``tokenizer.max_length`` as in training); refuse what it can't."""
        limit = self.loaded.cfg.tokenizer.max_length
        with self.copies.borrow() as (tokenizer, _):
            lengths = [min(len(tokenizer(text)["input_ids"]), limit) for text in texts]
        if max(lengths) > self.context:
            message = f"an input is {max(lengths)} tokens, longer than this model's context of {self.context}"
            raise APIError(400, message, param="input", code="context_length_exceeded")
        return sum(lengths)


# ------------------------------------------------------------------ worker
class BatchWorker:
    """The one thread that uses the model: it collects queued jobs, batches compatible ones and runs them."""

    def __init__(self, served: ServedRun, max_batch_size: int, batch_wait_ms: float):
        self.served, self.max_batch_size, self.wait_s = served, max_batch_size, batch_wait_ms / 1000
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="tunelab-serve-worker", daemon=True)
                self.thread.start()

    def stop(self, timeout: float = 30) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                self.jobs.put(None)
                self.thread.join(timeout)
            self.thread = None

    def submit(self, job: Job) -> None:
        self.start()
        self.jobs.put(job)

    def collect(self) -> list[Job] | None:
        """The next batch: the first waiting job, then whatever else arrives within the wait (None: shut down)."""
        first = self.jobs.get()
        if first is None:
            return None
        jobs, size, deadline = [first], first.size, time.monotonic() + self.wait_s
        while size < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # answer what was collected, then stop
                break
            jobs.append(job)
            size += job.size
        return jobs

    def run(self) -> None:
        while (jobs := self.collect()) is not None:
            live = [job for job in jobs if not job.cancelled]
            classify = [job for job in live if isinstance(job, ClassifyJob)]
            if classify:
                self.guarded(classify, self.classify, classify)
            groups: dict[Any, list[Row]] = {}
            for job in live:
                if isinstance(job, GenerationJob):
                    groups.setdefault(job.key, []).extend(job.rows)
            for rows in groups.values():
                rows.sort(key=lambda row: -len(row.prompt))  # similar lengths share a batch: less padding
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    self.guarded(list({id(row.job): row.job for row in chunk}.values()), self.generate, chunk, start)

    def guarded(self, jobs: list[Job], work: Any, *args: Any) -> None:
        """Run ``work``; if it fails, its requests get an error and the worker lives on for the others."""
        try:
            work(*args)
        except Exception as exc:
            log.exception("batch failed")
            for job in jobs:
                job.cancelled = True
                job.emit("error", f"generation failed: {type(exc).__name__}: {exc}")

    @torch.inference_mode()
    def generate(self, rows: list[Row], offset: int) -> None:
        """One ``generate`` call for rows of equal settings (``offset``: the first row's place in its group)."""
        served, settings = self.served, rows[0].job.settings
        beams = settings.num_beams > 1
        how = f"{settings.num_beams} beams" if beams else "sampled" if settings.do_sample else "greedy"
        log.info("batch of %d requests (%d sequences, %s)", len({id(row.job) for row in rows}), len(rows), how)
        batch = pad_left([row.prompt for row in rows], served.tokenizer.pad_token_id)
        batch = {k: v.to(served.device) for k, v in batch.items()}  # [batch, longest prompt]
        length = batch["input_ids"].shape[1]
        end_ids = served.eos_ids | set(settings.stop_token_ids)
        tracker = RowTracker(rows, served.tokenizer, end_ids, served.tokenizer_lock)
        if beams:  # beams are reordered every step: the answers are known at the end (transformers stops at stops)
            kwargs = generate_kwargs(settings, served.tokenizer, served.loaded.model, length)
            criteria: StoppingCriteria = AllCancelled(rows)
        else:
            longest = settings.replace(max_new_tokens=max(row.job.max_tokens for row in rows))
            kwargs = generate_kwargs(longest, served.tokenizer, served.loaded.model, length, stop_strings=False)
            criteria = tracker
        # The rows of one seeded request may fill several calls: each gets its own seed, so they differ.
        with seeded(None if settings.seed is None else settings.seed + offset, served.device):
            out = served.loaded.model.generate(**batch, **kwargs, stopping_criteria=StoppingCriteriaList([criteria]))
        with served.tokenizer_lock:
            if beams:
                self.finish_beams(tracker, rows, out[:, length:].tolist(), end_ids)
            for row in rows:
                if row.finish is None:  # generate ended before the tracker saw the row end: it ran out of length
                    tracker.close(row, "length")

    def finish_beams(self, tracker: RowTracker, rows: list[Row], generated: list[list[int]], end_ids: set[int]) -> None:
        """Hand out each beam-search answer whole, as one piece of a stream."""
        pad = self.served.tokenizer.pad_token_id
        for row, tokens in zip(rows, generated):
            if row.job.cancelled:
                tracker.close(row, "cancelled", publish=False)
                continue
            kept, ended = until_end(tokens, end_ids)
            while not ended and kept and kept[-1] == pad:  # a row that met a stop string is padded after it
                kept.pop()
            row.tokens, row.generated = kept, len(kept) + ended
            tracker.close(row, "stop" if ended else "length")

    @torch.inference_mode()
    def classify(self, jobs: list[ClassifyJob]) -> None:
        examples = [example for job in jobs for example in job.examples]
        log.info("batch of %d requests (%d inputs, %s)", len(jobs), len(examples), self.served.kind)
        problem, model = self.served.loaded.problem, self.served.loaded.model
        with self.served.tokenizer_lock:
            predictions = problem.predict(model, examples)
        start = 0
        for job in jobs:
            job.emit("done", predictions[start : start + job.size])
            start += job.size


# ------------------------------------------------------------------ routes
def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


def choice(row: Row, chat: bool) -> dict[str, Any]:
    """A finished row as a choice of a chat or text completion."""
    body = {"message": {"role": "assistant", "content": row.text}} if chat else {"text": row.text}
    return {"index": row.index, **body, "logprobs": None, "finish_reason": row.finish}


async def stream_events(job: GenerationJob, head: dict[str, Any], chat: bool, usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""

    def chunk(index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            body = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            body = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [body]})

    try:
        if chat:
            for row in job.rows:
                yield chunk(row.index, role=True)
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield chunk(event[1], text=event[2])
            elif event[0] == "finish":
                yield chunk(event[1], finish=event[2])
            elif event[0] == "error":
                yield sse({"error": {"message": event[1], "type": "server_error", "param": None, "code": None}})
                break
            else:
                if usage:
                    yield sse({**head, "choices": [], "usage": job.usage()})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # the client left early, or all is done and this changes nothing


def key_checker(api_key: str | None) -> Any:
    """A dependency that demands ``Authorization: Bearer <api_key>`` (nothing when there is no key)."""
    # Digests of equal length: the comparison time tells nothing about the key, not even its length.
    expected = hashlib.sha256(api_key.encode()).digest() if api_key else b""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, expected) or scheme.lower() != "bearer":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    return check


def add_docs(app: FastAPI, key_check: Any) -> None:
    """FastAPI's /docs, /redoc and /openapi.json, behind the API key (the schema names every endpoint and field).

    A browser does not send the key by itself: with a key set, fetch /openapi.json with it (curl, a script).
    """
    guarded = [Depends(key_check)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=guarded)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def create_app(
    loaded: LoadedRun,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 10,
    hosts: HostAllowList | None = None,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
) -> FastAPI:
    """The OpenAI-compatible app for a loaded run; its worker thread starts with the app and stops with it.

    Args:
        loaded: the run, from ``load_run``.
        api_key: when set, every ``/v1`` request must send ``Authorization: Bearer <api_key>``.
        model_name: the name clients use (default: the run's experiment name).
        max_batch_size: most sequences in one ``generate`` call (or texts in one classification batch).
        batch_wait_ms: how long the worker waits for more requests before it starts a batch.
        hosts: the names the server answers to (default: loopback only); any other ``Host`` gets 400.
        max_request_mb: the largest request body; a larger one gets 413 before it is read.

    Raises:
        TunelabError: for a run that cannot be served or batch settings out of range.
    """
    check_batching(max_batch_size, batch_wait_ms)
    check_request_limit(max_request_mb)
    served = ServedRun(loaded, model_name)
    worker = BatchWorker(served, max_batch_size, batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await run_in_threadpool(worker.stop)

    # The documentation routes are added below, behind the key when there is one.
    app = FastAPI(
        title=f"tunelab serve: {served.name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.served, app.state.worker = served, worker
    install_error_handlers(app)
    key_check = key_checker(api_key or None)
    add_docs(app, key_check)
    router = APIRouter(prefix="/v1", dependencies=[Depends(key_check)])
    limit = int(max_request_mb * 2**20)

    def refuse(status: int, message: str) -> JSONResponse:
        return APIError(status, message, code="request_too_large" if status == 413 else "host_not_allowed").response()

    # Outermost: a foreign Host or an oversized body is refused before routing, the key check or JSON parsing.
    add_request_guard(app, hosts or HostAllowList(), lambda scope: limit, refuse, "set by --max-request-mb")

    async def generation(body: GenerationBody, prompts: list[list[int]], chat: bool, param: str) -> Any:
        settings = await run_in_threadpool(served.settings, body, prompts, param)
        job = GenerationJob(asyncio.get_running_loop(), prompts, body.n or 1, settings, bool(body.stream))
        worker.submit(job)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": served.name,
        }
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            head["object"] = "chat.completion.chunk" if chat else "text_completion"  # OpenAI's names for chunks
            # No caching, and no buffering by a proxy in front (nginx honours X-Accel-Buffering): tokens flow as made.
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            events = stream_events(job, head, chat, usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        await job.result()
        return {**head, "choices": [choice(row, chat) for row in job.rows], "usage": job.usage()}

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.card()]}

    @router.get("/models/{name:path}")  # a custom model name may hold a slash (org/model)
    async def get_model(name: str) -> dict[str, Any]:
        served.check_model(name)
        return served.card()

    @router.post("/chat/completions")
    async def chat_completions(body: ChatBody) -> Any:
        served.require("chat")
        served.check_model(body.model)
        prompt = await run_in_threadpool(served.chat_prompt, [m.as_turn() for m in body.messages])
        return await generation(body, [prompt], chat=True, param="messages")

    @router.post("/completions")
    async def completions(body: CompletionBody) -> Any:
        served.require("completions")
        served.check_model(body.model)
        prompts = await run_in_threadpool(served.completion_prompts, body.prompt)
        return await generation(body, prompts, chat=False, param="prompt")

    @router.post("/classify")
    async def classify(body: ClassifyBody) -> dict[str, Any]:
        served.require("classify")
        served.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "the input list is empty", param="input")
        tokens = await run_in_threadpool(served.count_inputs, texts)
        job = ClassifyJob(asyncio.get_running_loop(), [{"text": text} for text in texts])
        worker.submit(job)
        predictions = (await job.result())[1]
        problem = served.loaded.problem
        data = []
        for index, prediction in enumerate(predictions):
            if served.spec.numeric_labels:
                data.append({"index": index, "value": prediction["prediction"]})
                continue
            probabilities = {c: prediction[f"prob_{c}"] for c in problem.classes}
            item = {"index": index, "label": prediction["prediction"], "probabilities": probabilities}
            if problem.multi_label:
                item["labels"] = [c for c, p in probabilities.items() if p >= 0.5]
            data.append(item)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "model": served.name, "data": data, "usage": usage}

    @router.post("/score")
    async def score(body: ScoreBody) -> dict[str, Any]:
        served.require("score")
        served.check_model(body.model)
        examples = body.examples()
        if not examples:
            raise APIError(400, "the responses list is empty", param="responses")
        job = ClassifyJob(asyncio.get_running_loop(), examples)
        worker.submit(job)
        predictions = (await job.result())[1]
        data = [{"index": i, "score": p["reward"]} for i, p in enumerate(predictions)]
        return {"object": "list", "model": served.name, "data": data}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Open without a key: for load balancers and start-up checks."""
        return {"status": "ok", "model": served.name}

    app.include_router(router)
    return app


# ------------------------------------------------------------------ serving
def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose a model beyond this machine without a key: anyone who can reach it could use it."""
    refuse_open_bind(
        host,
        api_key,
        "a model",
        "an API key",
        "host",
        "pass --api-key KEY (clients then send 'Authorization: Bearer KEY'), or bind to 127.0.0.1",
    )


def check_request_limit(max_request_mb: float) -> None:
    if not 0 < max_request_mb <= 1024:
        raise TunelabError(f"--max-request-mb must lie in (0, 1024], not {max_request_mb}", field="--max-request-mb")


def check_batching(max_batch_size: int, batch_wait_ms: float) -> None:
    """Batch settings in range, checked before the slow model load."""
    if max_batch_size < 1:
        raise TunelabError(f"max_batch_size must be at least 1, not {max_batch_size}", field="max_batch_size")
    if not 0 <= batch_wait_ms <= 10_000:
        raise TunelabError(f"batch_wait_ms must lie in [0, 10000], not {batch_wait_ms}", field="batch_wait_ms")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket; a port in use is a person's problem, told in one line (uvicorn would exit)."""
    if not 0 <= port <= 65535:
        raise TunelabError(f"port {port} is out of range", field="port", hint="use a port in 1-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise TunelabError(
            f"cannot listen on {host}:{port}: {exc.strerror}", field="port", hint="pick another port"
        ) from exc
    return sock


def build_server(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 10,
    device: str | None = None,
    log_level: str = "info",
    allowed_hosts: Sequence[str] = (),
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
) -> tuple[Any, socket.socket]:
    """Everything ``serve`` runs: the uvicorn server and its bound socket. Checks come before the slow model load.

    Returns:
        ``(server, sock)``: call ``server.run(sockets=[sock])``; set ``server.should_exit`` to stop it.
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    api_key = api_key or None
    check_bind(host, api_key)
    check_batching(max_batch_size, batch_wait_ms)
    check_request_limit(max_request_mb)
    hosts = HostAllowList(host, allowed_hosts)
    sock = bind_socket(host, port)
    try:
        loaded = load_run(run_dir, device=device)
        app = create_app(loaded, api_key, model_name, max_batch_size, batch_wait_ms, hosts, max_request_mb)
    except BaseException:
        sock.close()
        raise
    logging_config = copy.deepcopy(LOGGING_CONFIG)  # uvicorn's own, so batch lines look like its access lines
    logging_config["loggers"]["tunelab.serve"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    config = uvicorn.Config(app, log_level=log_level, log_config=logging_config, timeout_graceful_shutdown=5)
    return uvicorn.Server(config), sock


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 10,
    device: str | None = None,
    log_level: str = "info",
    allowed_hosts: Sequence[str] = (),
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
) -> None:
    """Serve a run directory over HTTP with the OpenAI API until interrupted.

    Args:
        run_dir: a finished causal_lm, classification or regression run.
        host: the address to listen on; anything but loopback needs ``api_key``.
        port: the TCP port (0: any free port).
        api_key: the key clients must send as ``Authorization: Bearer <key>``.
        model_name: the name clients use (default: the run's experiment name).
        max_batch_size: most sequences generated together.
        batch_wait_ms: how long to wait for more requests before generating.
        device: where to load the model (default: a GPU when there is one).
        log_level: uvicorn's log level.
        allowed_hosts: more names the server answers to (``Host``), beyond loopback and ``host``.
        max_request_mb: the largest request body accepted.

    Raises:
        TunelabError: a public host without a key, a port in use, a run that cannot be served.
    """
    server, sock = build_server(
        run_dir,
        host,
        port,
        api_key,
        model_name,
        max_batch_size,
        batch_wait_ms,
        device=device,
        log_level=log_level,
        allowed_hosts=allowed_hosts,
        max_request_mb=max_request_mb,
    )
    with sock:
        server.run(sockets=[sock])
