"""Load the dataset a FineTuneJob names and turn its rows into training examples for the task.

Every format ends as tokenized columns the trainer of the task consumes as is:
causal-lm -> input_ids + labels (-100 on prompt / non-assistant tokens); seq2seq -> input_ids + labels;
sequence-classification -> input_ids + labels (ids); token-classification -> input_ids + labels (aligned to
the first sub-word of each word); masked-lm -> input_ids windows (the collator masks them: mlm.py);
question-answering -> context windows with start/end positions, plus the offsets that map evaluation logits back
to answers (qa.py). An objective that reads other rows (preference pairs, prompts: the API's table says which
formats) gives them through its ``rows`` (kubetune_trainer/objectives). Bad data fails with a DataError naming
the file, split and column.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubetune.api.v1alpha1 import OBJECTIVES, TASK_FORMATS, DatasetSpec, ModelSpec, format_readers, parse_uri
from kubetune.api.v1alpha1.finetunejob import ColumnKey
from kubetune.api.v1alpha1.objective import FORMAT_OBJECTIVES

from . import mlm, qa, sources
from .errors import DataError

# Required and optional columns of each format (kubetune's names; dataset.columns maps them).
FORMAT_COLUMNS: dict[str, tuple[tuple[ColumnKey, ...], tuple[ColumnKey, ...]]] = {
    "text": (("text",), ()),
    "prompt-completion": (("prompt", "completion"), ()),
    "instruction": (("instruction", "output"), ("input",)),
    "messages": (("messages",), ()),
    "classification": (("text", "label"), ()),
    "seq2seq": (("source", "target"), ()),
    "preference": (("chosen", "rejected"), ("prompt",)),
    "token-tags": (("tokens", "tags"), ()),
    "question-answering": (("question", "context", "answers"), ()),
    "prompt": (("prompt",), ()),
    "unpaired-preference": (("prompt", "completion", "label"), ()),
}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
MAX_SAMPLES_KEPT = 64


@dataclass
class Sample:
    """A held-out example for generation metrics and the sample prediction."""

    prompt: str
    prompt_ids: list[int] | None = None
    reference: Any = None
    context: str | None = None  # question-answering: the passage the answer is cut from


class Reader(Protocol):
    """What data preparation needs of an objective (kubetune_trainer.objectives.base.Objective is one)."""

    @property
    def name(self) -> str: ...

    def rows(self, fmt: str, spec: DatasetSpec, tokenizer) -> Callable[[Any, str], Any] | None: ...


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    format: str
    digest: str
    label_names: list[str] | None = None
    samples: list[Sample] = field(default_factory=list)
    rows: int = 0
    eval_index: Any = None  # question-answering: contexts and window offsets to turn logits into answers


# ---------------------------------------------------------------- loading


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def _load_files(files: list[Path], uri: str, split: str = "train"):
    import datasets

    suffixes = {f.suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in FILE_BUILDERS:
        raise DataError(
            f"{uri}: cannot read {', '.join(str(f) for f in files)}: use .jsonl, .json, .csv, .parquet or .txt files"
        )
    builder = FILE_BUILDERS[suffixes.pop()]
    for f in files:
        if f.stat().st_size == 0:
            raise DataError(f"{uri}: file {f} is empty")
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as error:
        cause = error.__cause__ or error
        names = ", ".join(str(f) for f in files)
        if "corresponds to no data" in str(cause):
            raise DataError(f"{uri}: split '{split}' is empty ({names} has no rows)") from None
        raise DataError(
            f"{uri}: cannot parse {names} as {builder}: {type(cause).__name__}: {cause}"
        ) from None


def _load_local(path: Path, split: str, train_split: str, uri: str):
    import datasets

    if not path.exists():
        raise DataError(f"{uri}: {path} does not exist")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as error:
                raise DataError(f"{uri}: cannot load the saved dataset in {path}: {error}") from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{uri}: split '{split}' is not in {path}; it has {', '.join(loaded)}")
                return loaded[split]
            if split != train_split:
                raise DataError(
                    f"{uri}: {path} holds one split only; use dataset.evalFraction instead of evalSplit"
                )
            return loaded
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_BUILDERS)
        if not files:
            raise DataError(f"{uri}: no .jsonl, .json, .csv, .parquet or .txt files in {path}")
        mine = [
            f for f in files if f.stem == split or f.stem.startswith(f"{split}-") or f.parent.name == split
        ]
        if not mine:
            if split != train_split:
                raise DataError(
                    f"{uri}: no file for split '{split}' in {path} (expected {split}.jsonl, {split}-*.parquet, ...)"
                )
            mine = files
        return _load_files(mine, uri, split)
    if split != train_split:
        raise DataError(
            f"{uri}: a single file holds the training split only; use dataset.evalFraction, or a folder with {split}.jsonl"
        )
    return _load_files([path], uri, split)


def _load_hf(uri: str, spec: DatasetSpec, split: str):
    import datasets

    repo = parse_uri(uri, ("hf",)).hf_repo_id
    try:
        return datasets.load_dataset(repo, name=spec.config, split=split, token=_token())
    except Exception as error:
        raise DataError(f"{uri}: cannot load split '{split}': {type(error).__name__}: {error}") from None


def _fetch(spec: DatasetSpec) -> Path | None:
    """A local path for pvc/file/s3/https datasets (None for hf://)."""
    scheme = spec.uri.split("://", 1)[0]
    if scheme in ("pvc", "file"):
        return sources.local_path(spec.uri)
    if scheme == "s3":
        digest = hashlib.sha256(spec.uri.encode()).hexdigest()[:12]
        return sources.download_s3(spec.uri, sources.work_dir("datasets", digest))
    if scheme == "https":
        digest = hashlib.sha256(spec.uri.encode()).hexdigest()[:12]
        return sources.download_https(spec.uri, sources.work_dir("datasets", digest))
    return None


def load_splits(spec: DatasetSpec):
    """(train, eval or None) as raw datasets.Dataset objects, before renaming and tokenizing."""
    local = _fetch(spec)

    def load(split: str):
        if local is None:
            return _load_hf(spec.uri, spec, split)
        return _load_local(local, split, spec.train_split, spec.uri)

    train = load(spec.train_split)
    evaluation = load(spec.eval_split) if spec.eval_split else None
    return train, evaluation


def digest(*parts) -> str:
    """sha256 over the Arrow data of the raw splits: the same rows give the same digest."""
    h = hashlib.sha256()
    for ds in parts:
        if ds is None:
            continue
        table = ds.data
        for name in table.column_names:
            h.update(name.encode())
            for chunk in table.column(name).chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- columns and format


def rename_columns(ds, spec: DatasetSpec, split: str):
    for key, column in spec.columns.items():
        if column == key:
            continue
        if column not in ds.column_names:
            raise DataError(
                f"{spec.uri}: column '{column}' (dataset.columns.{key}) is not in split '{split}'; "
                f"it has {', '.join(ds.column_names)}"
            )
        if key in ds.column_names:
            ds = ds.remove_columns(key)
        ds = ds.rename_column(column, key)
    return ds


def detect_format(
    columns: list[str], task: str, uri: str = "the dataset", formats: tuple[str, ...] | None = None
) -> str:
    formats = formats or TASK_FORMATS[task]
    for fmt in formats:
        if _has_columns(columns, fmt):
            return fmt
    wanted = "; ".join(f"{fmt}: {', '.join(FORMAT_COLUMNS[fmt][0])}" for fmt in formats)
    raise DataError(
        f"{uri}: cannot tell the dataset format from its columns ({', '.join(columns)}) for task {task}; "
        f"expected columns for {wanted}. Set dataset.format, or map your columns with dataset.columns"
    )


def _has_columns(columns: list[str], fmt: str) -> bool:
    return all(c in columns for c in FORMAT_COLUMNS[fmt][0])


def resolve_format(spec: DatasetSpec, task: str, columns: list[str], objective: str | None = None) -> str:
    """dataset.format, detected from COLUMNS when auto, among the formats OBJECTIVE reads (the API's table; its
    task's when it names none, or when OBJECTIVE is None)."""
    own = OBJECTIVES[objective].formats if objective else None
    formats = own or TASK_FORMATS[task]
    fmt: str = spec.format
    if fmt == "auto":
        # data that only other objectives read says which objective fits (the format with most columns first)
        others = sorted(FORMAT_OBJECTIVES, key=lambda f: -len(FORMAT_COLUMNS[f][0]))
        fmt = next((f for f in (*formats, *others) if _has_columns(columns, f)), None) or detect_format(
            columns, task, spec.uri, formats
        )
    if fmt in formats:
        return fmt
    readers = format_readers(fmt)
    if readers:
        raise DataError(
            f"{spec.uri} holds {fmt} data ({', '.join(FORMAT_COLUMNS[fmt][0])}), which objective.type "
            f"{' or '.join(readers)} reads: set objective.type {' or '.join(readers)}"
        )
    if own:
        raise DataError(f"dataset.format {fmt} does not fit objective {objective}; use {' or '.join(own)}")
    raise DataError(f"dataset.format {fmt} does not fit model.task {task}; use one of {', '.join(formats)}")


def check_columns(ds, fmt: str, spec: DatasetSpec, split: str) -> None:
    for column in FORMAT_COLUMNS[fmt][0]:
        if column not in ds.column_names:
            original = spec.columns.get(column)
            hint = (
                f" (mapped from '{original}')" if original else f"; map yours with dataset.columns.{column}"
            )
            raise DataError(
                f"{spec.uri}: format {fmt} needs column '{column}'{hint}, which split '{split}' does not have "
                f"(columns: {', '.join(ds.column_names)})"
            )


def _value(example: dict, column: str, index: int, split: str, uri: str, kind: type | tuple = str):
    value = example.get(column)
    if value is None or (kind is str and not isinstance(value, str)):
        what = "empty" if value is None else f"a {type(value).__name__}, not text"
        raise DataError(f"{uri}: column '{column}' is {what} in row {index} of split '{split}'")
    return value


# ---------------------------------------------------------------- labels


def _label_ids(
    values: list, names: list[str] | None, num_labels: int, column: str, uri: str
) -> tuple[dict, list[str]]:
    """A mapping value -> id, and the label names. Raises when a value is out of range or unknown."""
    strings = [v for v in values if isinstance(v, str)]
    if strings:
        if names is None:
            names = sorted(set(strings))
            if len(names) > num_labels:
                raise DataError(
                    f"{uri}: column '{column}' has {len(names)} distinct labels ({', '.join(names[:10])}) "
                    f"but model.numLabels is {num_labels}"
                )
            names = names + [f"LABEL_{i}" for i in range(len(names), num_labels)]
        mapping = {name: i for i, name in enumerate(names)}
        for v in strings:
            if v not in mapping:
                raise DataError(
                    f"{uri}: column '{column}' has label {v!r}, which is not in model.labels {names}"
                )
        return mapping, names
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_labels:
            raise DataError(
                f"{uri}: column '{column}' has label {v!r}, out of range 0..{num_labels - 1} (model.numLabels is {num_labels})"
            )
    return {}, names or [f"LABEL_{i}" for i in range(num_labels)]


def _class_label_names(ds, column: str) -> list[str] | None:
    import datasets

    feature = ds.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Sequence | list) and isinstance(
        getattr(feature, "feature", None) or (feature[0] if isinstance(feature, list) else None),
        datasets.ClassLabel,
    ):
        inner = feature.feature if hasattr(feature, "feature") else feature[0]
        return list(inner.names)
    return None


