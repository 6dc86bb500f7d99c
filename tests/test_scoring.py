r"""Answer extraction, number comparison, majority vote and the Wilson interval (evaluator/scoring.py).

The table holds what instruct models really write after "Let's think step by step and output the
final answer after '####'": Markdown lists and bold, headings, \boxed{}, LaTeX thousands, "$",
unicode minus. Rows the extraction before the Markdown fix read wrongly end in was(strict, flexible):
what it gave: a record of why the rule changed (commit b6bc970), not something tested here, since a
frozen copy of the old extractor would only test the table against itself.

    .venv/bin/python -m pytest tests/test_scoring.py -q
"""
from __future__ import annotations

import random
import re
from decimal import Decimal
from statistics import NormalDist

import pytest

from evaluator import scoring
from evaluator.scoring import (clean_response, flexible_extract, is_correct, majority, normalize,
                               strict_extract, wilson_interval)


def was(strict, flexible):
    """What the extraction before the fix gave for this row (strict, flexible)."""
    return (strict, flexible)


RAISED = "raised decimal.InvalidOperation"

JANET = "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4, so she sells 16 - 3 - 4 = 9 eggs."

# (text, strict, flexible, was): was is None where the old extraction already gave (strict, flexible)
CASES = [
    # -- the cases that were in tests/test_units.py
    ("so the total is #### $1,000.", "1000", "1000", None),
    ("#### -3", "-3", "-3", None),
    ("The answer is 18.00", None, "18", None),
    ("#### 18.00", "18", "18", None),
    ("no number here", None, None, None),
    ("#### 5 and then #### 7 remains", "7", "7", None),
    ("#### 12\nBut 3 apples are left.", "12", "3", None),
    ("#### 1,234,567", "1234567", "1234567", None),
    ("It costs $2.50.", None, "2.5", None),
    ("####", None, None, None),
    # -- Markdown list items: the dash is a bullet, not a minus sign
    ("Answer:\n- 42", None, "42", was(None, "-42")),
    (JANET + "\n\n**Final answer:**\n- 18 dollars", None, "18", was(None, "-18")),
    ("A robe takes 2 bolts of blue fiber and 2 / 2 = 1 bolt of white fiber.\n\n"
     "- Blue: 2\n- White: 1\n\n**Total:**\n- 3 bolts", None, "3", was(None, "-3")),
    ("The steps:\n\n- 16 eggs are laid\n- 7 are used\n- 9 are sold", None, "9", was(None, "-9")),
    ("Expenses:\n- **Rent:** $1,200\n- **Food:** $300\n\nTotal: $1,500", None, "1500", None),
    ("Spent:\n- $12 on lunch", None, "12", None),
    ("- **Profit:** -$12", None, "-12", None),
    # -- bold, italics, backticks and LaTeX around the answer
    ("#### **42**", "42", "42", was(None, "42")),
    ("#### __42__", "42", "42", was(None, "42")),
    ("#### `42`", "42", "42", was(None, "42")),
    ("**#### 18**", "18", "18", None),
    (JANET + "\nShe makes 9 * $2 = $18 every day.\n\n#### **$18**", "18", "18", was(None, "18")),
    ("So the new value of the house is $200,000 and his profit is **$70,000**.\n\n#### **70,000**",
     "70000", "70000", was(None, "70000")),
    ("The final answer is $\\boxed{18}$.", None, "18", None),
    ("#### $\\boxed{18}$", "18", "18", was(None, "18")),
    ("#### \\(42\\)", "42", "42", was(None, "42")),
    ("Therefore, the answer is $\\boxed{1{,}080}$.", None, "1080", was(None, "80")),
    ("The total is $1\\,080$ dollars.", None, "1080", was(None, "80")),
    ("\\[\n\\boxed{-5}\n\\]", None, "-5", None),
    ("The answer is \\boxed{\\text{42 apples}}", None, "42", None),
    ("The answer is **-5**.", None, "-5", None),
    ("| Item | Cost |\n|------|------|\n| Pens | $3 |\n| **Total** | **$15** |", None, "15", None),
    ("So 3*4=12 cookies.", None, "12", None),
    # -- signs: attached means negative, "$" on either side
    ("#### $-5", "-5", "-5", was(None, "-5")),
    ("#### -$5", "-5", "-5", None),
    ("####-42", "-42", "-42", None),
    ("#### −5", "-5", "-5", was(None, "5")),
    ("The temperature is now −3 °C.", None, "-3", was(None, "3")),
    ("It will be -3 degrees tonight.", None, "-3", None),
    ("x = -5, so 10/-2 = -5", None, "-5", None),
    ("The change is -.5 degrees", None, "-0.5", was(None, "5")),
    # -- dashes between numbers: a minus operator or a range, never a sign
    ("The difference is between 5 - 3", None, "3", was(None, "-3")),
    ("The remaining eggs are 16-3-4", None, "4", was(None, "-4")),
    ("It takes 3-4 hours.", None, "4", was(None, "-4")),
    ("The meeting is on 2024-01-15", None, "15", was(None, "-15")),
    ("It takes 5–10 minutes", None, "10", None),       # en dash: a range
    # -- thousands commas versus lists
    ("The answer is $1,234.", None, "1234", None),
    ("Pick one of 1, 2, 3", None, "3", None),
    ("The options are 1,2,3", None, "3", was(None, "123")),
    ("#### 1,234.50", "1234.5", "1234.5", None),
    ("####  1,234.50", "1234.5", "1234.5", None),
    # -- decimals, percentages, sentence ends
    ("Each slice weighs 0.5 pounds.", None, "0.5", None),
    ("She needs .5 cups of sugar.", None, "0.5", was(None, "5")),   # ".5" is 0.5, decided
    ("The discount is 25%.", None, "25", None),                     # "%" is not part of it
    ("#### 18.", "18", "18", None),
    # -- strict reads only the last "####": a heading there means no strict answer
    ("#### 1. Eggs laid\n16 eggs a day.\n#### 2. Eggs sold\n16 - 3 - 4 = 9\n#### Final Answer\n9 * 2 = 18",
     None, "18", was("2", "18")),
    ("#### 5\n\n#### Final answer", None, "5", was("5", "5")),
    ("#### The answer is 18", None, "18", None),
    ("####\n42", "42", "42", None),
    ("#### 42\n\nQuestion: Tom has 7 apples.", "42", "7", None),
    # -- the last candidate did not parse (old: None, no fall back), or could not be normalised
    (JANET + " She makes 9 * 2 = 18 dollars.\n\n---\n\n18", None, "18", was(None, None)),
    ("The answer is " + "1" * 35, None, "1" * 35, RAISED),
]
_IDS = [re.sub(r"\s+", " ", c[0])[:40] for c in CASES]


