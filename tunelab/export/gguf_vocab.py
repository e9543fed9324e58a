"""The tokenizer of a GGUF file, written as llama.cpp's converter writes it, from the tokenizer training used.

Two kinds of vocabulary are exported:

- byte-level BPE (GPT-2 style: SmolLM2, Qwen2): `tokenizer.ggml.model = "gpt2"`, the merges, and the
  pre-tokenizer named by `tokenizer.ggml.pre` — the regex that splits text before the merges. llama.cpp
  recognises a model's pre-tokenizer by hashing its output on a probe text; here it is read from the
  tokenizer's own definition, so the GGUF splits text exactly as training did, or the export is refused.
- SentencePiece-style BPE over `▁`-joined text with `<0x..>` byte fallback (Gemma): `tokenizer.ggml.model =
  "llama"`, with scores whose order is the merge order (llama.cpp merges the best-scored pair first, which is
  BPE's lowest merge rank first) and Gemma's convention of no space prefix.

The special tokens: bos, eos, pad, unk, and `eot`, the chat template's end-of-turn token, on which llama.cpp ends
the assistant's turn; plus the chat template itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest
from .source import adds_bos

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# The split regexes of pre-tokenizers llama.cpp implements, by the name `tokenizer.ggml.pre` gives them.
SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}


@dataclass
class Vocab:
    model: str  # "gpt2" | "llama"
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, pad, unk → id
    add_bos: bool = False
    add_space_prefix: bool | None = None


def read_vocab(tokenizer, tokenizer_dir: Path, vocab_size: int, end_of_turn: int | None) -> Vocab:
    """The GGUF vocabulary of `tokenizer` (saved in `tokenizer_dir`), padded to the model's `vocab_size` rows."""
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise InvalidRequest(f"the tokenizer is a {model.get('type')} model; GGUF export handles BPE tokenizers "
                             "(byte-level as in Llama and Qwen2, or SentencePiece-style as in Gemma)", param="model")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= vocab_size:
        raise InvalidRequest(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embedding "
                             "rows", param="model")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    sentencepiece = bool(model.get("byte_fallback"))
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # embedding rows past the tokenizer (padding), as llama.cpp's converter names them
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif sentencepiece and token == model.get("unk_token"):
            tokens.append(token)
            types.append(UNKNOWN)
        elif sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            tokens.append(token)
            types.append(BYTE)
        else:
            tokens.append(token)
            types.append(NORMAL)
    vocab = Vocab("llama" if sentencepiece else "gpt2", None, tokens, types)
    if sentencepiece:
        _check_sentencepiece(spec)
        rank = {m.replace(" ", ""): r for r, m in reversed(list(enumerate(merges)))}
        # A merged piece scores minus its merge rank; pieces no merge makes (characters, bytes, specials) score 0,
        # as SentencePiece's control and byte pieces do: llama.cpp only ever compares the scores of merged pieces.
        vocab.scores = [-float(rank[t] + 1) if t in rank and types[i] == NORMAL else 0.0 for i, t in enumerate(tokens)]
        vocab.add_space_prefix = False
    else:
        vocab.pre = _pre_tokenizer(spec)
        vocab.merges = merges
    vocab.special = {name: token_id for name, token_id in (
        ("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id),
        ("unk", tokenizer.unk_token_id), ("eot", end_of_turn)) if token_id is not None}
    if "eos" not in vocab.special and end_of_turn is not None:
        vocab.special["eos"] = end_of_turn
    vocab.add_bos = adds_bos(tokenizer)
    return vocab


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a clear refusal."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # the GPT-2 regex after splitting digits one by one
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in SPLIT_REGEXES:
            return SPLIT_REGEXES[regex]
    raise InvalidRequest(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp implements "
                         "(gpt2, smollm, qwen2, llama-bpe): a GGUF file would split text differently from "
                         "training", param="model")


def _check_sentencepiece(spec: dict) -> None:
    """The SentencePiece-style vocabulary llama.cpp's "llama" tokenizer reproduces: spaces become '▁', no prefix."""
    normalizer = spec.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    replaces_spaces = any(s.get("type") == "Replace" and s.get("content") == "▁" for s in steps)
    prepends = any(s.get("type") == "Prepend" for s in steps) or spec.get("pre_tokenizer")
    if not replaces_spaces or prepends:
        raise InvalidRequest("the tokenizer's SentencePiece-style normalizer is not the one GGUF export handles "
                             "(spaces replaced by '▁', no prefix space, as Gemma's)", param="model")


def write_vocab(writer, vocab: Vocab, chat_template: str) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
              "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id}
    for name, token_id in vocab.special.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_chat_template(chat_template)
