"""Render a conversation with the model's chat template into token ids and a loss mask.

One training sample per conversation: every assistant turn whose weight is not 0 is trained on (its content and
the template's end-of-turn marker), everything else is context. The mask is computed on characters first and
then mapped to tokens through the tokenizer's offsets, so tokens that merge across a turn boundary cannot shift it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import InvalidRequest


@dataclass
class RenderedChat:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is trained: assistant turns with weight != 0

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)

    def truncated(self, limit: int) -> "RenderedChat":
        """Keep the first `limit` tokens (the cloud's rule: tokens are removed from the end)."""
        return RenderedChat(self.input_ids[:limit], self.loss_mask[:limit])


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> RenderedChat:
    """Return `(input_ids, loss_mask)` for one conversation, rendered with `tokenizer.chat_template`."""
    template = tokenizer.chat_template
    if not template:
        raise InvalidRequest("the tokenizer has no chat template; tunelab sets a default one when a model is imported")
    messages = [_plain(m, template) for m in messages]
    text = require_text(_apply(tokenizer, messages, tools, generation_prompt=False))

    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = _apply(tokenizer, messages[:i], tools, generation_prompt=True) if i else ""
        before_next = _apply(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if not (text.startswith(before_next) and before_next.startswith(prompt)):
            raise InvalidRequest("the chat template does not render conversations incrementally, so assistant "
                                 "turns cannot be located; use a template whose output grows turn by turn")
        spans.append((len(prompt), len(before_next)))

    ids, offsets = _encode(tokenizer, text, messages)
    mask = [any(s <= begin < e for s, e in spans) for begin, _ in offsets]
    return RenderedChat(list(ids), mask)


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of a conversation followed by the assistant's generation prompt (what serving feeds the model)."""
    messages = [_plain(m, tokenizer.chat_template) for m in messages]
    text = require_text(_apply(tokenizer, messages, tools, generation_prompt=True))
    return _encode(tokenizer, text, messages)[0]


def _encode(tokenizer, text: str, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a rendered conversation, where a message's text is only ever text: a
    message that spells a control token (`<|im_end|>`) is tokenized with special tokens split, so its author
    cannot close their turn and open another role's."""
    controls = [token for token in tokenizer.get_added_vocab() if token]
    literal = [m["content"] for m in messages
               if isinstance(m.get("content"), str) and any(c in m["content"] for c in controls)]
    pieces, cursor = [], 0
    for content in literal:
        start = text.find(content, cursor)
        if start < 0 and content.strip():
            content = content.strip()  # templates that trim the text they insert
            start = text.find(content, cursor)
        if start < 0:
            raise InvalidRequest("a message spells one of the model's control tokens in a way the chat template "
                                 "changes, so it cannot be kept as text; remove the token", param="messages")
        pieces += [(cursor, start, False), (start, start + len(content), True)]
        cursor = start + len(content)
    pieces.append((cursor, len(text), False))
    ids, offsets = [], []
    for begin, end, split in pieces:
        if begin == end:
            continue
        encoded = tokenizer(text[begin:end], add_special_tokens=False, return_offsets_mapping=True,
                            split_special_tokens=split)
        ids += encoded["input_ids"]
        offsets += [(b + begin, e + begin) for b, e in encoded["offset_mapping"]]
    return ids, offsets


def _apply(tokenizer, messages, tools, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def require_text(rendered: str) -> str:
    """The rendered conversation, if it is text: JSON lets a string hold a lone UTF-16 surrogate (`"\\ud800"`),
    which no tokenizer can encode, so it is refused here as the client's error."""
    try:
        rendered.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("a message holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
                             param="messages") from None
    return rendered


def _plain(message: dict, template: str) -> dict:
    """Fit a message to templates that know only `role` and string `content`.

    Tool calls are written into the content as `<tool_call>{json}</tool_call>` when the template has no
    `tool_calls` support of its own, so the model still learns to emit them.
    """
    message = dict(message)
    calls = message.get("tool_calls")
    if message.get("function_call"):  # the legacy single-call form
        calls = [{"function": message.pop("function_call")}]
    if calls and "tool_calls" not in template:
        written = "\n".join(
            "<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                           "arguments": json.loads(c["function"]["arguments"])},
                                          ensure_ascii=False) + "\n</tool_call>" for c in calls)
        content = message.get("content") or ""
        message.pop("tool_calls", None)
        message["content"] = f"{content}\n{written}" if content else written
    if message.get("content") is None:
        message["content"] = ""
    return message
