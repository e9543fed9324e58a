"""Training rows from stored chat completions: chat JSONL for supervised fine-tuning, or the cloud's preference
JSONL for DPO. Pure functions over the records `store/completions.py` returns; the API writes the rows to a file.

Which answer a stored completion stands for is its first choice's, or the answer edited in the studio where there
is one (the edit is what the user wants the model to say). A rating is the metadata key `rating`: `good` or `bad`.

- supervised: one row per completion, its request messages followed by the answer; answers rated bad (and not
  edited) are left out, and so are answers the content filter stopped, which carry no text.
- preference: for the same request messages (and tools), every preferred answer — one rated good, or an edit —
  against every answer rated bad; and each edit against its own original. Identical answers make no pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .validate import MESSAGE_KEYS

FORMATS = ("supervised", "preference")


@dataclass
class Exported:
    """The rows, and how many completions were left out and why (for the user, when nothing is left)."""

    rows: list[dict]
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


def rating(completion: dict) -> str | None:
    return (completion.get("metadata") or {}).get("rating")


def original_answer(completion: dict) -> str | None:
    """The first choice's text as the client received it; None where the filter stopped it or it is empty."""
    choices = completion.get("choices") or []
    if not choices or choices[0].get("finish_reason") == "content_filter":
        return None
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) and content.strip() else None


def edited_answer(completion: dict) -> str | None:
    edited = completion.get("edited_content")
    return edited if isinstance(edited, str) and edited.strip() else None


def prompt(completion: dict) -> dict:
    """The request as a training example's input: messages in the training format (`developer` is `system`,
    text parts joined, only the keys each role may carry), and the tools where the request offered them."""
    request = completion.get("request") or {}
    messages = []
    for message in request.get("messages") or []:
        role = "system" if message.get("role") == "developer" else message.get("role")
        kept = {k: v for k, v in message.items() if k in MESSAGE_KEYS.get(role, {"role", "content"}) and v is not None}
        kept["role"] = role
        if isinstance(kept.get("content"), list):
            kept["content"] = "".join(part.get("text", "") for part in kept["content"])
        messages.append(kept)
    found = {"messages": messages}
    if request.get("tools"):
        found["tools"] = request["tools"]
    if request.get("parallel_tool_calls") is not None:
        found["parallel_tool_calls"] = request["parallel_tool_calls"]
    return found


def supervised_rows(completions: list[dict]) -> Exported:
    """Chat JSONL rows: the request's messages and the answer (the edit where there is one)."""
    exported = Exported([])
    for completion in completions:
        answer = edited_answer(completion)
        if answer is None and rating(completion) == "bad":
            exported.leave_out("rated bad")
            continue
        answer = answer or original_answer(completion)
        if answer is None:
            exported.leave_out("filtered or empty")
            continue
        example = prompt(completion)
        example["messages"] = example["messages"] + [{"role": "assistant", "content": answer}]
        exported.rows.append(example)
    return exported


def preference_rows(completions: list[dict]) -> Exported:
    """Preference JSONL rows: a preferred answer (rated good, or edited) against a non-preferred one (rated bad,
    or the original an edit replaced) to the same request."""
    groups: dict[str, dict] = {}  # one per distinct request: its input, preferred and non-preferred answers
    exported = Exported([])
    for completion in completions:
        example = prompt(completion)
        group = groups.setdefault(json.dumps(example, sort_keys=True),
                                  {"input": example, "good": [], "bad": [], "pairs": []})
        original, edit, rated = original_answer(completion), edited_answer(completion), rating(completion)
        if edit is not None:
            group["good"].append(edit)
            if original is not None:
                group["pairs"].append((edit, original))
        if original is None and edit is None:
            exported.leave_out("filtered or empty")
        elif rated == "good" and original is not None:
            group["good"].append(original)
        elif rated == "bad" and original is not None:
            group["bad"].append(original)
        elif edit is None:
            exported.leave_out("neither rated nor edited")
    for group in groups.values():
        pairs = group["pairs"] + [(good, bad) for good in group["good"] for bad in group["bad"]]
        seen = set()
        for preferred, rejected in pairs:
            if preferred == rejected or (preferred, rejected) in seen:
                continue
            seen.add((preferred, rejected))
            exported.rows.append({"input": group["input"],
                                  "preferred_output": [{"role": "assistant", "content": preferred}],
                                  "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return exported


def export_rows(completions: list[dict], format: str) -> Exported:
    if format == "supervised":
        return supervised_rows(completions)
    if format == "preference":
        return preference_rows(completions)
    raise ValueError(f"unknown export format {format!r}")
