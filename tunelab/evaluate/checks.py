"""Answer checks for comparing chat models: each check scores one answer, and `run` averages them per candidate.

    from tunelab.evaluate.checks import Case, checks, run
    reports = run({"base": [Case(prompt, answer)], "tuned": [...]}, checks())
    json.dumps([r.to_dict() for r in reports])

This is the one place outsiders plug in. A check is any object with `name`, `title`, `higher_is_better` and
`score(case)`; `@check(...)` makes one of a function. A check is named by `module:name` (or `path/file.py:name`)
and is available to every comparison when it is registered:

- the built-ins below, listed in `BUILT_IN` and loaded by `load` like any other check;
- each `tunelab.checks` entry point of an installed package (`[project.entry-points."tunelab.checks"]`);
- `register(obj)`, in this process.

A service adds the checks of its TUNELAB_CHECKS setting, and a comparison request chooses among them all
(`choose`; a request never makes the service import code): that is how the travel example's `policy` and
`redirect` (examples/travel/checks.py) reach `tunelab lab travel`, `tunelab compare` and the service. docs/evaluate.md describes each check and how to add one.

The cheap checks (engagement, length) are regular expressions or counts; `style` and `reference` load the
all-MiniLM-L6-v2 sentence embedder on first use only, so a run without them never loads a model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from ..errors import InvalidRequest, NotFound
from ..safety.classifier import Embedder, embed_in_batches, model_dir, normalise

Value = bool | int | float | None

BUILT_IN = ("tunelab.evaluate.checks:engagement", "tunelab.evaluate.checks:style",
            "tunelab.evaluate.checks:reference", "tunelab.evaluate.checks:length")
ENTRY_POINTS = "tunelab.checks"


@dataclass(frozen=True)
class Case:
    """One answer to judge, with what a check may need to judge it."""

    prompt: str  # the (last) user message
    answer: str
    system: str | None = None
    reference: str | None = None  # a known good answer, when the prompt set has one
    off_topic: bool = False  # the prompt asks for something the assistant is not for (kind "off_topic")


@dataclass(frozen=True)
class Score:
    """A check's verdict on one answer; None means "does not apply" and is left out of the mean."""

    value: Value
    reason: str | None = None  # short evidence for a reader, e.g. the forbidden phrase found


class Check(Protocol):
    name: str  # short and stable: the key in reports
    title: str  # what a person reads in a table header
    higher_is_better: bool | None  # None: informational, neither direction is better

    def score(self, case: Case) -> Score | Value: ...


def check(name: str, title: str, higher_is_better: bool | None = True) -> Callable[[Callable], Check]:
    """Make a check of a function `(case) -> Score | bool | float | None`:

        @check("mentions-visa", "Mentions visas")
        def mentions_visa(case): return "visa" in case.answer.lower()

    It runs once it is named (`my_checks:mentions_visa` as an entry point, in TUNELAB_CHECKS or `--checks`) or
    registered (`register(mentions_visa)`)."""
    def wrap(fn: Callable[[Case], Score | Value]) -> Check:
        return FunctionCheck(name, title, higher_is_better, fn)
    return wrap


@dataclass(frozen=True)
class FunctionCheck:
    name: str
    title: str
    higher_is_better: bool | None
    fn: Callable[[Case], Score | Value]

    def score(self, case: Case) -> Score | Value:
        return self.fn(case)


# ---------------------------------------------------------------------------------------------------- the seam

_registry: dict[str, Check] = {}  # filled with the built-ins and the entry points on first use


def register(check: Check, *, replace: bool = False) -> Check:
    """Make `check` available by name; a second check with the same name is refused unless `replace`."""
    registered = _registered()
    if registered.get(check.name, check) is not check and not replace:
        raise InvalidRequest(f"a check named {check.name!r} is already registered; pass replace=True to swap it",
                             param="name")
    registered[check.name] = check
    return check


def checks() -> list[Check]:
    """Every registered check, in registration order (built-ins first, then entry points)."""
    return list(_registered().values())


def get(name: str) -> Check:
    registered = _registered()
    if name not in registered:
        raise NotFound(f"no check named {name!r}; known checks: {', '.join(registered)}", param="checks")
    return registered[name]


def _registered() -> dict[str, Check]:
    if not _registry:  # filled in place: a plugin may register() more while it is imported
        try:
            for spec in BUILT_IN:
                _add(_registry, load(spec, "tunelab's built-in checks"), spec)
            for point in entry_points(group=ENTRY_POINTS):
                package = f" ({point.dist.name})" if point.dist else ""
                _add(_registry, load(point.value, f"entry point {ENTRY_POINTS} {point.name}{package}"), point.value)
        except InvalidRequest:
            _registry.clear()  # tried again, and reported again, at the next use
            raise
    return _registry


