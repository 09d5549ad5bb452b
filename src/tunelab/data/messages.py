"""Message lists as other tools write them, turned into one canonical form.

Canonical message: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``, plus optional
``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}}]`` on assistant turns and
``"train": False`` on an assistant turn that is shown to the model but not learned (OpenAI's ``weight: 0``).

Accepted spellings:

- OpenAI / TRL / LLaMA-Factory "messages": ``{"role", "content"}``; ``content`` a string, null (an assistant turn that
  only calls tools) or a list of parts ``[{"type": "text", "text": ...}]``; ``tool_calls`` with JSON-text arguments;
  ``weight`` 0 or 1 on assistant turns; ``tool`` (and ``function`` / ``ipython``) result turns.
- ShareGPT / LLaMA-Factory: ``{"from", "value"}`` with human, gpt, system, function_call (the value is a JSON call, or
  a list of calls) and observation (a tool's result).
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.data.readers import Record

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}
CANONICAL_ROLES = ("system", "user", "assistant", "tool")


def json_cell(record: Record, field: str, value: Any) -> Any:
    """A cell that may hold JSON text (a CSV export of a list or object) as Python data."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise record.error("the cell looks like JSON but is not valid JSON", field=field) from None
    return value


def _content(record: Record, field: str, i: int, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise record.error(
                    f"message {i} has a content part of type '{kind}'",
                    field=field,
                    hint="only text parts ({'type': 'text', 'text': ...}) can be trained on",
                )
        return "".join(texts)
    raise record.error(f"message {i} content must be text or a list of text parts", field=field)


def _call(record: Record, field: str, i: int, call: Any) -> dict[str, Any]:
    """One tool call as ``{"type": "function", "function": {"name", "arguments": dict}}``."""
    if isinstance(call, dict) and "function" in call:
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise record.error(f"message {i} has a tool call without a name", field=field)
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise record.error(f"message {i} has tool-call arguments that are not valid JSON", field=field) from None
    return {"type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _sharegpt_calls(record: Record, field: str, i: int, value: Any) -> list[dict[str, Any]]:
    """A ShareGPT ``function_call`` value: one JSON call or a list of them."""
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        raise record.error(f"message {i} (function_call) is not a JSON tool call", field=field) from None
    calls = data if isinstance(data, list) else [data]
    return [_call(record, field, i, call) for call in calls]


def normalise_messages(
    record: Record, field: str, items: Any, role_key: str = "role", content_key: str = "content"
) -> list[dict[str, Any]]:
    """The canonical messages of one cell (see the module docstring for what is accepted).

    Raises:
        DataError: naming the row, field and message number of the first problem.
    """
    items = json_cell(record, field, items)
    if isinstance(items, dict):
        items = [items]  # LLaMA-Factory's sharegpt preference: chosen/rejected are single messages
    if not isinstance(items, list) or not items:
        raise record.error("expected a non-empty list of messages", field=field)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or role_key not in item:
            raise record.error(f"message {i} needs '{role_key}' and '{content_key}'", field=field)
        raw_role = str(item[role_key]).lower()
        role = ROLES.get(raw_role)
        if role is None:
            raise record.error(
                f"message {i} has unknown role '{item[role_key]}'",
                field=field,
                hint="roles are system, user, assistant and tool (or human, gpt, function_call, observation)",
            )
        if content_key not in item and not item.get("tool_calls"):
            raise record.error(f"message {i} needs '{role_key}' and '{content_key}'", field=field)
        message: dict[str, Any] = {"role": role, "content": ""}
        if raw_role == "function_call":
            message["tool_calls"] = _sharegpt_calls(record, field, i, item.get(content_key))
        else:
            message["content"] = _content(record, field, i, item.get(content_key))
        if item.get("tool_calls"):
            calls = json_cell(record, field, item["tool_calls"])
            if not isinstance(calls, list):
                raise record.error(f"message {i} tool_calls must be a list", field=field)
            message["tool_calls"] = [_call(record, field, i, call) for call in calls]
        if "weight" in item and item["weight"] is not None:
            if item["weight"] not in (0, 1) or isinstance(item["weight"], bool):
                raise record.error(f"message {i} weight must be 0 or 1, got {item['weight']!r}", field=field)
            if role != "assistant":
                raise record.error(f"message {i}: only assistant messages carry a weight", field=field)
            if item["weight"] == 0:
                message["train"] = False
        out.append(message)
    _merge_tool_call_turns(out)
    return out


def _merge_tool_call_turns(messages: list[dict[str, Any]]) -> None:
    """ShareGPT writes a gpt turn and its function_call as two turns: make them one assistant turn."""
    i = 0
    while i + 1 < len(messages):
        a, b = messages[i], messages[i + 1]
        if (
            a["role"] == b["role"] == "assistant"
            and b.get("tool_calls")
            and not b["content"]
            and not a.get("tool_calls")
        ):
            a["tool_calls"] = b["tool_calls"]
            del messages[i + 1]
        i += 1


def tools_cell(record: Record, column: str) -> list[dict[str, Any]] | None:
    """The tool definitions of a row (a list, or JSON text of one), or None when it has none."""
    if column not in record.data or record.data[column] in (None, "", []):
        return None
    tools = json_cell(record, column, record.data[column])
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise record.error("tools must be a list of tool definitions (JSON objects)", field=column)
    # OpenAI wraps each definition as {"type": "function", "function": {...}}; LLaMA-Factory lists them bare.
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def is_trained(message: dict[str, Any]) -> bool:
    """Whether an assistant message is learned (not marked weight 0)."""
    return message["role"] == "assistant" and message.get("train", True)


def message_text(message: dict[str, Any]) -> str:
    """A message's content with its tool calls written out, for templates and text that know no tools."""
    calls = message.get("tool_calls") or []
    written = [json.dumps(c["function"], ensure_ascii=False) for c in calls]
    return "\n".join(x for x in [message["content"], *written] if x)
