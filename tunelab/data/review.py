"""Warnings a careful reviewer raises about a training set: nothing here stops training, all of it is worth a look.

- `duplicate`: the same conversation appears more than once (exactly, or nearly: ≥ 85% shared word 3-grams).
- `train_validation_overlap`: a validation conversation also appears in the training file.
- `system_message_varies`: examples carry different system messages, or some have none.
- `reply_cut_off`: an assistant reply ends without closing punctuation, as if cut mid-sentence.
- `reply_short` / `reply_long`: an assistant reply of fewer than 3 words, or more than 5× the median length.
- `missing_user_message`: an example has no user message.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter, defaultdict

from .validate import Example, Problem

NEAR_DUPLICATE = 0.85
MAX_NEAR_DUPLICATE_CHECK = 20_000  # beyond this many examples only exact duplicates are looked for (and said so)
CLOSING = tuple(".!?…:;)]}\"'”’»*`~") + tuple("。！？")
LISTED = 8  # lines named per warning; the count covers the rest


def review(file: str, examples: list[Example], validation: tuple[str, list[Example]] | None = None) -> list[Problem]:
    found: list[Problem] = []

    def warn(rule: str, lines: list[int], message: str) -> None:
        shown = ", ".join(map(str, lines[:LISTED])) + (f" and {len(lines) - LISTED} more" if len(lines) > LISTED else "")
        found.append(Problem(file, lines[0] if len(lines) == 1 else 0, rule, f"{message} (line {shown})"
                             if len(lines) == 1 else f"{message} (lines {shown})", "warning"))

    for group in _duplicate_groups(examples):
        warn("duplicate", group, f"{len(group)} examples are (nearly) identical")
    if len(examples) > MAX_NEAR_DUPLICATE_CHECK:
        found.append(Problem(file, 0, "duplicate", f"near-duplicate search skipped above {MAX_NEAR_DUPLICATE_CHECK} "
                                                   "examples; exact duplicates were checked", "warning"))

    systems = Counter(_system(e) for e in examples)
    if len(systems) > 1:
        parts = [f"{n}× {('“' + s[:50] + '…”') if s else 'none'}" for s, n in systems.most_common(4)]
        found.append(Problem(file, 0, "system_message_varies",
                             f"{len(systems)} different system messages: {'; '.join(parts)}. The model learns "
                             "them all; use the same one you will deploy with", "warning"))

    no_user = [e.line for e in examples if not any(m["role"] == "user" for m in e.messages)]
    if no_user:
        warn("missing_user_message", no_user, "examples with no user message")

    replies = [(e.line, m["content"]) for e in examples for m in e.messages
               if m["role"] == "assistant" and m.get("weight", 1) != 0 and isinstance(m.get("content"), str)
               and not m.get("tool_calls")]
    cut = sorted({line for line, text in replies if not text.rstrip().endswith(CLOSING) and not _ends_in_emoji(text)})
    if cut:
        warn("reply_cut_off", cut, "assistant replies end without closing punctuation, as if cut off")
    if replies:
        words = [len(text.split()) for _, text in replies]
        median = statistics.median(words)
        short = sorted({line for (line, _), n in zip(replies, words) if n < 3})
        long = sorted({line for (line, _), n in zip(replies, words) if median and n > 5 * median and n > 50})
        if short:
            warn("reply_short", short, "assistant replies of fewer than 3 words")
        if long:
            warn("reply_long", long, f"assistant replies over 5× the median length ({median:.0f} words)")

    if validation:
        valid_file, valid_examples = validation
        train_keys = {_key(e): e.line for e in examples}
        overlap = [e.line for e in valid_examples if _key(e) in train_keys]
        near = [v for v, _ in _near_pairs(valid_examples, examples) if v not in overlap]
        lines = sorted(set(overlap + near))
        if lines:
            found.append(Problem(valid_file, 0, "train_validation_overlap",
                                 f"{len(lines)} validation example(s) also appear (nearly) in the training file, so "
                                 f"validation loss will look better than it is (lines {', '.join(map(str, lines[:LISTED]))})",
                                 "warning"))
    return found


def _duplicate_groups(examples: list[Example]) -> list[list[int]]:
    by_key: dict[str, list[int]] = defaultdict(list)
    for e in examples:
        by_key[_key(e)].append(e.line)
    parent = {e.line: e.line for e in examples}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for lines in by_key.values():
        for other in lines[1:]:
            parent[root(other)] = root(lines[0])
    if len(examples) <= MAX_NEAR_DUPLICATE_CHECK:
        for a, b in _near_pairs(examples, examples):
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for e in examples:
        groups[root(e.line)].append(e.line)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _near_pairs(left: list[Example], right: list[Example]) -> list[tuple[int, int]]:
    """Pairs (left line, right line) sharing ≥ 85% of word 3-grams, found through an index of rare 3-grams."""
    shingles_right = {e.line: _shingles(e) for e in right}
    index: dict[str, list[int]] = defaultdict(list)
    for line, grams in shingles_right.items():
        for g in grams:
            index[g].append(line)
    same_set = left is right
    pairs = []
    for e in left:
        grams = _shingles(e)
        if not grams:
            continue
        candidates: Counter = Counter()
        for g in grams:
            postings = index.get(g, ())
            if len(postings) <= 50:  # common phrases say nothing about duplication
                candidates.update(postings)
        for other, shared in candidates.items():
            if same_set and other <= e.line:
                continue
            union = len(grams | shingles_right[other])
            if union and shared / union >= NEAR_DUPLICATE:
                pairs.append((e.line, other))
    return pairs


def _shingles(example: Example) -> set[str]:
    text = " ".join(m.get("content") or "" for m in example.messages if m["role"] != "system")
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + 3]) for i in range(max(0, len(words) - 2))}


def _key(example: Example) -> str:
    return hashlib.sha1(json.dumps(example.messages, sort_keys=True).encode()).hexdigest()


def _system(example: Example) -> str:
    return next((m.get("content") or "" for m in example.messages if m["role"] == "system"), "")


def _ends_in_emoji(text: str) -> bool:
    return bool(text) and ord(text.rstrip()[-1]) >= 0x2600
