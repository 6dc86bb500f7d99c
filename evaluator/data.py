"""Load the prepared GSM8K parquet, check it, render each prompt with the model's chat template
(without it the instruct models answer junk) and tokenise it once: those ids are every offline
engine's input.

    python -c "from evaluator.data import read_rows; print(len(read_rows('data/gsm8k_test.parquet')))"
"""
from __future__ import annotations

import os

from evaluator.records import Prompt
from evaluator.scoring import normalize

REQUIRED_COLUMNS = ("prompt", "reward_model")


class DataError(ValueError):
    """The data file cannot be used; the message names the file and, where it can, the row."""


def read_rows(path: str) -> list[dict]:
    """Rows of the parquet as dicts, after checking the columns and every ground truth."""
    import pyarrow.parquet as pq
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path} (make it with: python -m datasets_prep gsm8k --out {path})")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"cannot read {path} as parquet: {e}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)} "
                        f"(has: {', '.join(table.column_names)}); make it with python -m datasets_prep")
    rows = table.to_pylist()
    if not rows:
        raise DataError(f"{path} has no rows")
    for i, row in enumerate(rows):
        gold = (row.get("reward_model") or {}).get("ground_truth")
        if gold is None or normalize(str(gold)) is None:
            raise DataError(f"{path} row {i}: ground truth {gold!r} is not a number")
        messages = row.get("prompt")
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{path} row {i}: prompt is not a list of chat messages")
    return rows


def row_index(row: dict, position: int) -> int:
    """The problem's global index: extra_info.index when present, else its row position."""
    info = row.get("extra_info") or {}
    return int(info["index"]) if info.get("index") is not None else position


def load_prompts(data: str, model: str, limit: int | None) -> list[Prompt]:
    """The run's prompts: the first `limit` rows of the parquet, rendered with the model's chat
    template. Raises DataError for an unusable data file or tokenizer."""
    rows = read_rows(data)
    if limit:
        rows = rows[:limit]
    try:
        tokenizer = load_tokenizer(model)
    except (OSError, ValueError) as e:
        raise DataError(f"--model {model}: cannot load its tokenizer ({str(e).splitlines()[0][:200]})") from None
    return render_prompts(rows, tokenizer)


def load_tokenizer(model: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model, trust_remote_code=False)


def render_prompts(rows: list[dict], tokenizer) -> list[Prompt]:
    """Apply the chat template (generation prompt added) and tokenise each prompt once, adding no
    special tokens: the template already wrote the ones the model expects (Llama 3's BOS among
    them), and the servers count the same way (vLLM's chat endpoint: add_special_tokens=False).
    Those ids are what the offline engines get, so no engine encodes the text again and adds a
    second BOS (vLLM issue 9519)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template; GSM8K prompts need one")
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
             for r in rows]
    ids = [tuple(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    prompts = [Prompt(index=row_index(r, i), text=t, gold=normalize(str(r["reward_model"]["ground_truth"])),
                      prompt_tokens=len(x), token_ids=x,
                      messages=tuple({"role": m["role"], "content": m["content"]} for m in r["prompt"]))
               for i, (r, t, x) in enumerate(zip(rows, texts, ids))]
    seen = set()
    for p in prompts:
        if p.index in seen:
            raise DataError(f"index {p.index} appears twice in extra_info.index")
        seen.add(p.index)
    return sorted(prompts, key=lambda p: p.index)


def question_texts(data: str) -> dict[int, str]:
    """index -> question text from the run's data parquet (extra_info.question); {} when the file
    is gone or has no such field, and the flips are then shown without it."""
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(data)
    except (OSError, ValueError):   # gone, moved, or not parquet any more (ArrowInvalid is a ValueError)
        return {}
    out = {}
    for i, row in enumerate(table.to_pylist()):
        question = (row.get("extra_info") or {}).get("question")
        if question:
            out[row_index(row, i)] = question
    return out
