"""An answer's text as its tokens arrive, without decoding the whole answer again at every token.

Decoding all of an answer's tokens at every new token costs time that grows with the answer (0.16 ms per answer
and token at 1,000 tokens of SmolLM2's tokenizer), for every answer of a batch. `IncrementalText` decodes only
the tokens since the last whole character together with the ones just before them, and adds what they add to
the text: the same text as decoding them all, for byte-level BPE (a token's bytes do not depend on its
neighbours; a character split across tokens waits for its last byte) and for SentencePiece (which drops the
leading space of a text's first token: the window and the part of it already decoded both start with the same
token, so they drop the same space). Where the window's text does not start with the part already decoded, the
whole answer is decoded once, and the window starts again from there.
"""

from __future__ import annotations


class IncrementalText:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded = ""  # the text of tokens[:read], which ends with a whole character
        self.read = 0
        self.window = 0  # where the previous call's new tokens started: decoded again with the next ones

    def text(self, tokens: list[int]) -> str:
        """What `tokenizer.decode(tokens, skip_special_tokens=True)` gives; `tokens` only grows between calls."""
        window = self._decode(tokens[self.window:])
        before = self._decode(tokens[self.window:self.read])
        if not window.startswith(before):  # not incremental here: the whole text, once, and start again from it
            text = self._decode(tokens)
            whole = not text.endswith("\ufffd")
            self.decoded, self.read, self.window = (text, len(tokens), len(tokens)) if whole else ("", 0, 0)
            return text
        text = self.decoded + window[len(before):]
        if not text.endswith("\ufffd"):  # a whole character: the next call starts from here
            self.decoded, self.window, self.read = text, self.read, len(tokens)
        return text

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""