# ---------------------------------------------------------------- tokenizing


def _truncate(ids: list[int], labels: list[int], max_length: int) -> dict:
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def instruction_prompt(instruction: str, input_text: str | None) -> str:
    if input_text:
        return INSTRUCTION_INPUT_TEMPLATE.format(instruction=instruction, input=input_text)
    return INSTRUCTION_TEMPLATE.format(instruction=instruction)


def _chat(tokenizer, messages, template: str | None, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)


def messages_segments(
    tokenizer, messages: list[dict], template: str | None, where: str
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces, rendering the template incrementally."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise DataError(f"{where}: each message needs 'role' and 'content'")
    full = _chat(tokenizer, messages, template)
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _chat(tokenizer, messages[:i], template, add_generation_prompt=True) if i else ""
        end = _chat(tokenizer, messages[: i + 1], template)
        if not (full.startswith(end) and end.startswith(start) and len(start) >= pos):
            raise DataError(
                f"{where}: the chat template does not render the conversation incrementally, so assistant turns "
                "cannot be located; set dataset.chatTemplate to a template that does"
            )
        segments.append((full[pos : len(start)], False))
        segments.append((full[len(start) : len(end)], True))
        pos = len(end)
    if not any(is_assistant for _, is_assistant in segments):
        raise DataError(f"{where}: the conversation has no assistant message to learn from")
    segments.append((full[pos:], False))
    return [(text, a) for text, a in segments if text]


def _tokenize_causal(ds, fmt: str, spec: DatasetSpec, tokenizer, split: str):
    uri, max_length, eos = spec.uri, spec.max_length, _eos(tokenizer)
    template = spec.chat_template

    def prompt_completion(prompt: str, completion: str) -> dict:
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
        return _truncate(p + c, [-100] * len(p) + c, max_length)

    def fn(example: dict, index: int) -> dict:
        if fmt == "text":
            text_ids = (
                tokenizer(_value(example, "text", index, split, uri), add_special_tokens=True)["input_ids"]
                + eos
            )
            return _truncate(text_ids, list(text_ids), max_length)
        if fmt == "prompt-completion":
            return prompt_completion(
                _value(example, "prompt", index, split, uri), _value(example, "completion", index, split, uri)
            )
        if fmt == "instruction":
            prompt = instruction_prompt(
                _value(example, "instruction", index, split, uri), example.get("input")
            )
            return prompt_completion(prompt, _value(example, "output", index, split, uri))
        # messages
        where = f"{uri}: column 'messages' in row {index} of split '{split}'"
        ids: list[int] = []
        labels: list[int] = []
        for text, is_assistant in messages_segments(
            tokenizer, _value(example, "messages", index, split, uri, list), template, where
        ):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if is_assistant else [-100] * len(piece)
        return _truncate(ids, labels, max_length)

    if fmt == "messages" and template is None and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{uri}: format messages needs a chat template and the tokenizer has none; set dataset.chatTemplate"
        )
    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")


