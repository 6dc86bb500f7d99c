"""Score GSM8K answers two ways: strict (the number after the last "####") and flexible (the
last number anywhere). Both normalise "," "$" and a trailing "." and compare as numbers, so
"18.00" equals "18".

    python -c "from evaluator.scoring import strict_extract; print(strict_extract('#### $1,000.'))"
"""
from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal, InvalidOperation

# A number as GSM8K answers write it: optional sign and "$", digits with thousands commas,
# optional decimals. The trailing "." of a sentence is not part of it.
_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_STRICT = re.compile(r"####\s*(" + _NUMBER + ")")
_FLEXIBLE = re.compile(_NUMBER)


def normalize(raw: str) -> str | None:
    """'$1,000.' -> '1000'; '18.00' -> '18'; None when it is not a number."""
    s = raw.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def strict_extract(text: str) -> str | None:
    """The number after the last "####", normalised; None when there is none."""
    found = _STRICT.findall(text)
    return normalize(found[-1]) if found else None


def flexible_extract(text: str) -> str | None:
    """The last number in the text, normalised; None when there is none."""
    found = _FLEXIBLE.findall(text)
    return normalize(found[-1]) if found else None


def is_correct(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    gold_n = normalize(gold)
    return gold_n is not None and Decimal(pred) == Decimal(gold_n)


def majority(preds: list[str | None]) -> str | None:
    """The most frequent non-empty prediction. Ties go to the answer that appeared first among
    the samples, so the vote is deterministic for a given sample order."""
    counts = Counter(p for p in preds if p is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(p for p in preds if p is not None and counts[p] == best)
