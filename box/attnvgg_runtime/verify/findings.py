"""A failed check as a record: which case, which check, what it measured against what budget, and
the margin, with the sentence a person reads. The gate, the box's verify, the report, the JUnit
file and the CLI read these fields; none of them parses a message back."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    check: str  # what failed: a budget key (rel_l2_max, cosine_min, ...) or a named check
    message: str  # what a person reads: the figure, the budget, and what it means
    case: str | None = None  # the input case ("heldout", a shape), None for the artifact as a whole
    measured: float | None = None
    budget: float | None = None
    margin: float | None = None  # allowed / measured (below 1: the breach), where one figure is judged

    def __str__(self) -> str:
        return f"{self.case}: {self.message}" if self.case else self.message

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | str) -> Finding:
        """A record from parity.json or verify.json; a message alone (files before manifest
        schema 1.7) becomes a finding of unknown check for the artifact as a whole."""
        if isinstance(data, str):
            return cls("unknown", data)
        return cls(**data)

    def in_case(self, case: str) -> Finding:
        return Finding(self.check, self.message, case, self.measured, self.budget, self.margin)


def error_margin(measured: float, budget: float) -> float | None:
    """allowed / measured for an error budget (rel L2: at most the budget)."""
    return budget / measured if measured > 0 else None


def agreement_margin(measured: float, budget: float) -> float | None:
    """allowed / measured for an agreement budget (cosine, top-k: at least the budget), both read
    as errors (1 - value)."""
    return (1 - budget) / (1 - measured) if measured < 1 else None