def _tokenize_seq2seq(ds, fmt: str, spec: DatasetSpec, tokenizer, split: str):
    uri = spec.uri

    def fn(example: dict, index: int) -> dict:
        if fmt == "seq2seq":
            source, target = (
                _value(example, "source", index, split, uri),
                _value(example, "target", index, split, uri),
            )
        elif fmt == "prompt-completion":
            source, target = (
                _value(example, "prompt", index, split, uri),
                _value(example, "completion", index, split, uri),
            )
        else:
            source = instruction_prompt(
                _value(example, "instruction", index, split, uri), example.get("input")
            )
            target = _value(example, "output", index, split, uri)
        out = tokenizer(spec.source_prefix + source, max_length=spec.max_length, truncation=True)
        labels = tokenizer(text_target=target, max_length=spec.target_max_length, truncation=True)[
            "input_ids"
        ]
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": labels}

    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")


def _tokenize_classification(ds, spec: DatasetSpec, tokenizer, mapping: dict, split: str):
    uri = spec.uri

    def fn(example: dict, index: int) -> dict:
        out = tokenizer(
            _value(example, "text", index, split, uri), max_length=spec.max_length, truncation=True
        )
        label = example["label"]
        return {**out, "labels": mapping.get(label, label) if mapping else int(label)}

    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")


