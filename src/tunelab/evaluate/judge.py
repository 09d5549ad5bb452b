"""LLM-as-judge: grade generated answers with any OpenAI-compatible chat endpoint.

One request per (question, reference, answer) row, a few in flight at once, retried on the errors that pass (connection
drops, timeouts, 429, 5xx). A row whose request still fails, or whose reply holds no score, is counted and reported,
never fatal: a long evaluation should not be lost to one bad reply. Only a judge that answers no request at all is an
error, because then every score would be missing for the same reason.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tunelab.config import JudgeConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import user_cache_dir, write_json_atomic

log = logging.getLogger("tunelab")

DEFAULT_TEMPLATE = """You are grading an answer against a reference answer.

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Rate how correct and complete the answer is compared with the reference, from 1 (wrong or unrelated) to 10 (fully \
correct and complete). Write at most one short sentence of justification, then end with a final line of exactly this \
form, where N is a whole number from 1 to 10:
Score: N"""

# Module-level so tests (and impatient users) can shorten them.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 30.0

_PLACEHOLDERS = ("question", "reference", "answer")
_TEMPLATE_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NUMBER = r"(?<![\d.])(\d+(?:\.\d+)?)(?!\.?\d)"
_OUT_OF = r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_NOT_RANGE = r"(?!\s*(?:-|–|to)\s*\d)"  # "a score from 1 to 10" restates the scale, it is no verdict
_EXPLICIT = re.compile(
    r"\b(?:score|rating|grade)\b[*_\s]*(?:[:=\-]|\bis\b|\bof\b)?[*_\s]*" + _NUMBER + _NOT_RANGE + _OUT_OF,
    re.IGNORECASE,
)
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*10(?!\.?\d)", re.IGNORECASE)
_BOLD = re.compile(r"\*\*\s*" + _NUMBER + r"\s*\*\*")
_BARE = re.compile(_NUMBER + r"\.?")
_VERDICT = re.compile(r"\b(?:verdict|result|judgement|judgment|decision)\b[*_\s]*[:=\-]?[*_\s]*(\w+)", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_WORD_SCORES = {"pass": 1.0, "passed": 1.0, "fail": 0.0, "failed": 0.0}
_WORD_LEAD = re.compile(r"(pass|passed|fail|failed)(?:\s*[.,!:;\-—]|$)", re.IGNORECASE)
_YES_NO = re.compile(r"(yes|no)(?:[.,!:;]|$)", re.IGNORECASE)


@dataclass
class JudgeResult:
    """Per-row judge scores (0–1, None when missing) and what went wrong, summarised by ``metrics()``."""

    scores: list[float | None]
    replies: list[str | None]
    unparsable: int = 0
    failed: int = 0
    mean: float = field(init=False)

    def __post_init__(self) -> None:
        parsed = [s for s in self.scores if s is not None]
        self.mean = sum(parsed) / len(parsed) if parsed else math.nan

    def metrics(self) -> dict[str, float]:
        """The numbers a run reports: the mean score and how many rows it leaves out, and why."""
        return {"judge": self.mean, "judge_unparsable": self.unparsable, "judge_failed": self.failed}


def parse_score(reply: str) -> float | None:
    """Read a judge's verdict from free text, normalised to 0–1 (a 1–10 score s gives s/10, pass 1.0, fail 0.0).

    Judges rarely follow the format exactly, so several forms are tried in order of how explicit they are and the
    first form found decides: the LAST "score/rating/grade: N" (a judge may restate the scale before its verdict),
    "N/10" or "N out of 10", a bold "**N**", a line that is only a number, PASS/FAIL (alone on a line or after
    "verdict:"), and finally a reply that starts with yes/no. A number outside 1–10 gives None rather than a guess.

    Args:
        reply: the judge's reply text.

    Returns:
        The score in [0, 1], or None when the reply holds no usable score.
    """
    text = _THINK.sub(" ", reply or "").strip()
    explicit = list(_EXPLICIT.finditer(text))
    if explicit:
        return _in_range(explicit[-1].group(1), explicit[-1].group(2))
    for pattern in (_FRACTION, _BOLD):
        found = pattern.findall(text)
        if found:
            return _in_range(found[-1])
    lines = [_strip_markup(line) for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in (lines[-1:] + lines[:1]) if lines else []:
        if _BARE.fullmatch(line):
            return _in_range(_BARE.fullmatch(line).group(1))
        word = _WORD_LEAD.match(line)
        if word:
            return _WORD_SCORES[word.group(1).lower()]
    verdicts = [v.lower() for v in _VERDICT.findall(text) if v.lower() in _WORD_SCORES]
    if verdicts:
        return _WORD_SCORES[verdicts[-1]]
    yes_no = _YES_NO.match(_strip_markup(text))
    if yes_no:
        return 1.0 if yes_no.group(1).lower() == "yes" else 0.0
    return None


def _strip_markup(line: str) -> str:
    return re.sub(r"[*`]", "", line).strip().strip("_#>\"' \t").strip()


def _in_range(number: str, out_of: str | None = None) -> float | None:
    value = float(number)
    if out_of is not None and float(out_of) != 10:
        return None  # "4/5" is on another scale; rescaling would be a guess
    return value / 10 if 1 <= value <= 10 else None


def load_judge_template(cfg: JudgeConfig) -> str:
    """The judge prompt template, checked; call it at setup so a bad template fails before training, not after.

    Args:
        cfg: the judge section.

    Returns:
        The template text (the built-in one when ``cfg.prompt_template`` is empty).

    Raises:
        ConfigError: when the template file is missing, or a placeholder is missing or unknown.
    """
    raw = cfg.prompt_template
    if not raw.strip():
        return DEFAULT_TEMPLATE
    template = raw
    if raw.strip().lower().endswith(".txt") and "\n" not in raw.strip():
        path = Path(raw.strip()).expanduser()
        if not path.is_file():
            raise ConfigError(
                "judge prompt file not found",
                file=str(path),
                field="judge.prompt_template",
                hint="give an existing .txt file or the prompt text itself",
            )
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the judge prompt: {exc}", file=str(path), field="judge.prompt_template"
            ) from None
    names = [m.group(1).strip() for m in _TEMPLATE_FIELD.finditer(template) if m.group(1) is not None]
    unknown = sorted({n for n in names if re.fullmatch(r"[A-Za-z_]\w*", n) and n not in _PLACEHOLDERS})
    if unknown:
        raise ConfigError(
            f"unknown placeholder {', '.join('{' + n + '}' for n in unknown)} in the judge prompt",
            field="judge.prompt_template",
            hint="use {question}, {reference} and {answer}; write literal braces as {{ and }}",
        )
    if "answer" not in names:
        raise ConfigError(
            "the judge prompt has no {answer} placeholder, so the judge would never see the answer",
            field="judge.prompt_template",
            hint="add {answer} (and usually {question} and {reference}), with single braces",
        )
    return template


def render_prompt(template: str, question: str, reference: str, answer: str) -> str:
    """Fill a checked template in one pass, so braces inside the answer are never taken for placeholders."""
    values = {"question": question, "reference": reference, "answer": answer}

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = (match.group(1) or "").strip()
        return values.get(name, token)  # other {...} (e.g. a JSON example) stays as written

    return _TEMPLATE_FIELD.sub(fill, template)


@dataclass
class _Outcome:
    reply: str | None = None
    error: str | None = None
    kind: str | None = None  # "connect" | "http4xx" | "other" when the request failed
    status: int | None = None


def judge_answers(
    cfg: JudgeConfig,
    questions: list[str],
    references: list[str],
    answers: list[str],
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> JudgeResult:
    """Have the judge model score each answer against its reference.

    Args:
        cfg: the judge section (endpoint, model, prompt, concurrency, retries, timeout, cache).
        questions: the prompts the answers were generated for.
        references: the expected answers.
        answers: the generated answers to grade.
        cache_dir: where replies are remembered when ``cfg.cache``; default ``user_cache_dir()/"judge"``.
        progress: called with the number of rows just finished (an increment, as ``tqdm.update`` takes).

    Returns:
        The per-row scores and replies, with counts of unparsable replies and failed requests.

    Raises:
        ConfigError: when base_url or model is empty, or the prompt template is bad.
        TunelabError: when the judge answered no request at all (unreachable, or every request refused).
    """
    if not (len(questions) == len(references) == len(answers)):
        raise ValueError(f"{len(questions)} questions, {len(references)} references and {len(answers)} answers")
    base_url = _check_endpoint(cfg)
    template = load_judge_template(cfg)
    prompts = [render_prompt(template, q, r, a) for q, r, a in zip(questions, references, answers)]
    keys = [_cache_key(base_url, cfg.model, p, cfg.max_tokens) for p in prompts]
    folder = (cache_dir or user_cache_dir() / "judge") if cfg.cache else None

    rows_by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        rows_by_key.setdefault(key, []).append(i)
    replies: list[str | None] = [None] * len(prompts)
    todo: dict[str, str] = {}
    cached_rows = 0
    for key, rows in rows_by_key.items():
        cached = _load_cached(folder, key) if folder else None
        if cached is None:
            todo[key] = prompts[rows[0]]
            continue
        for i in rows:
            replies[i] = cached
        cached_rows += len(rows)
    if progress and cached_rows:
        progress(cached_rows)

    outcomes = _request_all(cfg, base_url, todo, rows_by_key, progress)
    for key, outcome in outcomes.items():
        if outcome.reply is not None:
            for i in rows_by_key[key]:
                replies[i] = outcome.reply
            if folder:
                _save_cached(folder, key, outcome.reply, cfg.model)
    _raise_if_judge_unusable(cfg, base_url, list(outcomes.values()))

    scores = [None if r is None else parse_score(r) for r in replies]
    failed = sum(len(rows_by_key[k]) for k, o in outcomes.items() if o.reply is None)
    unparsable = sum(r is not None and s is None for r, s in zip(replies, scores))
    result = JudgeResult(scores=scores, replies=replies, unparsable=unparsable, failed=failed)
    if failed:
        last = next(o.error for o in reversed(list(outcomes.values())) if o.reply is None)
        log.warning("%d of %d judge requests failed after retries (last: %s)", failed, len(prompts), last)
    if result.unparsable:
        log.warning(
            "%d of %d judge replies held no score; they are left out of the mean", result.unparsable, len(prompts)
        )
    return result


def _check_endpoint(cfg: JudgeConfig) -> str:
    """The base URL without a trailing slash; checked here because httpx would only fail on the first request."""
    hint = "e.g. --set judge.base_url=http://localhost:8000/v1 --set judge.model=NAME"
    if not cfg.base_url or not cfg.model:
        field_name = "judge.base_url" if not cfg.base_url else "judge.model"
        raise ConfigError("the judge needs judge.base_url and judge.model", field=field_name, hint=hint)
    try:
        url = httpx.URL(cfg.base_url)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"'{cfg.base_url}' is not an http(s) URL", field="judge.base_url", hint=hint)
    return cfg.base_url.rstrip("/")


def _request_all(
    cfg: JudgeConfig,
    base_url: str,
    todo: dict[str, str],
    rows_by_key: dict[str, list[int]],
    progress: Callable[[int], None] | None,
) -> dict[str, _Outcome]:
    """Send every uncached prompt, at most ``cfg.max_concurrency`` at once; progress is reported from this thread."""
    if not todo:
        return {}
    headers = {"Content-Type": "application/json"}
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    outcomes: dict[str, _Outcome] = {}
    with (
        httpx.Client(headers=headers, timeout=httpx.Timeout(cfg.timeout), limits=limits) as client,
        ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="tunelab-judge") as pool,
    ):
        futures = {pool.submit(_ask, client, cfg, base_url, prompt): key for key, prompt in todo.items()}
        try:
            for future in as_completed(futures):
                key = futures[future]
                outcomes[key] = future.result()
                if progress:
                    progress(len(rows_by_key[key]))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C should not wait for the whole queue
            raise
    return outcomes


def _ask(client: httpx.Client, cfg: JudgeConfig, base_url: str, prompt: str) -> _Outcome:
    """One judge request with retries: exponential backoff with jitter, or the server's Retry-After (capped)."""
    body = {
        "model": cfg.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
    }
    outcome = _Outcome()
    for attempt in range(cfg.max_retries + 1):
        wait: float | None = None
        try:
            response = client.post(f"{base_url}/chat/completions", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            outcome = _Outcome(error=f"cannot connect: {exc}", kind="connect")
        except httpx.TimeoutException:
            outcome = _Outcome(error=f"no reply within {cfg.timeout:g} s", kind="other")
        except httpx.TransportError as exc:
            outcome = _Outcome(error=f"{type(exc).__name__}: {exc}", kind="other")
        else:
            if response.status_code == 200:
                return _read_reply(response)
            detail = " ".join(response.text[:300].split())
            status = response.status_code
            kind = "http4xx" if 400 <= status < 500 and status != 429 else "other"
            outcome = _Outcome(error=f"HTTP {status}: {detail}", kind=kind, status=status)
            if kind == "http4xx" or status < 400:
                return outcome  # the same request would be refused again
            if status in (429, 503):
                wait = _retry_after(response.headers.get("Retry-After"))
        if attempt < cfg.max_retries:
            if wait is None:
                wait = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)
            time.sleep(wait)
    return outcome


