"""Text similarity metrics of the `text_similarity` grader, each a score in [0, 1] of a text against a reference:

    fuzzy_match("kitten", "sitting")            # 2·LCS / (len + len) over characters: rapidfuzz's `fuzz.ratio` / 100
    bleu("the cat sat on the mat", "the cat is on the mat")
    rouge("the quick brown dog", "the quick brown fox", "rouge_1")    # F1, as Google's rouge-score computes it

Word metrics tokenise as the `rouge-score` package does by default: lower case, runs of letters and digits
(`[a-z0-9]+` after lower-casing; other characters separate words), no stemming.

- `fuzzy_match`: the normalised Indel similarity (rapidfuzz's `ratio`), 2·LCS(a, b) / (|a| + |b|) on characters.
- `bleu`: sentence BLEU (Papineni et al. 2002) up to 4-grams, uniform weights, brevity penalty, as NLTK's
  `sentence_bleu` with `SmoothingFunction().method1` (a zero n-gram count counts as 0.1, so one missing 4-gram
  does not zero a short answer; no word in common is 0).
- `gleu`: Google-BLEU (Wu et al. 2016; NLTK's `sentence_gleu`): min(precision, recall) over all 1- to 4-grams.
- `rouge_1` … `rouge_5`: F1 of clipped n-gram overlap; `rouge_l`: F1 of the longest common subsequence of words.

`cosine` (sentence embeddings) is the grader's, through the checks' embedder; `meteor` needs WordNet synonyms and
a stemmer that tunelab does not ship, and is refused rather than approximated.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"[a-z0-9]+")
EPSILON = 0.1  # NLTK's SmoothingFunction().method1


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences, bit-parallel (Allison–Dix / Hyyrö): one pass
    over `b` with Python integers as bit vectors over `a`, so long answers cost milliseconds, not a table."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, symbol in enumerate(a):
        masks[symbol] = masks.get(symbol, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for symbol in b:
        matches = row & masks.get(symbol, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(a) - bin(row).count("1")


def fuzzy_match(text: str, reference: str) -> float:
    if not text and not reference:
        return 1.0
    return 2 * lcs_length(text, reference) / (len(text) + len(reference))


def bleu(text: str, reference: str, max_n: int = 4) -> float:
    hypothesis, known = words(text), words(reference)
    if not hypothesis or not known:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        found, expected = ngrams(hypothesis, n), ngrams(known, n)
        overlap = sum(min(count, expected[gram]) for gram, count in found.items())
        if n == 1 and overlap == 0:
            return 0.0
        logs.append(math.log((overlap or EPSILON) / max(1, sum(found.values()))))
    brevity = 1.0 if len(hypothesis) > len(known) else math.exp(1 - len(known) / len(hypothesis))
    return brevity * math.exp(sum(logs) / max_n)


def gleu(text: str, reference: str, max_n: int = 4) -> float:
    hypothesis, known = words(text), words(reference)
    found, expected = Counter(), Counter()
    for n in range(1, max_n + 1):
        found.update(ngrams(hypothesis, n))
        expected.update(ngrams(known, n))
    if not found or not expected:
        return 0.0
    overlap = sum((found & expected).values())
    return min(overlap / sum(found.values()), overlap / sum(expected.values()))


def rouge(text: str, reference: str, metric: str) -> float:
    """`rouge_1` … `rouge_5` or `rouge_l`: the F1 of the text (as prediction) against the reference (as target)."""
    prediction, target = words(text), words(reference)
    if metric == "rouge_l":
        overlap, found, expected = lcs_length(prediction, target), len(prediction), len(target)
    else:
        n = int(metric.removeprefix("rouge_"))
        predicted, targeted = ngrams(prediction, n), ngrams(target, n)
        overlap, found, expected = sum((predicted & targeted).values()), sum(predicted.values()), sum(targeted.values())
    if not overlap:
        return 0.0
    precision, recall = overlap / found, overlap / expected
    return 2 * precision * recall / (precision + recall)


METRICS = {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu,
           **{f"rouge_{n}": (lambda t, r, m=f"rouge_{n}": rouge(t, r, m)) for n in ("1", "2", "3", "4", "5", "l")}}