@pytest.mark.parametrize("text,strict,flexible,old", CASES, ids=_IDS)
def test_extraction_table(text, strict, flexible, old):
    assert strict_extract(text) == strict
    assert flexible_extract(text) == flexible


def test_the_table_is_large_and_has_no_duplicates():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_fall_back_to_the_previous_number_when_the_last_does_not_parse(monkeypatch):
    real = scoring.normalize
    monkeypatch.setattr(scoring, "normalize", lambda raw: None if raw == "7" else real(raw))
    assert flexible_extract("3 apples, then 7") == "3"
    assert strict_extract("#### 3\n#### 7") is None            # strict never looks back


# ---------------------------------------------------------------- normalize, property style

_CANONICAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")


def _random_number(rng):
    whole = str(rng.choice([0, rng.randrange(10), rng.randrange(1000), rng.randrange(10 ** 9)]))
    frac = rng.choice(["", "", str(rng.randrange(100)).zfill(2), "5", "50", "000"])
    sign = rng.choice(["", "", "-"])
    return sign, whole, frac


def _written(rng, sign, whole, frac, commas):
    """One way a person or a model writes the number."""
    digits = f"{int(whole):,}" if commas else whole
    body = digits + ("." + frac if frac else "")
    minus = rng.choice(["-", "\u2212"]) if sign else ""
    return rng.choice([minus + body, minus + "$" + body, "$" + minus + body])


def test_normalize_is_canonical_idempotent_and_keeps_the_value():
    rng = random.Random(0)
    for _ in range(2000):
        sign, whole, frac = _random_number(rng)
        value = Decimal(sign + whole + ("." + frac if frac else ""))
        text = _written(rng, sign, whole, frac, commas=rng.random() < 0.5) + rng.choice(["", "."])
        out = normalize(text)
        assert out is not None and _CANONICAL.fullmatch(out), text
        assert Decimal(out) == value and out != "-0", text
        assert normalize(out) == out
        assert normalize("00" + whole + "." + frac + "000") == normalize(whole + ("." + frac if frac else ""))


def test_equal_numbers_give_equal_strings():
    assert normalize("18") == normalize("18.00") == normalize("018.0") == normalize("$18.") == "18"
    assert normalize("-0") == normalize("0.000") == normalize("-$0") == "0"
    assert normalize("-0.50") == normalize("\u22120.5") == "-0.5"
    assert normalize(".5") == "0.5" and normalize("1,000") == "1000"
    assert normalize("1" * 40) == "1" * 40                     # no 28-digit Decimal context


