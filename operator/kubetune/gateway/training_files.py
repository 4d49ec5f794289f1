"""Check an uploaded JSONL training file line by line and turn each example into the trainer's row.

Formats (OpenAI's, one JSON object per line; blank lines are skipped):

- chat (supervised): ``{"messages": [{"role": "system"|"developer"|"user"|"assistant", "content": "..."}]}``
  with at least one assistant message -> the trainer's ``messages`` format (``developer`` becomes ``system``).
- preference (DPO): ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}],
  "non_preferred_output": [{"role": "assistant", ...}]}`` -> the trainer's ``preference`` format in TRL's
  conversational form (``prompt``, ``chosen``, ``rejected`` as lists of messages).
- prompt-completion (OpenAI's legacy completions format): ``{"prompt": "...", "completion": "..."}``.

Every line of a file has the same format. The first problem stops the check with a TrainingFileError naming
the line (1-based) and the field, so the upload's 400 says exactly what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT, PREFERENCE, PROMPT_COMPLETION = "chat", "preference", "prompt-completion"
# The FineTuneJob's dataset.format for each kind of file.
DATASET_FORMATS = {CHAT: "messages", PREFERENCE: "preference", PROMPT_COMPLETION: "prompt-completion"}
# The OpenAI method each kind of file trains with.
METHODS = {CHAT: "supervised", PREFERENCE: "dpo", PROMPT_COMPLETION: "supervised"}
ROLES = ("system", "developer", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
MAX_LINE_BYTES = 4 * 1024 * 1024


@dataclass
class TrainingFileError(Exception):
    """Line LINE (1-based) of the file is not a valid example: FIELD (a path inside the line) and why."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f": {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class TrainingFile:
    """Feed the lines of a file to ``row``; ``kind`` and ``examples`` describe it afterwards."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.examples = 0
        self._line = 0

    def row(self, raw: bytes | str) -> dict[str, Any] | None:
        """The trainer's row for the next line, or None for a blank line. Raises TrainingFileError."""
        self._line += 1
        line = self._line
        if len(raw) > MAX_LINE_BYTES:
            raise TrainingFileError(line, "", f"longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as error:
            raise TrainingFileError(
                line, "", f"not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
        if not text.strip():
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            raise TrainingFileError(line, "", f"not valid JSON: {error.msg} (column {error.colno})") from None
        if not isinstance(obj, dict):
            raise TrainingFileError(line, "", f"must be a JSON object, not {_type(obj)}")
        kind = _kind_of(obj)
        if kind is None:
            raise TrainingFileError(
                line, "", "has none of messages (chat), input/preferred_output/non_preferred_output (DPO) "
                "or prompt/completion: see docs/openai-api.md for the formats"
            )  # fmt: skip
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise TrainingFileError(
                line, "", f"a {kind} example in a file of {self.kind} examples: use one format per file"
            )
        row = _ROWS[kind](obj, line)
        self.examples += 1
        return row

    def finish(self) -> None:
        """Raise when the file held no example at all."""
        if self.examples == 0:
            raise TrainingFileError(max(self._line, 1), "", "the file has no examples (it is empty)")

    @property
    def dataset_format(self) -> str:
        return DATASET_FORMATS[self.kind or CHAT]


def _kind_of(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return CHAT
    if {"input", "preferred_output", "non_preferred_output"} & obj.keys():
        return PREFERENCE
    if {"prompt", "completion"} & obj.keys():
        return PROMPT_COMPLETION
    return None


def _type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _unknown(obj: dict[str, Any], allowed: set[str], line: int, where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise TrainingFileError(
            line, f"{where}{extra[0]}", f"unknown field; allowed here: {', '.join(sorted(allowed))}"
        )


def _messages(value: Any, line: int, where: str, *, need_assistant: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TrainingFileError(line, where, f"must be a non-empty array of messages, not {_type(value)}")
    out = []
    for i, message in enumerate(value):
        path = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise TrainingFileError(
                line, path, f"must be an object with role and content, not {_type(message)}"
            )
        for key in ("tool_calls", "function_call", "tool_call_id"):
            if key in message:
                raise TrainingFileError(
                    line, f"{path}.{key}", "tool calls are not supported: kubetune trains on text messages"
                )
        _unknown(message, MESSAGE_KEYS, line, f"{path}.")
        role = message.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            raise TrainingFileError(line, f"{path}.role", f"must be one of {', '.join(ROLES)} ({got})")
        content = message.get("content")
        if not isinstance(content, str):
            raise TrainingFileError(
                line, f"{path}.content",
                "missing" if content is None else f"must be a string (text only), not {_type(content)}",
            )  # fmt: skip
        if role == "assistant" and not content.strip():
            raise TrainingFileError(line, f"{path}.content", "an assistant message needs text to learn from")
        weight = message.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise TrainingFileError(line, f"{path}.weight", f"must be 0 or 1 (got {weight!r})")
        if weight == 0:
            raise TrainingFileError(
                line, f"{path}.weight", "weight 0 is not supported: kubetune learns every assistant message; "
                "leave the message out or drop the weight"
            )  # fmt: skip
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise TrainingFileError(line, where, "needs at least one assistant message (what the model learns)")
    return out


def _no_tools(obj: dict[str, Any], line: int, where: str) -> None:
    for key in ("tools", "functions"):
        if obj.get(key):
            raise TrainingFileError(
                line, f"{where}{key}", "tool definitions are not supported; leave them out"
            )


def _chat(obj: dict[str, Any], line: int) -> dict[str, Any]:
    _unknown(obj, {"messages", "tools", "functions", "parallel_tool_calls"}, line, "")
    _no_tools(obj, line, "")
    return {"messages": _messages(obj["messages"], line, "messages", need_assistant=True)}


def _single_assistant(value: Any, line: int, where: str) -> list[dict[str, str]]:
    messages = _messages(value, line, where, need_assistant=True)
    if len(messages) != 1:
        raise TrainingFileError(line, where, f"must hold exactly one assistant message, not {len(messages)}")
    return messages


def _preference(obj: dict[str, Any], line: int) -> dict[str, Any]:
    _unknown(obj, {"input", "preferred_output", "non_preferred_output"}, line, "")
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in obj:
            raise TrainingFileError(line, key, "missing (a DPO example has input, preferred_output and "
                                    "non_preferred_output)")  # fmt: skip
    source = obj["input"]
    if not isinstance(source, dict):
        raise TrainingFileError(line, "input", f"must be an object with messages, not {_type(source)}")
    _unknown(source, {"messages", "tools", "functions", "parallel_tool_calls"}, line, "input.")
    _no_tools(source, line, "input.")
    if "messages" not in source:
        raise TrainingFileError(line, "input.messages", "missing")
    prompt = _messages(source["messages"], line, "input.messages", need_assistant=False)
    return {
        "prompt": prompt,
        "chosen": _single_assistant(obj["preferred_output"], line, "preferred_output"),
        "rejected": _single_assistant(obj["non_preferred_output"], line, "non_preferred_output"),
    }


def _prompt_completion(obj: dict[str, Any], line: int) -> dict[str, Any]:
    _unknown(obj, {"prompt", "completion"}, line, "")
    row = {}
    for key in ("prompt", "completion"):
        value = obj.get(key)
        if not isinstance(value, str):
            raise TrainingFileError(
                line, key, "missing" if value is None else f"must be a string, not {_type(value)}"
            )
        row[key] = value
    if not row["completion"].strip():
        raise TrainingFileError(line, "completion", "is empty: there is nothing to learn")
    return row


_ROWS = {CHAT: _chat, PREFERENCE: _preference, PROMPT_COMPLETION: _prompt_completion}

__all__ = [
    "CHAT",
    "DATASET_FORMATS",
    "METHODS",
    "PREFERENCE",
    "PROMPT_COMPLETION",
    "TrainingFile",
    "TrainingFileError",
]
