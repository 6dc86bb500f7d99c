"""What a model is, read from its folder without loading it: its config.json (the text part of a
multimodal config; a hub id through transformers' cache), the bytes of its weight files, and the
context length a run gives it. The checks, the memory prediction and the reports read it here.

    python -c "from evaluator.modelinfo import model_config; print(model_config('models/qwen2.5-coder-0.5b-instruct')['num_hidden_layers'])"
"""
from __future__ import annotations

import json
from pathlib import Path

from evaluator.errors import UsageError
from evaluator.records import RunConfig


def model_config(model: str) -> dict | None:
    """The model's config.json (text part for multimodal configs); hub ids through transformers."""
    path = Path(model)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UsageError(f"--model {model} is a folder without config.json: not a model")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"--model {model}: config.json is not valid JSON ({e})") from None
        return cfg.get("text_config", cfg)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise UsageError(f"--model {model}: no such model folder (and not a hub id like Qwen/Qwen2.5-7B-Instruct)")
    try:
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:  # offline, unknown repo, gated: all mean we cannot check it
        raise UsageError(f"--model {model}: cannot read its config from the hub or cache ({type(e).__name__}); "
                         f"pass a local folder") from None
    return getattr(cfg, "text_config", cfg).to_dict()


def context_length(cfg: RunConfig) -> int | None:
    """The engine's context: --max-model-len, else the model's own (max_position_embeddings)."""
    if cfg.max_model_len:
        return cfg.max_model_len
    return (model_config(cfg.model_folder) or {}).get("max_position_embeddings")


def weight_bytes(model: str) -> int | None:
    """Bytes of the weight files in a local model folder (None for hub ids or unknown layouts)."""
    path = Path(model)
    if not path.is_dir():
        return None
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None
