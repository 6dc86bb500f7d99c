"""Models with random weights: a tiny Qwen2 (tests, seconds on a CPU) and any real architecture
at full size (GPU timing runs where no weights can be downloaded).

The tiny model has a real byte-level BPE tokenizer trained here on a fixed text and a Qwen-style
chat template, 4 attention heads of dim 32 (vLLM-CPU rejects head_dim 16; tp=2 divides 4 heads
and 2 KV heads), so real vLLM runs it in every layout the tests need.

    python -m datasets_prep tiny-model --out models/tiny
    python -m datasets_prep random-model --config datasets_prep/configs/qwen2.5-7b.json \
        --tokenizer models/qwen2.5-coder-0.5b-instruct --out /tmp/qwen7b-random
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.jinja")


class TinyModelError(ValueError):
    pass


def _corpus() -> list[str]:
    words = ("the a of to and in is how many much does each every per day she he they it total left more "
             "than times dollars eggs apples hours minutes cost sold bought has had gives takes answer final "
             "think step by output after let's if then so we need first second third half twice").split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += [f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. #### {a * b}" for a in range(30) for b in range(0, 30, 7)]
    lines.append('Let\'s think step by step and output the final answer after "####". $1,000.50 -3 18.00')
    return lines


def make_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(out: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random Qwen2ForCausalLM of ~0.2M parameters with its tokenizer, written atomically."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    tokenizer = make_tokenizer()
    vocab = -(-len(tokenizer) // 64) * 64
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                         torch_dtype="bfloat16")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=pad)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def make_random_model(config: Path, tokenizer: Path, out: Path, device: str = "cuda") -> Path:
    """Random weights (bf16) of the architecture in `config`, with the tokenizer files copied
    from `tokenizer`. Initialising on the GPU takes seconds even at 7B."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg_path = config / "config.json" if config.is_dir() else config
    if not cfg_path.is_file():
        raise TinyModelError(f"no config.json at {config}")
    if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "tokenizer_config.json").is_file():
        raise TinyModelError(f"no tokenizer files in {tokenizer}")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(cfg_path, tmp / "config.json")
    cfg = AutoConfig.from_pretrained(tmp)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, tmp / name)
    (tmp / "random_weights.json").write_text(json.dumps({"config": str(cfg_path), "tokenizer": str(tokenizer)}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
