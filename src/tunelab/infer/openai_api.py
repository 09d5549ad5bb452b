"""The request bodies of ``tunelab serve``'s OpenAI-compatible API, and a generation request's settings.

Every field of OpenAI's chat and text completion requests is either honoured or refused with a 400 that names it;
none is accepted and ignored. Fields that only identify the caller (``user``, ``metadata``, ...) change no answer,
there as here. Beyond OpenAI's fields, a request may send vLLM's extra sampling fields (``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``, ``stop_token_ids``) and tunelab's (``num_beams``, ``no_repeat_ngram_size``);
any other field is refused by name.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.generation.settings import MAX_BEAMS, MAX_STOPS, GenerationSettings

MAX_CHOICES = 128
# What each OpenAI field this server does not implement may be set to without asking for anything (clients send
# these defaults): any other value is refused.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "verbosity": (None,),
    "store": (None, False),
}
# The settings field behind each request field, to name the request's field in an error.
PARAMS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


class Lenient(BaseModel):
    # Parts of a message carry fields tunelab has no use for (a message's ``name``, ...): accept and ignore those.
    model_config = ConfigDict(extra="ignore")


class RequestBody(Lenient):
    model: str | None = None  # optional: a server serves one model


class StreamOptions(Lenient):
    include_usage: bool = False


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field("", max_length=256)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema (with its 'schema') goes with type 'json_schema', and only with it")
        return self

    def settings_text(self) -> str:
        """The form ``GenerationSettings.response_format`` takes."""
        if self.type == "json_schema":
            assert self.json_schema is not None
            return json.dumps(self.json_schema.json_schema, separators=(",", ":"), sort_keys=True)
        return "" if self.type == "text" else "json_object"


class GenerationBody(RequestBody):
    # Unknown fields are refused by name: a sampling field this server does not know must not pass unnoticed.
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = Field(None, validate_default=True)  # a list after validation
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # Identify the caller only: they change no answer, at OpenAI either.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None  # about tools, which are refused
    # vLLM's extra sampling fields, and tunelab's.
    top_k: int | None = Field(None, ge=-1, le=1_000_000)  # -1 or 0: off
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    min_tokens: int | None = Field(None, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOPS)
    num_beams: int | None = Field(None, ge=1, le=MAX_BEAMS)
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=1024)
    # OpenAI fields this server does not implement: refused unless left at their defaults (UNSUPPORTED).
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    store: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: Any) -> Any:
        if value not in UNSUPPORTED[info.field_name]:
            raise ValueError("not supported by tunelab serve")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if not all(stops):
            raise ValueError("a stop string must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids, not '{token}'")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {token} must lie in [-100, 100]")
        return value

    def settings(self, defaults: GenerationSettings, max_tokens: int) -> GenerationSettings:
        """The run's settings (``defaults``) with what this request sets; ``max_tokens`` is already decided.

        Raises:
            ConfigError: for a combination out of range, naming the request's field.
        """
        changes: dict[str, Any] = {"max_new_tokens": max_tokens}
        changes["stop"] = tuple(dict.fromkeys([*(self.stop or []), *defaults.stop]))
        if self.temperature is not None:
            # Temperature 0 is greedy decoding: deterministic, and the same settings for every greedy request.
            changes["do_sample"] = self.temperature > 0
            changes["temperature"] = self.temperature if self.temperature > 0 else defaults.temperature
        if self.top_k is not None:
            changes["top_k"] = max(self.top_k, 0)
        if self.min_tokens is not None:
            changes["min_new_tokens"] = self.min_tokens
        if self.logit_bias is not None:
            changes["logit_bias"] = {int(token): bias for token, bias in self.logit_bias.items()}
        if self.response_format is not None:
            changes["response_format"] = self.response_format.settings_text()
        same = ("top_p", "min_p", "repetition_penalty", "num_beams", "no_repeat_ngram_size", "seed")
        same += ("presence_penalty", "frequency_penalty", "stop_token_ids")
        changes.update({name: getattr(self, name) for name in same if getattr(self, name) is not None})
        changes["min_new_tokens"] = min(changes.get("min_new_tokens", defaults.min_new_tokens), max_tokens)
        return defaults.replace(**changes)


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_turn(self) -> dict[str, str]:
        """The message as the run's chat template takes it (``developer`` is the newer name of ``system``)."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatBody(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _ends_with_a_question(self) -> ChatBody:
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must not be the assistant's: the model answers the conversation")
        return self


class CompletionBody(GenerationBody):
    prompt: str | list[str] | list[int] | list[list[int]]

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> list[str | list[int]]:
        prompts = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else list(value)
        if not prompts:
            raise ValueError("the prompt list is empty")
        return prompts


class ClassifyBody(RequestBody):
    input: str | list[str]


class ScoreBody(RequestBody):
    """A reward model's request: one prompt (text or messages) and the responses to score against it."""

    prompt: str | list[ChatMessage]
    responses: str | list[str]

    def examples(self) -> list[dict[str, Any]]:
        turns = (
            [{"role": "user", "content": self.prompt}]
            if isinstance(self.prompt, str)
            else [m.as_turn() for m in self.prompt]
        )
        responses = [self.responses] if isinstance(self.responses, str) else self.responses
        return [{"prompt": turns, "answer": response} for response in responses]
