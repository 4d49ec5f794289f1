"""Judge measured metrics against spec.evaluation.gates (pure): each gate's verdict with its numbers, and
whether the result passes (is promoted)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetune.api.v1alpha1 import Gate, GateVerdict
from kubetune.api.v1alpha1.evaluation import lower_is_better


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _relative(change: float) -> str:
    """CHANGE (positive: better than the base) in words."""
    return f"{'better' if change >= 0 else 'worse'} than the base by {abs(change):.1%}"


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class Judgement:
    verdicts: list[GateVerdict]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def message(self) -> str:
        failed = [v for v in self.verdicts if not v.passed]
        if not self.verdicts:
            return "no gates: the result is promoted"
        if not failed:
            return "passed every gate: " + "; ".join(v.message for v in self.verdicts)
        return "failed " + "; ".join(v.message for v in failed)


def judge(
    gates: Sequence[Gate],
    result: Mapping[str, float],
    base: Mapping[str, float] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> Judgement:
    """The verdict of each gate on RESULT (and BASE, the base model's metrics, for relative bounds).
    HIGHER_IS_BETTER overrides the direction of a metric (lm-eval says it per metric)."""
    base = base or {}
    directions = higher_is_better or {}
    verdicts = []
    for gate in gates:
        name = gate.metric
        lower = not directions[name] if name in directions else lower_is_better(name)
        value, reference = result.get(name), base.get(name)
        if value is None or not _known(value):
            verdicts.append(
                GateVerdict(metric=name, passed=False, message=f"{name} was not measured ({value})")
            )
            continue
        broken: list[str] = []
        kept: list[str] = []
        head = f"{name} {_fmt(value)}" + (
            f" (base {_fmt(reference)})" if reference is not None and _known(reference) else ""
        )
        for ok, words in _bounds(gate, value, reference, lower):
            (kept if ok else broken).append(words)
        text = f"{head}: " + "; ".join(broken or kept)
        verdicts.append(GateVerdict(metric=name, passed=not broken, message=text))
    return Judgement(verdicts)


def _bounds(gate: Gate, value: float, base: float | None, lower: bool):
    """(kept, words) for every bound GATE sets (LOWER: lower values are better)."""
    if gate.min is not None:
        yield (
            value >= gate.min,
            f"{'at least' if value >= gate.min else 'below the minimum'} {_fmt(gate.min)}",
        )
    if gate.max is not None:
        yield value <= gate.max, f"{'at most' if value <= gate.max else 'above the maximum'} {_fmt(gate.max)}"
    for kind, fraction in (("maxRegression", gate.max_regression), ("minImprovement", gate.min_improvement)):
        if fraction is None:
            continue
        if base is None or not _known(base):
            yield False, f"{kind} needs the base model's {gate.metric}, which was not measured"
            continue
        # the relative change, positive when the result is better than the base
        change = ((base - value) if lower else (value - base)) / abs(base) if base else 0.0
        if kind == "maxRegression":
            limit = base * (1 + fraction) if lower else base * (1 - fraction)
            ok = value <= limit if lower else value >= limit
            yield (
                ok,
                f"{_relative(change)}, {'within' if ok else 'beyond'} the allowed regression of {fraction:.1%}",
            )
        else:
            limit = base * (1 - fraction) if lower else base * (1 + fraction)
            ok = value <= limit if lower else value >= limit
            yield (
                ok,
                f"{_relative(change)}, {'meeting' if ok else 'short of'} the required improvement of {fraction:.1%}",
            )
