"""An answer decoded token by token gives, at every token, the text that decoding all its tokens gives: with the
byte-level BPE of the test models (characters split across tokens) and with a SentencePiece-style tokenizer
(a leading space that decoding drops at the start of a text)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tunelab.inference.detokenize import IncrementalText

TEXT = ("Lisbon in May: café terraces, pastéis de nata, the 28 tram… Zürich? Kraków! 東京 and 🍫🧀, "
        "“quotes” — then back to plain words for a while. ")


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece's conventions: spaces become '▁' at the start of the next word (dropped by decoding at the
    start of a text), and characters outside the vocabulary become their UTF-8 bytes."""
    pieces = ["<unk>", "<end>", *(f"<0x{b:02X}>" for b in range(256)), "▁",
              *(chr(c) for c in range(33, 127)), *(f"▁{w}" for w in ("the", "in", "to", "and", "for", "a"))]
    merges = [("▁", w) for w in ("the", "in", "to", "and", "for", "a") if len(w) == 1]
    bpe = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # as Llama's and Gemma's tokenizers decode
    bpe.add_special_tokens(["<end>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<end>", unk_token="<unk>")


@pytest.fixture(params=["byte-level BPE", "SentencePiece-style"])
def tokenizer(request, tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model) if request.param == "byte-level BPE" else metaspace_tokenizer()


def test_the_text_so_far_is_the_decoded_tokens_at_every_token(tokenizer):
    ids = tokenizer(TEXT * 3, add_special_tokens=False)["input_ids"]
    ids.insert(len(ids) // 2, tokenizer.eos_token_id)  # a special token: left out, as decoding leaves it out
    assert any("\ufffd" in tokenizer.decode(ids[:n]) for n in range(1, len(ids)))  # a character split in tokens
    text = IncrementalText(tokenizer)
    for n in range(1, len(ids) + 1):
        assert text.text(ids[:n]) == tokenizer.decode(ids[:n], skip_special_tokens=True), n
    assert text.read > len(ids) - 8  # it kept up: only the last tokens are decoded again