def _read_reply(response: httpx.Response) -> _Outcome:
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return _Outcome(error="the reply is not an OpenAI chat completion", kind="other", status=200)
    # A reasoning model may leave content empty; its reasoning is better than nothing for the parser.
    content = message.get("content") or message.get("reasoning_content") or ""
    return _Outcome(reply=content if isinstance(content, str) else json.dumps(content))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped so one header cannot stall a run."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def _raise_if_judge_unusable(cfg: JudgeConfig, base_url: str, outcomes: list[_Outcome]) -> None:
    """One clear error when no request got through for one shared reason: it is the setup, not the answers."""
    if not outcomes or any(o.reply is not None for o in outcomes):
        return
    kinds = {o.kind for o in outcomes}
    if kinds == {"connect"}:
        raise TunelabError(
            f"the judge at {base_url} did not answer",
            field="judge.base_url",
            hint="check judge.base_url (e.g. http://localhost:8000/v1) and that the server is running",
        )
    if kinds == {"http4xx"}:
        first = outcomes[0]
        if first.status in (401, 403):
            hint = f"set the judge's API key in ${cfg.api_key_env} (judge.api_key_env)"
        elif first.status == 404:
            hint = "judge.base_url usually ends with /v1; check that judge.model is served there"
        else:
            hint = "check judge.model and judge.max_tokens against what the server accepts"
        raise TunelabError(
            f"the judge at {base_url} refused every request ({first.error})", field="judge.base_url", hint=hint
        )


def _cache_key(base_url: str, model: str, prompt: str, max_tokens: int) -> str:
    return hashlib.sha256(json.dumps([base_url, model, prompt, max_tokens]).encode("utf-8")).hexdigest()


def _cache_file(folder: Path, key: str) -> Path:
    return folder / key[:2] / f"{key}.json"


def _load_cached(folder: Path, key: str) -> str | None:
    """A remembered reply; an unreadable entry is treated as absent (it is only a cache)."""
    try:
        reply = json.loads(_cache_file(folder, key).read_text(encoding="utf-8"))["reply"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return reply if isinstance(reply, str) else None


def _save_cached(folder: Path, key: str, reply: str, model: str) -> None:
    try:
        write_json_atomic(_cache_file(folder, key), {"model": model, "reply": reply, "saved": time.time()})
    except OSError as exc:  # a read-only cache must not cost the scores
        log.warning("could not cache a judge reply in %s: %s", folder, exc)
