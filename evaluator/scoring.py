r"""Score GSM8K answers two ways, after cleaning Markdown and LaTeX off the model's text:

  strict    GSM8K's own convention (its reference solutions end in "#### <answer>"; lm-eval-harness'
            strict-match): the number right after the LAST "####". When that "####" is not followed
            by a number (a Markdown heading such as "#### Final Answer"), None: earlier "####" are
            not looked at.
  flexible  lm-eval-harness' flexible-extract: the last number in the text. When the last candidate
            does not parse, the one before it is taken, and so on.

The cleaning (clean_response, like simple-evals' normalize_response): Markdown emphasis (** __ * _)
and backticks go; \boxed{42}, \text{..} and other LaTeX commands leave their content; "\$" and "$"
go; the LaTeX thousands separators 1{,}000 and 1\,000 become "1,000"; the unicode minus "−" (and its
small and full-width forms) becomes "-". En and em dashes stay dashes ("5–10" is a range).

A number is an optional sign, digits with thousands commas in groups of three ("1,234,567", while
"1, 2, 3" and "1,2,3" are three numbers), optional decimals; ".5" is 0.5. A "-" is a sign only when
the digits follow it directly ("-5", "-$5", "$-5", "**-5**") and it does not come right after a
letter, digit or closing bracket: the dash of a Markdown list item ("- 42"), a spaced "5 - 3" and a
range "10-20" or "3-4 hours" are not signs. Not part of a number: a sentence's final ".", a "%"
("25%" reads 25: GSM8K answers are plain numbers), units, fractions (\frac{1}{2} reads as 1 and 2).
Predictions and gold answers compare as numbers: "18.00" equals "18", "1,000" equals "1000".

    python -c "from evaluator.scoring import strict_extract; print(strict_extract('#### **-1,234.50**'))"
"""
from __future__ import annotations

import re
from collections import Counter

from evaluator.intervals import wilson_interval  # noqa: F401  (re-exported: scores come with their interval)

_MINUSES = ("\u2212", "\ufe63", "\uff0d")   # − ﹣ －
_LATEX_THOUSANDS = re.compile(r"(?<=[0-9])(?:\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")
_LATEX_SPACE = re.compile(r"\\[,;:! ]")
_LATEX_WRAPPER = re.compile(r"\\[A-Za-z]+|\\[()\[\]]|[{}]")       # \boxed{ \text{ \( \] { }
_BETWEEN_DIGITS = re.compile(r"(?<=[0-9])[*_]+(?=[0-9])")      # 3*4 is a product, not emphasis
_MARKUP = re.compile(r"[*_`$]")

# After cleaning. The sign: a "-" with the digits right after it, not right after a letter, a digit
# or a closing bracket (there it is an operator or a range: "16-3", "3-4 hours", "COVID-19").
_NUMBER = (r"(?:(?<![\w)\]])-)?"
           r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|(?<![0-9.])\.[0-9]+)")
_NUMBER_RE = re.compile(_NUMBER)
_AFTER_HASHES = re.compile(r"\s*(" + _NUMBER + ")")
_CANONICAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")


def _ascii_minus(s: str) -> str:
    # str.replace scans with memchr; str.translate with a table looks up every character
    for m in _MINUSES:
        s = s.replace(m, "-")
    return s


def clean_response(text: str) -> str:
    """Model text without its Markdown emphasis, LaTeX wrappers and "$" signs, for extraction:
    '#### **\\$1{,}000**' -> '#### 1,000'; '\\boxed{−5}' -> '  -5 ' (LaTeX leaves spaces)."""
    s = _ascii_minus(text).replace("\\$", "$").replace("\\%", "%")
    s = _LATEX_THOUSANDS.sub(",", s)
    s = _LATEX_SPACE.sub(" ", s)
    s = _LATEX_WRAPPER.sub(" ", s)
    s = _BETWEEN_DIGITS.sub(" ", s)
    return _MARKUP.sub("", s)


def normalize(raw: str) -> str | None:
    """One number as written -> its canonical form, None when it is not a number:
    '$1,000.' -> '1000'; '18.00' -> '18'; '-0.50' -> '-0.5'; '−5' -> '-5'; '-0' -> '0'.
    Equal numbers give equal strings. Exponents, fractions, words and inner spaces are not numbers.
    Pure string work, so a 40-digit number is no problem (Decimal's 28-digit context was)."""
    s = _ascii_minus(raw.strip()).replace(",", "").replace("$", "").rstrip(".")
    m = _CANONICAL.fullmatch(s)
    if not m or not (m.group(2) or m.group(3)):
        return None
    whole = m.group(2).lstrip("0") or "0"
    frac = (m.group(3) or "").rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "-" + out if m.group(1) == "-" and out != "0" else out


def strict_extract(text: str) -> str | None:
    """The number right after the last "####" (whitespace between is fine), normalised; None when
    there is no "####" or no number right after the last one."""
    return _strict(clean_response(text))


def _strict(cleaned: str) -> str | None:
    at = cleaned.rfind("####")
    if at < 0:
        return None
    m = _AFTER_HASHES.match(cleaned, at + 4)
    return normalize(m.group(1)) if m else None


def flexible_extract(text: str) -> str | None:
    """The last number in the text that parses, normalised; None when there is none."""
    return _flexible(clean_response(text))


def _flexible(cleaned: str) -> str | None:
    for token in reversed(_NUMBER_RE.findall(cleaned)):
        value = normalize(token)
        if value is not None:
            return value
    return None


def is_correct(pred: str | None, gold: str) -> bool:
    """Whether the prediction is the gold answer as a number ('18' is '18.00', '1000' is '1,000')."""
    if pred is None:
        return False
    gold_n = normalize(gold)
    return gold_n is not None and normalize(pred) == gold_n


def majority(preds: list[str | None]) -> str | None:
    """The most frequent non-empty prediction. Ties go to the answer that appeared first among
    the samples, so the vote is deterministic for a given sample order."""
    counts = Counter(p for p in preds if p is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(p for p in preds if p is not None and counts[p] == best)


def score_samples(rows, golds: dict[int, str]):
    """[(rank, index, {"texts", "prompt_tokens", "completion_tokens"})] -> one scored Sample per
    prompt: strict and flexible on the first answer, majority votes when there are several."""
    from evaluator.records import Sample
    samples = []
    for rank, index, rec in rows:
        texts = rec["texts"]
        gold = golds[index]
        cleaned = [clean_response(t) for t in texts]     # once per text, for both rules
        strict, flexible = _strict(cleaned[0]), _flexible(cleaned[0])
        extra = {}
        if len(texts) > 1:
            sm = majority([_strict(c) for c in cleaned])
            fm = majority([_flexible(c) for c in cleaned])
            extra = {"responses": tuple(texts), "strict_maj": sm, "strict_maj_correct": is_correct(sm, gold),
                     "flexible_maj": fm, "flexible_maj_correct": is_correct(fm, gold)}
        samples.append(Sample(index=index, rank=rank, response=texts[0], gold=gold,
                              strict_pred=strict, strict_correct=is_correct(strict, gold),
                              flexible_pred=flexible, flexible_correct=is_correct(flexible, gold),
                              prompt_tokens=rec["prompt_tokens"], completion_tokens=rec["completion_tokens"],
                              **extra))
    return samples