def _tokenize_token_tags(ds, spec: DatasetSpec, tokenizer, mapping: dict, split: str):
    uri = spec.uri
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{uri}: token-tags needs a fast tokenizer (word_ids) and this model's tokenizer is not one"
        )

    def fn(example: dict, index: int) -> dict:
        tokens = _value(example, "tokens", index, split, uri, list)
        tags = _value(example, "tags", index, split, uri, list)
        if len(tokens) != len(tags):
            raise DataError(
                f"{uri}: row {index} of split '{split}' has {len(tokens)} 'tokens' but {len(tags)} 'tags'"
            )
        out = tokenizer(tokens, is_split_into_words=True, max_length=spec.max_length, truncation=True)
        labels, previous = [], None
        for word in out.word_ids():
            if word is None or word == previous:
                labels.append(-100)
            else:
                tag = tags[word]
                labels.append(mapping.get(tag, tag) if mapping else int(tag))
            previous = word
        return {**out, "labels": labels}

    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")


# ---------------------------------------------------------------- samples


def _samples(ds, fmt: str, spec: DatasetSpec, tokenizer) -> list[Sample]:
    out: list[Sample] = []
    for row in ds.select(range(min(MAX_SAMPLES_KEPT, len(ds)))):
        try:
            if fmt == "text":
                words = row["text"].split()
                half = max(1, len(words) // 2)
                out.append(Sample(" ".join(words[:half]), None, " ".join(words[half:])))
            elif fmt == "prompt-completion":
                out.append(Sample(row["prompt"], None, row["completion"]))
            elif fmt == "instruction":
                out.append(
                    Sample(instruction_prompt(row["instruction"], row.get("input")), None, row["output"])
                )
            elif fmt == "messages":
                msgs = row["messages"]
                last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
                prompt = _chat(tokenizer, msgs[:last], spec.chat_template, add_generation_prompt=True)
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                out.append(Sample(prompt, ids, msgs[last]["content"]))
            elif fmt == "preference":
                out.append(Sample(row.get("prompt") or "", None, row["chosen"]))
            elif fmt == "seq2seq":
                out.append(Sample(spec.source_prefix + row["source"], None, row["target"]))
            elif fmt == "classification":
                out.append(Sample(row["text"], None, row["label"]))
            elif fmt == "token-tags":
                out.append(Sample(" ".join(row["tokens"]), None, row["tags"]))
            elif fmt == "question-answering":
                answers = row["answers"]["text"]
                out.append(Sample(row["question"], None, answers[0] if answers else "", row["context"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ---------------------------------------------------------------- entry point


def prepare(
    spec: DatasetSpec, model: ModelSpec, tokenizer, seed: int = 42, objective: Reader | None = None
) -> PreparedData:
    """Load, check, split and tokenize the dataset for the model's task, or into the rows OBJECTIVE's trainer
    reads (None: the task's own formats and tokenization)."""
    train, evaluation = load_splits(spec)
    data_digest = digest(train, evaluation)
    train = rename_columns(train, spec, spec.train_split)
    if evaluation is not None and spec.eval_split:  # load_splits reads an eval split only when it is named
        evaluation = rename_columns(evaluation, spec, spec.eval_split)

    task = model.task
    fmt = resolve_format(spec, task, train.column_names, objective.name if objective else None)

    for name, ds in ((spec.train_split, train), (spec.eval_split, evaluation)):
        if ds is None or name is None:
            continue
        if len(ds) == 0:
            raise DataError(f"{spec.uri}: split '{name}' is empty")
        check_columns(ds, fmt, spec, name)

    if spec.eval_fraction > 0 and evaluation is None:
        if len(train) < 2:
            raise DataError(
                f"{spec.uri}: split '{spec.train_split}' has {len(train)} row(s), too few to hold out evalFraction"
            )
        parts = train.train_test_split(test_size=spec.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    if spec.max_samples is not None:
        train = train.select(range(min(spec.max_samples, len(train))))
        if evaluation is not None:
            evaluation = evaluation.select(range(min(spec.max_samples, len(evaluation))))

    samples = _samples(evaluation if evaluation is not None else train, fmt, spec, tokenizer)
    # chain.base_model_spec resolves a model.fineTuneJobRef to its uri before this; named in error messages
    model_uri = model.uri or "the base model"
    label_names = None
    rows = objective.rows(fmt, spec, tokenizer) if objective else None
    if rows is not None:
        tokenize = rows
    elif task == "causal-lm":
        tokenize = lambda ds, split: _tokenize_causal(ds, fmt, spec, tokenizer, split)  # noqa: E731
    elif task == "seq2seq":
        tokenize = lambda ds, split: _tokenize_seq2seq(ds, fmt, spec, tokenizer, split)  # noqa: E731
    elif task == "masked-lm":
        mlm.require_mask_token(tokenizer, model_uri)
        tokenize = lambda ds, split: mlm.tokenize(ds, spec, tokenizer, split)  # noqa: E731
    elif task == "question-answering":
        qa.require_fast_tokenizer(tokenizer, model_uri)
        tokenize = lambda ds, split: qa.train_features(ds, spec, tokenizer, split)  # noqa: E731
    else:
        column = "label" if fmt == "classification" else "tags"
        names = model.labels or _class_label_names(train, column)
        values = []
        for ds in (train, evaluation):
            if ds is not None:
                for v in ds[column]:
                    if fmt == "token-tags":
                        if v is None:
                            raise DataError(f"{spec.uri}: column 'tags' is empty in a row")
                        values.extend(v)
                    else:
                        if v is None:
                            raise DataError(f"{spec.uri}: column 'label' is empty in a row")
                        values.append(v)
        mapping, label_names = _label_ids(values, names, model.num_labels or 0, column, spec.uri)
        if fmt == "classification":
            tokenize = lambda ds, split: _tokenize_classification(ds, spec, tokenizer, mapping, split)  # noqa: E731
        else:
            tokenize = lambda ds, split: _tokenize_token_tags(ds, spec, tokenizer, mapping, split)  # noqa: E731

    count = len(train)
    train = tokenize(train, spec.train_split)
    eval_index = None
    if evaluation is not None and task == "question-answering":  # windows plus what maps them back to answers
        evaluation, eval_index = qa.eval_features(evaluation, spec, tokenizer, spec.eval_split or "eval")
    elif evaluation is not None:
        evaluation = tokenize(evaluation, spec.eval_split or "eval")
    return PreparedData(train, evaluation, fmt, data_digest, label_names, samples, count, eval_index)