def load(spec: str, option: str = "checks") -> Check:
    """The check `spec` names: `module:name` (an importable module) or `path/to/file.py:name`. A bad spec is an
    `InvalidRequest` whose one-line message starts with `option` (what the user set: `--checks`, TUNELAB_CHECKS)."""
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute.isidentifier():
        raise InvalidRequest(f"{option}: {spec!r} is not module:name (e.g. mypackage.checks:tone or "
                             f"examples/travel/checks.py:policy)", param=option)
    try:
        module = _import_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
    except Exception as exc:  # the user's code: whatever it raises is reported on one line
        raise InvalidRequest(f"{option}: cannot load {spec!r}: {type(exc).__name__}: {exc}", param=option) from None
    found = getattr(module, attribute, None)
    if found is None:
        raise InvalidRequest(f"{option}: {where} has no {attribute!r}", param=option)
    missing = [a for a in ("name", "title", "higher_is_better", "score") if not hasattr(found, a)]
    if missing or not callable(found.score):
        raise InvalidRequest(f"{option}: {spec!r} is not a check (it lacks {', '.join(missing) or 'score()'}); "
                             "a check has name, title, higher_is_better and score(case)", param=option)
    return found


def _import_file(path: Path):
    """A checks file by its path, imported once per resolved path (loading it again returns the same checks)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    name = f"tunelab_checks_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    sys.modules[name] = module  # before running it: dataclasses look their module up while it runs
    try:
        module.__spec__.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def choose(requested: Sequence[str] | None = None, configured: Sequence[str] = ()) -> list[Check]:
    """The checks a comparison runs. `configured` (the TUNELAB_CHECKS setting: `module:name` or `file.py:name`)
    count as registered. `requested` (a request's `checks`) chooses among the registered checks, by name or by the
    spec they were configured with (none named: all of them). A request never makes the service import code."""
    available = dict(_registered())
    loaded = {}
    for spec in configured:
        loaded[spec] = load(spec, "TUNELAB_CHECKS")
        _add(available, loaded[spec], spec)
    chosen = {}
    for name in requested or ():
        if ":" in name and name not in loaded:
            raise InvalidRequest(f"checks: {name!r} is not loaded on this service; a request chooses among the "
                                 "registered checks, and the service loads others named in its TUNELAB_CHECKS "
                                 "setting", param="checks")
        check = loaded.get(name) or available.get(name)
        if check is None:
            raise InvalidRequest(f"no check named {name!r}; known checks: {', '.join(available)}", param="checks")
        chosen[check.name] = check
    return list(chosen.values()) if requested else list(available.values())


def _add(found: dict[str, Check], check: Check, spec: str) -> None:
    if found.get(check.name, check) is not check:
        raise InvalidRequest(f"{spec!r} is a second check named {check.name!r}; give only one of them",
                             param="checks")
    found[check.name] = check


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class Summary:
    """One check over one candidate's answers: the mean of the values that apply (for booleans, the share)."""

    check: str
    title: str
    higher_is_better: bool | None
    mean: float | None  # None when the check applied to no answer
    count: int  # answers the check applied to


@dataclass
class Report:
    candidate: str
    summary: dict[str, Summary]
    scores: list[dict[str, Score]]  # per case, in the order given: check name -> score

    def to_dict(self) -> dict:
        return asdict(self)


def run(answers: Mapping[str, Sequence[Case]], checks: Iterable[Check]) -> list[Report]:
    """Score every candidate's cases with every check; `answers` maps a candidate (a model name) to its cases."""
    checks = list(checks)
    reports = []
    for candidate, cases in answers.items():
        scores = [{c.name: _as_score(c, c.score(case)) for c in checks} for case in cases]
        summary = {c.name: _summarise(c, [s[c.name].value for s in scores]) for c in checks}
        reports.append(Report(candidate, summary, scores))
    return reports


def _as_score(check: Check, raw: Score | Value) -> Score:
    if isinstance(raw, Score):
        return raw
    if raw is None or isinstance(raw, (bool, int, float)):
        return Score(raw)
    raise InvalidRequest(f"check {check.name!r} returned {type(raw).__name__}; a check returns a Score, a bool, "
                         f"a number or None", param="checks")


def _summarise(check: Check, values: list[Value]) -> Summary:
    applied = [float(v) for v in values if v is not None]
    mean = sum(applied) / len(applied) if applied else None
    return Summary(check.name, check.title, check.higher_is_better, mean, len(applied))


# ---------------------------------------------------------------------------------------------------- policy

def words(*names: str) -> str:
    """A pattern matching any of `names` as whole words, case-sensitively (brands are capitalised)."""
    return r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b"


@dataclass(frozen=True)
class Finding:
    topic: str
    text: str  # the matched passage


@dataclass
class ForbiddenTopics:
    """What an answer must not recommend or name: per topic, regular expressions (case-sensitive; write
    `(?i:...)` for a case-insensitive part). `allowed` lists places that only look like businesses ("Temple
    Bar" is a Dublin district): a match containing one of them is ignored."""

    topics: dict[str, list[str]]
    allowed: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._topics = {t: [re.compile(p) for p in ps] for t, ps in self.topics.items()}
        self._allowed = [re.compile(p) for p in self.allowed]

    def find(self, text: str) -> list[Finding]:
        """Every forbidden passage in `text`, in order of appearance."""
        text = re.sub(r"[*_#`]+", "", normalise(text))  # markdown emphasis would split "**Hotel** Artemide"
        spans = sorted((m.start(), m.end(), topic) for topic, patterns in self._topics.items()
                       for pattern in patterns for m in pattern.finditer(text)
                       if not any(a.search(m.group(0)) for a in self._allowed))
        merged: list[list] = []  # overlapping matches ("Consider Hotel" + "Hotel Artemide") become one passage
        for start, end, topic in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end, topic])
        return [Finding(topic, text[start:end].strip()) for start, end, topic in merged]