@pytest.mark.parametrize("raw", ["", ".", "-", "$", "abc", "1e5", "1/2", "1 000", "- 5", "NaN",
                                 "inf", "Infinity", "--5", "5-", "1.2.3", "0x10", "\u0664\u0662"])
def test_normalize_refuses_what_is_not_a_plain_number(raw):
    assert normalize(raw) is None


@pytest.mark.parametrize("template", [
    "#### {n}", "#### **{n}**", "#### `{n}`", "#### $\\boxed{{{n}}}$", "**#### {n}**", "####\n\n{n}",
])
def test_every_way_of_writing_the_answer_after_hashes_reads_the_same(template):
    rng = random.Random(template)
    for _ in range(300):
        sign, whole, frac = _random_number(rng)
        written = _written(rng, sign, whole, frac, commas=rng.random() < 0.5)
        text = "Step 1: 3 + 4 = 7\n- 12 eggs\n" + template.format(n=written) + rng.choice(["", ".", "\n"])
        want = normalize(sign + whole + ("." + frac if frac else ""))
        assert strict_extract(text) == want, text
        assert flexible_extract(text) == want, text


@pytest.mark.parametrize("template", [
    "The answer is {n}.", "**Answer:** {n}", "Answer:\n- {n}", "The answer is $\\boxed{{{n}}}$.",
    "| Total | **{n}** |", "So she has {n} left.\n\n---\n\n{n}",
])
def test_every_way_of_writing_a_final_number_reads_the_same(template):
    rng = random.Random(template)
    for _ in range(300):
        sign, whole, frac = _random_number(rng)
        text = "Between 5 - 3 and 1, 2, 3: " + template.format(
            n=_written(rng, sign, whole, frac, commas=rng.random() < 0.5))
        assert flexible_extract(text) == normalize(sign + whole + ("." + frac if frac else "")), text
        assert strict_extract(text) is None


_PIECES = ["**", "*", "_", "__", "`", "$", "\\$", "\\boxed{", "\\text{", "}", "{", "\\,", "{,}", "\\(",
           "-", "\u2212", "\u2013", " ", "\n", "#", "####", ".", ",", "%", "a", "x", "1", "23", "456", "0"]


def test_cleaning_never_invents_drops_or_reorders_digits_and_signs():
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 30)))
        cleaned = clean_response(text)
        assert re.sub(r"[^0-9]", "", cleaned) == re.sub(r"[^0-9]", "", text), text
        assert cleaned.count("-") == text.count("-") + text.count("\u2212"), text
        assert not set("*_`${}") & set(cleaned), text
        flexible, strict = flexible_extract(text), strict_extract(text)
        assert (flexible is None) == (not re.search(r"[0-9]", text)), text
        assert flexible is None or normalize(flexible) == flexible
        assert strict is None or (normalize(strict) == strict and "####" in text)


# ---------------------------------------------------------------- comparing and voting

def test_numbers_compare_as_numbers():
    assert is_correct("18", "18.00") and is_correct("1000", "1,000") and not is_correct(None, "3")
    assert normalize("$1,000.") == "1000" and normalize("abc") is None
    assert not is_correct("17", "18")
    assert is_correct("-5", "-5") and not is_correct("5", "-5") and not is_correct("abc", "3")
    assert not is_correct("3", "not a number")


def test_majority_ties_go_to_first_seen():
    assert majority(["3", "4", "4", "3"]) == "3"
    assert majority([None, "5", "6", "6"]) == "6"
    assert majority([None, None]) is None


# ---------------------------------------------------------------- the Wilson interval

def test_wilson_default_z_is_the_95_percent_quantile():
    assert wilson_interval.__defaults__[0] == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-15)


@pytest.mark.parametrize("k,n,low,high", [
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (1, 10, 0.0179, 0.4042),
    (1029, 1319, 0.7570, 0.8017),           # 78.0% on the GSM8K test split
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    assert lo <= k / n <= hi


def test_wilson_edges_and_symmetry():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    z = NormalDist().inv_cdf(0.975)
    for k, n in [(3, 7), (1029, 1319), (500, 1319), (1, 1319)]:
        lo, hi = wilson_interval(k, n)
        mirror = wilson_interval(n - k, n)
        assert (lo, hi) == pytest.approx((1 - mirror[1], 1 - mirror[0]), abs=1e-12)
        p = k / n
        for bound in (lo, hi):                 # the ends solve (p - b)^2 = z^2 b (1 - b) / n
            assert (p - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, rel=1e-9)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
