"""Rows for the preference and RL objectives, in the columns TRL's trainers read:

- reward (RewardTrainer): prompt (optional), chosen, rejected -- format preference;
- kto (KTOTrainer): prompt, completion, label (bool) -- format unpaired-preference;
- grpo / rloo (GRPOTrainer, RLOOTrainer): prompt -- format prompt, messages (the conversation up to its last
  assistant turn, as chat messages) or prompt-completion (the prompt only). Other columns stay: TRL hands them
  to the reward functions (e.g. `solution` for the accuracy reward).
data.prepare calls ``formats_for`` (auto detection and the allowed formats) and ``rows_for`` (the columns).
"""

from __future__ import annotations

from kubetune.api.v1alpha1.finetunejob import ColumnKey

from .errors import DataError

PREFERENCE_OBJECTIVES = ("reward", "kto", "grpo", "rloo")
RL = ("grpo", "rloo")
# (required, optional) columns of the formats added for these objectives
FORMAT_COLUMNS: dict[str, tuple[tuple[ColumnKey, ...], tuple[ColumnKey, ...]]] = {
    "prompt": (("prompt",), ()),
    "unpaired-preference": (("prompt", "completion", "label"), ()),
}
# The formats each objective reads, in the order auto detection tries them.
OBJECTIVE_FORMATS: dict[str, tuple[str, ...]] = {
    "reward": ("preference",),
    "kto": ("unpaired-preference",),
    "grpo": ("messages", "prompt-completion", "prompt"),
    "rloo": ("messages", "prompt-completion", "prompt"),
}
TRUE = {"true", "yes", "1", "good", "desirable"}
FALSE = {"false", "no", "0", "bad", "undesirable"}


def formats_for(objective: str) -> tuple[str, ...] | None:
    """The dataset formats OBJECTIVE reads (None: the task's usual formats)."""
    return OBJECTIVE_FORMATS.get(objective)


def _label(value, index: int, split: str, uri: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise DataError(
        f"{uri}: column 'label' is {value!r} in row {index} of split '{split}'; unpaired-preference labels are "
        "true (desirable completion) or false (undesirable)"
    )


def _text(example: dict, column: str, index: int, split: str, uri: str) -> str | list:
    """Text, or a conversation (a list of {role, content} messages): TRL's trainers take both."""
    value = example.get(column)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    raise DataError(
        f"{uri}: column '{column}' in row {index} of split '{split}' is empty or neither text nor a list of "
        "messages with 'role' and 'content'"
    )


def rows_for(ds, fmt: str, objective: str, uri: str, split: str):
    """The dataset with the columns OBJECTIVE's TRL trainer reads (text; TRL tokenizes)."""
    if objective == "reward":
        keep = [c for c in ("prompt", "chosen", "rejected") if c in ds.column_names]

        def check(example: dict, index: int) -> None:
            for column in ("chosen", "rejected"):
                _text(example, column, index, split, uri)

        ds.map(check, with_indices=True, desc=f"Checking {split}")
        return ds.select_columns(keep)
    if objective == "kto":

        def unpaired(example: dict, index: int) -> dict:
            return {
                "prompt": _text(example, "prompt", index, split, uri),
                "completion": _text(example, "completion", index, split, uri),
                "label": _label(example.get("label"), index, split, uri),
            }

        out = ds.map(unpaired, with_indices=True, desc=f"Checking {split}")
        labels = set(out["label"])
        if labels != {True, False}:
            only = "desirable" if True in labels else "undesirable"
            raise DataError(
                f"{uri}: split '{split}' has only {only} completions; KTO needs both labels (true and false)"
            )
        return out.select_columns(["prompt", "completion", "label"])
    if objective in RL:
        return _prompts(ds, fmt, uri, split)
    raise DataError(f"objective {objective} has no preference or prompt rows")


def _prompts(ds, fmt: str, uri: str, split: str):
    if fmt == "messages":

        def conversation(example: dict, index: int) -> dict:
            messages = example.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise DataError(f"{uri}: column 'messages' in row {index} of split '{split}' is not a list")
            end = len(messages)
            while end and messages[end - 1].get("role") == "assistant":
                end -= 1  # the policy writes the answer: drop the dataset's own
            if end == 0:
                raise DataError(
                    f"{uri}: row {index} of split '{split}' has no message before the assistant's"
                )
            return {"prompt": [{"role": m["role"], "content": m["content"]} for m in messages[:end]]}

        return ds.map(
            conversation, with_indices=True, remove_columns=["messages"], desc=f"Prompts of {split}"
        )

    def prompt(example: dict, index: int) -> dict:
        return {"prompt": _text(example, "prompt", index, split, uri)}

    drop = [c for c in ("completion",) if c in ds.column_names]  # the policy writes the completion
    return ds.map(prompt, with_indices=True, remove_columns=drop, desc=f"Prompts of {split}")
