"""What a run's answers depend on besides its flags: the data file and the model folder, as
hashes. Written into config.json when a run starts; --resume recomputes it and refuses to mix the
answers of two sources into one result; tables pair runs on it rather than on file paths.

Data: sha256 of the whole file (a parquet of GSM8K is a few hundred kB). Model: sha256 of every
small file (config, tokenizer, chat template, weight index) and, for each weight file, its size
and a sampled hash (the safetensors header, 1 MiB at 8 evenly spaced offsets and the last 1 MiB): regenerated
random weights of the same shape change it, and a 15 GB model costs milliseconds, not a minute.
A hub id cannot be read without downloading it and is fingerprinted by its name.

    python -c "from evaluator.fingerprint import fingerprint; print(fingerprint('data/gsm8k_test.parquet', 'models/qwen2.5-coder-0.5b-instruct'))"
"""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
SAMPLES, SAMPLE_BYTES = 8, 1 << 20
SMALL_FILE_BYTES = 16 << 20


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sampled_sha256(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    offsets = [0, *(size * k // (SAMPLES + 1) for k in range(1, SAMPLES + 1)), max(0, size - SAMPLE_BYTES)]
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def model_fingerprint(model: str) -> dict[str, str]:
    path = Path(model)
    if not path.is_dir():
        return {"hub id": model}
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = str(f.relative_to(path))
        if f.suffix in WEIGHT_SUFFIXES:
            out[rel] = f"{f.stat().st_size} bytes, sampled sha256 {sampled_sha256(f)}"
        elif f.stat().st_size <= SMALL_FILE_BYTES:
            out[rel] = file_sha256(f)
        else:
            out[rel] = f"{f.stat().st_size} bytes"
    return out


def fingerprint(data: str, model: str) -> dict:
    return {"data": file_sha256(Path(data)), "model": model_fingerprint(model)}


def changes(recorded: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, in words ("the data file", "model file config.json")."""
    out = []
    if recorded.get("data") != now.get("data"):
        out.append("the data file")
    old, new = recorded.get("model", {}), now.get("model", {})
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            what = "is new" if name not in old else "is gone" if name not in new else "changed"
            out.append(f"model file {name} {what}")
    return out


def short(fp: dict) -> str:
    """A stable short id of a fingerprint, for grouping runs."""
    return _sha(repr((fp.get("data"), sorted(fp.get("model", {}).items()))).encode())[:12]
