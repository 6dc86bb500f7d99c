"""What a run's answers depend on besides its flags: the data file and the model folder, as
hashes. Written into config.json when a run starts; --resume recomputes it and refuses to mix the
answers of two sources into one result; tables pair runs on it rather than on file paths.

Data: sha256 of the whole file (a parquet of GSM8K is a few hundred kB). Model: sha256 of every
small file (config, tokenizer, chat template, weight index) and, for each weight file, its size
and a sampled hash (the safetensors header, 1 MiB at 8 evenly spaced offsets and the last 1 MiB): regenerated
random weights of the same shape change it, and a 15 GB model costs milliseconds, not a minute.
A hub id is fingerprinted by its name and the revision the local hub cache resolves it to (the
snapshot a run would load offline). Hidden files and folders (a hub download's .cache/ metadata,
our own .prepared.json) are not part of the model.

Apart from the answers' sources, what the numbers depend on: the environment (the engine's, torch's
and Ray's versions, the device's name and count). --resume refuses a change there too (a SLURM
requeue onto another node type, a newer vLLM) and speed comparisons need equal environments; the
answer pairing does not (vLLM against SGLang is what it pairs).

    python -c "from evaluator.fingerprint import fingerprint; print(fingerprint('data/gsm8k_test.parquet', 'models/qwen2.5-coder-0.5b-instruct'))"
"""
from __future__ import annotations

import hashlib
import os
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


def hub_revision(model: str) -> str | None:
    """The commit the local hub cache's refs/main names for a hub id (None when not cached)."""
    root = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                / "hub")
    ref = root / f"models--{model.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def model_fingerprint(model: str) -> dict[str, str]:
    path = Path(model)
    if path.is_file():                  # a checkpoint file (GGUF)
        return {path.name: f"{path.stat().st_size} bytes, sampled sha256 {sampled_sha256(path)}"}
    if not path.is_dir():
        return {"hub id": model, "revision": hub_revision(model) or "not in the local hub cache"}
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        rel = str(f.relative_to(path))
        if f.suffix in WEIGHT_SUFFIXES:
            out[rel] = f"{f.stat().st_size} bytes, sampled sha256 {sampled_sha256(f)}"
        elif f.stat().st_size <= SMALL_FILE_BYTES:
            out[rel] = file_sha256(f)
        else:
            out[rel] = f"{f.stat().st_size} bytes"
    return out


def fingerprint(data: str, model: str, traffic: str | None = None) -> dict:
    """The answers' sources: the data file, the model, and a serving run's traffic file."""
    out = {"data": file_sha256(Path(data)), "model": model_fingerprint(model)}
    if traffic is not None:
        out["traffic"] = file_sha256(Path(traffic))
    return out


def environment(engine: str, device: str) -> dict[str, str]:
    """What the speed (and, through kernels, the answers' arithmetic) depends on besides the flags:
    package versions and the devices. Compared by --resume; part of the speed key."""
    from evaluator.hosts import device_count, device_name, versions
    return {**versions(engine), "device": device_name(device), "devices": str(device_count(device))}


def environment_changes(recorded: dict, now: dict) -> list[str]:
    """('vllm 0.26.0 -> 0.27.0', ...) for every entry that differs; the python version is left out
    (a patch release changes no numbers), and so is anything only one side recorded."""
    return [f"{k} {recorded[k]} -> {now[k]}" for k in sorted(recorded.keys() & now.keys())
            if k != "python" and recorded[k] != now[k]]


def changes(recorded: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, in words ("the data file", "model file config.json")."""
    out = []
    if recorded.get("data") != now.get("data"):
        out.append("the data file")
    if recorded.get("traffic") != now.get("traffic"):
        out.append("the traffic file")
    old, new = recorded.get("model", {}), now.get("model", {})
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            what = "is new" if name not in old else "is gone" if name not in new else "changed"
            out.append(f"model file {name} {what}")
    return out


def short(fp: dict) -> str:
    """A stable short id of a fingerprint, for grouping runs."""
    return _sha(repr((fp.get("data"), sorted(fp.get("model", {}).items()))).encode())[:12]
