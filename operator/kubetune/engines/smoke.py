"""What a smoke test asks a serving engine and how its answers are judged (pure; the calls themselves are made
by reconcile/smoketest.py and reconcile/openai_check.py, whichever protocol the engine speaks).

One answer per target (the base model and each adapter), greedy decoding so the output is deterministic,
and the same judgement for every engine: the generated text must match ``expect`` (a regular expression,
``re.search``) and at least one token must have been generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_ATTEMPTS = 3
MAX_SHOWN_OUTPUT = 200


@dataclass
class TargetResult:
    """The outcome of one generate call."""

    target: str
    """"base model" or "adapter NAME"."""
    ok: bool
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    generated_tokens: int | None = None

    def describe(self) -> str:
        if self.error:
            return f"{self.target}: {self.error}"
        return f"{self.target}: generated {show(self.output)}"


@dataclass
class SmokeTestResult:
    """All generate calls of one smoke test."""

    endpoint: str
    results: list[TargetResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    @property
    def message(self) -> str:
        """One line for a condition/Event: the failures first, or what passed."""
        failed = [r for r in self.results if not r.ok]
        if failed:
            return f"smoke test against {self.endpoint} failed: " + "; ".join(r.describe() for r in failed)
        return f"smoke test against {self.endpoint} passed: " + "; ".join(r.describe() for r in self.results)


def show(text: str | None) -> str:
    text = text or ""
    if len(text) > MAX_SHOWN_OUTPUT:
        text = text[:MAX_SHOWN_OUTPUT] + "..."
    return repr(text)


def judge(target: str, text: str, tokens: int | None, expect: str | None, seconds: float) -> TargetResult:
    """The verdict on one generated answer: TEXT must match EXPECT (when given), and something was generated
    (TOKENS: the server's count of generated tokens, None when it gives none)."""
    if expect is not None and not re.search(expect, text):
        mismatch = f"output {show(text)} does not match expect {expect!r}"
        return TargetResult(
            target, False, output=text, error=mismatch, seconds=seconds, generated_tokens=tokens
        )
    if not text and not tokens:
        return TargetResult(target, False, output=text, error="generated no tokens", seconds=seconds)
    return TargetResult(target, True, output=text, seconds=seconds, generated_tokens=tokens)