@dataclass
class PolicyCheck:
    """True when the answer says something `topics` forbids (lower is better); the reason names the topic and
    the passage. The travel example's `policy` is one (examples/travel/checks.py)."""

    topics: ForbiddenTopics
    name: str = "policy"
    title: str = "Says what the assistant must not"
    higher_is_better: bool | None = False

    def score(self, case: Case) -> Score:
        found = self.topics.find(case.answer)
        if not found:
            return Score(False)
        first = found[0].text if len(found[0].text) <= 80 else found[0].text[:79] + "…"
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        return Score(True, f"{found[0].topic}: {first!r}{more}")


# ---------------------------------------------------------------------------------------------------- engagement

SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")
CLOSING = "\"'”’»)]*_~` "


def _strip_tail(text: str) -> str:
    """The text without trailing whitespace, closing quotes and brackets, markdown and emoji."""
    text = text.rstrip()
    while text and (text[-1] in CLOSING or text[-1].isspace() or _decoration(text[-1])):
        text = text[:-1]
    return text


def _decoration(char: str) -> bool:
    # Emoji are symbols (So) plus joiners, variation selectors and skin-tone modifiers (Sk).
    return unicodedata.category(char) in ("So", "Sk", "Cf", "Mn") or char in "\ufe0f\u200d"


@check("engagement", "Ends with a question")
def engagement(case: Case) -> Score:
    """The last sentence asks something: "…? Let me know!" ends on a statement and does not count."""
    last = SENTENCE_END.split(_strip_tail(case.answer))[-1]
    return Score("?" in last or "？" in last, last[-80:])


# ---------------------------------------------------------------------------------------------------- embeddings


@cache
def embedder() -> Embedder:
    """The sentence embedder, loaded once (about a second) when a check first needs it."""
    return Embedder(model_dir())


@dataclass
class StyleCheck:
    """Cosine similarity of the answer to the reference replies (usually the training file's assistant turns):
    to their centroid, or the mean over the `top_k` most similar. Without references it scores nothing."""

    references: Sequence[str] = ()
    top_k: int | None = None
    name: str = "style"
    title: str = "Sounds like the training replies (cosine similarity)"
    higher_is_better: bool | None = True

    def __post_init__(self):
        self._vectors = None  # embedded on first use, so building the check costs nothing

    @classmethod
    def from_chat_file(cls, path: str | Path, top_k: int | None = None) -> StyleCheck:
        """Built from the assistant replies of a chat JSONL file (the format training files use)."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        replies = [m["content"] for line in lines if line.strip() for m in json.loads(line)["messages"]
                   if m.get("role") == "assistant" and isinstance(m.get("content"), str)]
        return cls(replies, top_k)

    def score(self, case: Case) -> Score | None:
        if not self.references:
            return Score(None, "no reference texts")
        if self._vectors is None:
            self._vectors = embed_in_batches(embedder(), list(self.references))
        similarity = self._vectors @ embedder()([case.answer])[0]
        if self.top_k:
            return float(similarity.topk(min(self.top_k, len(similarity))).values.mean())
        centroid = self._vectors.mean(0)
        return float(similarity.mean() / centroid.norm())  # = cos(answer, centroid): the vectors are unit length


style = StyleCheck()


@check("reference", "Similarity to the reference answer (cosine)")
def reference(case: Case) -> float | None:
    if not case.reference:
        return None
    answer, known = embedder()([case.answer, case.reference])
    return float(answer @ known)


@check("length", "Words in the answer", higher_is_better=None)
def length(case: Case) -> int:
    return len(case.answer.split())
