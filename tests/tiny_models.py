"""Tiny random models of each architecture tunelab supports, built from a config with a tokenizer trained on the
travel data (no downloads): Llama (as SmolLM2), Qwen2 (as Qwen2.5: attention biases, tied embeddings, ChatML) and
Gemma 3 (sliding-window layers, a SentencePiece-style vocabulary with byte fallback, its own turn markers).

Sizes are multiples of 32 so that every GGUF quantisation (blocks of 32) can take them.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "examples" / "travel"
ARCHITECTURES = ("llama", "qwen2", "gemma3")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _texts() -> list[str]:
    return [m["content"] for line in (TRAVEL / "train.jsonl").read_text().splitlines()
            for m in json.loads(line)["messages"]]


def _byte_level_tokenizer(vocab_size: int, specials: list[str], **tokens):
    """A byte-level BPE (GPT-2 style, as SmolLM2 and Qwen2 have) with `specials` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_texts(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **tokens)
    tokenizer.chat_template = CHATML
    return tokenizer


def _sentencepiece_style_tokenizer(vocab_size: int):
    """A BPE over '▁'-joined text with byte fallback (`<0x00>`…`<0xFF>`), as Gemma's vocabulary is, with Gemma's
    special tokens at Gemma's ids (pad 0, eos 1, bos 2, unk 3) and its turn markers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tunelab.models.templates import GEMMA

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_bpe.normalizer = normalizers.Replace(" ", "▁")
    trainer_bpe.train_from_iterator(_texts(), trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens), special_tokens=specials, show_progress=False))
    learned = json.loads(trainer_bpe.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bpe.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        unk_token="<unk>", pad_token="<pad>", add_bos_token=False)
    tokenizer.chat_template = GEMMA  # the template adds bos itself
    return tokenizer


def build(arch: str, path: Path, *, hidden: int = 64, layers: int = 2, vocab_size: int = 640,
          context: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random `arch` model (config, safetensors, tokenizer with its chat template) to `path`."""
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    sizes = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=context, initializer_range=0.2,
                 tie_word_embeddings=True)
    if arch == "llama":
        tokenizer = _byte_level_tokenizer(vocab_size, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                          bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0, **sizes)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        tokenizer = _byte_level_tokenizer(vocab_size, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                          eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = Qwen2Config(vocab_size=len(tokenizer), eos_token_id=2, pad_token_id=0, bos_token_id=None, **sizes)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():  # random biases, so that a path that drops them gives other answers
            for layer in model.model.layers:
                for name in ("q_proj", "k_proj", "v_proj"):
                    getattr(layer.self_attn, name).bias.normal_(0, 0.2)
    elif arch == "gemma3":
        tokenizer = _sentencepiece_style_tokenizer(vocab_size)
        # sliding-window layers and a global one last, with a window shorter than the test prompts
        n = max(layers, 3)
        config = Gemma3TextConfig(vocab_size=len(tokenizer), head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4,
                                  sliding_window=16, layer_types=["sliding_attention"] * (n - 1) + ["full_attention"],
                                  pad_token_id=0, eos_token_id=[1, 5], bos_token_id=2,
                                  **{**sizes, "num_hidden_layers": n})
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
