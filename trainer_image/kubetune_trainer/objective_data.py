"""Rows in the columns TRL's preference and RL trainers read, for the objectives whose data is not the task's
tokenization (each objective's module says which it uses):

- preference pairs (DPOTrainer, RewardTrainer): prompt (optional), chosen, rejected -- format preference;
- unpaired preferences (KTOTrainer): prompt, completion, label (bool) -- format unpaired-preference;
- prompts (GRPOTrainer, RLOOTrainer): prompt -- format prompt, messages (the conversation up to its last
  assistant turn, as chat messages) or prompt-completion (the prompt only). Other columns stay: TRL hands them
  to the reward functions (e.g. `solution` for the accuracy reward).
Text is left as text (or chat messages): TRL tokenizes.
"""

from __future__ import annotations

from .errors import DataError

TRUE = {"true", "yes", "1", "good", "desirable"}
FALSE = {"false", "no", "0", "bad", "undesirable"}


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


PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def preference_rows(ds, fmt: str, uri: str, split: str):
    """The prompt (where there is one), chosen and rejected columns; each answer is text or messages."""

    def check(example: dict, index: int) -> None:
        for column in ("chosen", "rejected"):
            _text(example, column, index, split, uri)

    ds.map(check, with_indices=True, desc=f"Checking {split}")
    return ds.select_columns([c for c in PAIR_COLUMNS if c in ds.column_names])


def unpaired_rows(ds, fmt: str, uri: str, split: str):
    """prompt, completion and a boolean label; both labels must occur."""

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


def prompt_rows(ds, fmt: str, uri: str, split: str):
    """The prompts of a split (format prompt, messages or prompt-completion) for the policy to answer."""
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
