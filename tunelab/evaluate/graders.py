"""Graders of the evals API: an eval's `testing_criteria`, checked when the eval is created (an error names the
field, e.g. `testing_criteria[1].type`), then run on each item of a run.

    graders = parse(criteria, configured_checks=settings.checks, known_model=lambda name, param: ...)
    result = await graders[0].grade({"item": {...}, "sample": {"output_text": "..."}}, ask)

Templates (`{{item.x}}`, `{{item.a.b}}`, `{{sample.output_text}}`) read the item and the sample; a value that is not
text is inserted as JSON. The graders, as the cloud names them:

- `string_check`: `input` `eq` / `ne` / `like` (contains) / `ilike` (contains, ignoring case) `reference`.
- `text_similarity`: `evaluation_metric` of `input` against `reference` (`similarity.py`; `cosine` with the checks'
  sentence embedder), passed at `pass_threshold` or above.
- `score_model` and `label_model`: a local model (a model id or a deployment, asked through the same path as chat
  completions) reads the rendered `input` messages, told how to answer; its answer is parsed (a JSON object with
  `result`/`score` or `label`, else the first number or the first label named). An answer that cannot be parsed is
  an errored result, never a crash.
- `tunelab_check`: one of the registered answer checks (`checks.py`: engagement, style, reference, length and those
  of TUNELAB_CHECKS, such as the travel example's policy and redirect) on the sample's answer, with the last user
  message as the prompt and `item.reference` / `item.kind` as a comparison's prompt set gives them. A boolean check
  passes when it is on its better side; a numeric one against `pass_threshold`; a check that does not apply to an
  item (None) neither passes nor fails.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from ..errors import InvalidRequest, TunelabError
from . import checks as registry
from .checks import Case, Score
from .compare import Answer, Spec
from .similarity import METRICS
from .stats import wilson

TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*")
NAMESPACES = ("item", "sample")
SIMILARITY = (*METRICS, "cosine")
GRADER_SAMPLING = {"temperature": 0.0, "seed": 42, "max_completions_tokens": 64}

Ask = Callable[[str, list[dict], Spec], Awaitable[Answer]]  # `Candidates.ask`: a model or deployment answers


class MissingValue(Exception):
    """A template names something the item or the sample does not have."""


# ---------------------------------------------------------------------------------------------------- templates

def check_template(text: Any, param: str, namespaces: tuple[str, ...] = NAMESPACES) -> str:
    """`text` as a template, or an InvalidRequest naming `param`: references must be `namespace.path`."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    for found in TEMPLATE.finditer(text):
        reference = found.group(1).strip()
        if not REFERENCE.fullmatch(reference) or reference.split(".")[0] not in namespaces:
            raise InvalidRequest(f"{param}: {{{{{found.group(1)}}}}} is not a reference to "
                                 f"{' or '.join(n + '.<field>' for n in namespaces)}", param=param)
    if "{{" in TEMPLATE.sub("", text):
        raise InvalidRequest(f"{param}: a '{{{{' is not closed with '}}}}'", param=param)
    return text


def render(text: str, context: dict) -> str:
    """The template with each reference replaced by its value in `context` (`{"item": ..., "sample": ...}`)."""
    def value(found: re.Match) -> str:
        got = lookup(context, found.group(1).strip())
        return got if isinstance(got, str) else json.dumps(got)
    return TEMPLATE.sub(value, text)


def lookup(context: dict, reference: str):
    got: Any = context
    for part in reference.split("."):
        if isinstance(got, dict) and part in got:
            got = got[part]
        elif isinstance(got, list) and part.isdigit() and int(part) < len(got):
            got = got[int(part)]
        else:
            raise MissingValue(f"{{{{{reference}}}}}: the {reference.split('.')[0]} has no {part!r}")
    return got


def message_text(message: dict, param: str) -> dict:
    """A template message (`{"role", "content"}` or the cloud's `{"type": "message", ...}` with text parts) as a
    plain chat message, or an InvalidRequest naming `param`."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"{param} must be a message with a role and a content", param=param)
    if message["role"] not in ("system", "developer", "user", "assistant"):
        raise InvalidRequest(f"{param}.role must be system, developer, user or assistant", param=f"{param}.role")
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text") \
                and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise InvalidRequest(f"{param}.content: only text is supported (a string, or input_text / output_text "
                                 "parts)", param=f"{param}.content")
    return {"role": message["role"], "content": "".join(texts)}


# ---------------------------------------------------------------------------------------------------- results

@dataclass
class Result:
    """One grader's verdict on one item. `passed` None: the grader does not apply to this item; `error`: it could
    not grade it (an errored result, counted apart from passes and failures)."""

    name: str
    type: str
    score: float | None
    passed: bool | None
    sample: dict | None = None
    error: str | None = None
    usage: list[tuple[str, Answer]] = field(default_factory=list)  # the model answers it asked for

    def to_dict(self) -> dict:
        made = {"name": self.name, "type": self.type, "score": self.score, "passed": bool(self.passed),
                "sample": self.sample}
        if self.passed is None and self.error is None:
            made["not_applicable"] = True
        if self.error is not None:
            made["error"] = self.error
        return made


class Grader(Protocol):
    name: str
    type: str
    spec: dict  # as the eval was given it

    async def grade(self, context: dict, ask: Ask) -> Result: ...


def _errored(grader: Grader, why: str, **sample) -> Result:
    return Result(grader.name, grader.type, None, False, sample or None, error=why)


# ---------------------------------------------------------------------------------------------------- graders

@dataclass
class StringCheck:
    name: str
    input: str
    reference: str
    operation: str
    spec: dict
    type: str = "string_check"

    async def grade(self, context: dict, ask: Ask) -> Result:
        try:
            text, reference = render(self.input, context), render(self.reference, context)
        except MissingValue as exc:
            return _errored(self, str(exc))
        passed = {"eq": text == reference, "ne": text != reference, "like": reference in text,
                  "ilike": reference.lower() in text.lower()}[self.operation]
        return Result(self.name, self.type, 1.0 if passed else 0.0, passed)


@dataclass
class TextSimilarity:
    name: str
    input: str
    reference: str
    metric: str
    threshold: float
    spec: dict
    type: str = "text_similarity"

    async def grade(self, context: dict, ask: Ask) -> Result:
        try:
            text, reference = render(self.input, context), render(self.reference, context)
        except MissingValue as exc:
            return _errored(self, str(exc))
        score = await asyncio.to_thread(_similarity, self.metric, text, reference)
        return Result(self.name, self.type, score, score >= self.threshold)


def _similarity(metric: str, text: str, reference: str) -> float:
    if metric == "cosine":
        a, b = registry.embedder()([text, reference])  # unit vectors: their dot product is the cosine
        return float(a @ b)
    return METRICS[metric](text, reference)


@dataclass
class ModelGrader:
    """`score_model` (a number in `range`, passed at `pass_threshold`) or `label_model` (one of `labels`, passed
    when among `passing_labels`)."""

    name: str
    type: str
    model: str
    input: list[dict]
    sampling: dict
    spec: dict
    range: tuple[float, float] = (0.0, 1.0)
    threshold: float | None = None
    labels: list[str] = field(default_factory=list)
    passing: list[str] = field(default_factory=list)

    def instruction(self) -> str:
        if self.type == "score_model":
            low, high = self.range
            return (f'Answer with only a JSON object {{"result": <score>}}, where <score> is a number from {low:g} '
                    f'to {high:g}.')
        return (f'Answer with only a JSON object {{"label": <label>}}, where <label> is one of: '
                f'{", ".join(self.labels)}.')

    async def grade(self, context: dict, ask: Ask) -> Result:
        try:
            messages = [{**m, "content": render(m["content"], context)} for m in self.input]
        except MissingValue as exc:
            return _errored(self, str(exc))
        last = messages[-1] if messages and messages[-1]["role"] == "user" else None
        if last is not None:  # told how to answer in the last user turn: chat templates want turns to alternate
            last["content"] = f"{last['content']}\n\n{self.instruction()}"
        else:
            messages.append({"role": "user", "content": self.instruction()})
        spec = Spec(candidates=[self.model], prompts=[], seed=self.sampling["seed"],
                    temperature=self.sampling["temperature"], max_tokens=self.sampling["max_completions_tokens"])
        try:
            answer = await ask(self.model, messages, spec)
        except TunelabError as exc:  # refused as a chat request would be: this item's error, not the run's
            return _errored(self, exc.message, model=self.model)
        usage = [(self.model, answer)]
        if answer.error or answer.finish_reason == "content_filter":
            why = answer.error or "the grader model's answer was filtered"
            return Result(self.name, self.type, None, False, {"model": self.model}, error=why, usage=usage)
        sample = {"model": self.model, "output_text": answer.text}
        try:
            if self.type == "score_model":
                score = parse_score(answer.text, *self.range)
                threshold = self.threshold if self.threshold is not None else sum(self.range) / 2
                return Result(self.name, self.type, score, score >= threshold, sample, usage=usage)
            label = parse_label(answer.text, self.labels)
        except ValueError as exc:
            return Result(self.name, self.type, None, False, sample, error=str(exc), usage=usage)
        passed = label in self.passing
        return Result(self.name, self.type, 1.0 if passed else 0.0, passed, {**sample, "label": label}, usage=usage)


def parse_score(text: str, low: float, high: float) -> float:
    """The score in a grader model's answer: `{"result": x}` (or `"score"`) in a JSON object, else the first number;
    a ValueError when there is none in [low, high]."""
    for found in re.finditer(r"\{[^{}]*\}", text):
        try:
            parsed = json.loads(found.group(0))
        except ValueError:
            continue
        value = parsed.get("result", parsed.get("score")) if isinstance(parsed, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
            return float(value)
    for found in re.finditer(r"-?\d+(?:\.\d+)?", text):
        if low <= float(found.group(0)) <= high:
            return float(found.group(0))
    shown = text if len(text) <= 120 else text[:119] + "…"
    raise ValueError(f"the grader model's answer holds no score from {low:g} to {high:g}: {shown!r}")


def parse_label(text: str, labels: list[str]) -> str:
    """The label in a grader model's answer: `{"label": x}` in a JSON object, else the label named first."""
    for found in re.finditer(r"\{[^{}]*\}", text):
        try:
            parsed = json.loads(found.group(0))
        except ValueError:
            continue
        if isinstance(parsed, dict) and parsed.get("label") in labels:
            return parsed["label"]
    named = [(m.start(), label) for label in labels
             for m in [re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)] if m]
    if named:
        return min(named)[1]
    shown = text if len(text) <= 120 else text[:119] + "…"
    raise ValueError(f"the grader model's answer names none of the labels {labels}: {shown!r}")


@dataclass
class TunelabCheck:
    name: str
    check: Any  # a registered check (`checks.Check`)
    spec: dict
    prompt: str | None = None
    reference: str | None = None
    threshold: float | None = None
    type: str = "tunelab_check"

    async def grade(self, context: dict, ask: Ask) -> Result:
        item, sample = context["item"], context.get("sample") or {}
        try:
            prompt = render(self.prompt, context) if self.prompt else _last_user(sample.get("input"), item)
            reference = render(self.reference, context) if self.reference else item.get("reference")
        except MissingValue as exc:
            return _errored(self, str(exc))
        system = next((m["content"] for m in sample.get("input") or [] if m.get("role") in ("system", "developer")),
                      None)
        case = Case(prompt=prompt, answer=sample.get("output_text") or "", system=system,
                    reference=reference if isinstance(reference, str) else None,
                    off_topic=item.get("kind") == "off_topic")
        try:
            raw = await asyncio.to_thread(self.check.score, case)
        except Exception as exc:  # a check is the user's code: its failure is this item's error, not the run's
            return _errored(self, f"check {self.check.name!r} failed: {type(exc).__name__}: {exc}")
        score = raw if isinstance(raw, Score) else Score(raw)
        reason = {"reason": score.reason} if score.reason else None
        if score.value is None:
            return Result(self.name, self.type, None, None, reason)
        if isinstance(score.value, bool):
            passed = score.value is (self.check.higher_is_better is not False)
        elif self.threshold is None:
            return _errored(self, f"check {self.check.name!r} gives numbers: give the grader a pass_threshold")
        else:
            passed = (score.value <= self.threshold if self.check.higher_is_better is False
                      else score.value >= self.threshold)
        return Result(self.name, self.type, float(score.value), passed, reason)


def _last_user(messages: list | None, item: dict) -> str:
    users = [m.get("content") for m in messages or [] if m.get("role") == "user"]
    if users and isinstance(users[-1], str):
        return users[-1]
    for key in ("input", "prompt", "question"):  # an item without generated input: its own question, if it has one
        if isinstance(item.get(key), str):
            return item[key]
    return ""


# ---------------------------------------------------------------------------------------------------- parsing

def parse(criteria: Any, *, configured_checks: tuple | list = (),
          known_model: Callable[[str, str], None] = lambda name, param: None) -> list[Grader]:
    """The graders of `testing_criteria`, or an InvalidRequest naming the field. `known_model(name, param)` raises
    when a model grader names a model or deployment that does not exist."""
    if not isinstance(criteria, list) or not criteria:
        raise InvalidRequest("testing_criteria must be a non-empty list of graders", param="testing_criteria")
    graders, names = [], set()
    for i, spec in enumerate(criteria):
        where = f"testing_criteria[{i}]"
        if not isinstance(spec, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        grader = _one(spec, where, configured_checks, known_model)
        if grader.name in names:
            raise InvalidRequest(f"{where}.name: another grader is already named {grader.name!r}",
                                 param=f"{where}.name")
        names.add(grader.name)
        graders.append(grader)
    return graders


def _one(spec: dict, where: str, configured_checks, known_model) -> Grader:
    kind = spec.get("type")
    name = spec.get("name") if kind != "tunelab_check" else spec.get("name") or spec.get("check")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"{where}.name is required", param=f"{where}.name")
    if kind == "string_check":
        operation = spec.get("operation")
        if operation not in ("eq", "ne", "like", "ilike"):
            raise InvalidRequest(f"{where}.operation must be eq, ne, like or ilike", param=f"{where}.operation")
        return StringCheck(name, check_template(spec.get("input"), f"{where}.input"),
                           check_template(spec.get("reference"), f"{where}.reference"), operation, spec)
    if kind == "text_similarity":
        metric = spec.get("evaluation_metric")
        if metric == "meteor":
            raise InvalidRequest(f"{where}.evaluation_metric: meteor needs WordNet synonyms and a stemmer that "
                                 f"tunelab does not ship; use one of {', '.join(SIMILARITY)}",
                                 param=f"{where}.evaluation_metric")
        if metric not in SIMILARITY:
            raise InvalidRequest(f"{where}.evaluation_metric must be one of {', '.join(SIMILARITY)}",
                                 param=f"{where}.evaluation_metric")
        return TextSimilarity(name, check_template(spec.get("input"), f"{where}.input"),
                              check_template(spec.get("reference"), f"{where}.reference"), metric,
                              _number(spec, "pass_threshold", where, required=True), spec)
    if kind in ("score_model", "label_model"):
        return _model_grader(spec, kind, name, where, known_model)
    if kind == "tunelab_check":
        wanted = spec.get("check") or name
        try:
            found = registry.choose([wanted], configured_checks)[0]
        except InvalidRequest as exc:
            param = f"{where}.check" if spec.get("check") else f"{where}.name"
            raise InvalidRequest(exc.message.replace("checks: ", ""), param=param) from None
        return TunelabCheck(name, found, spec,
                            check_template(spec["prompt"], f"{where}.prompt") if spec.get("prompt") else None,
                            check_template(spec["reference"], f"{where}.reference") if spec.get("reference") else None,
                            _number(spec, "pass_threshold", where))
    if kind == "python":
        raise InvalidRequest(f"{where}.type: python graders run code sent in the request, which tunelab does not "
                             "do; a service adds its own checks with TUNELAB_CHECKS and offers them as tunelab_check",
                             param=f"{where}.type")
    raise InvalidRequest(f"{where}.type {kind!r} is not a grader tunelab knows: string_check, text_similarity, "
                         "score_model, label_model or tunelab_check", param=f"{where}.type")


def _model_grader(spec: dict, kind: str, name: str, where: str, known_model) -> ModelGrader:
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(f"{where}.model is required: a model id or a deployment name", param=f"{where}.model")
    known_model(model, f"{where}.model")
    messages = spec.get("input")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f"{where}.input must be a non-empty list of messages", param=f"{where}.input")
    plain = [message_text(m, f"{where}.input[{j}]") for j, m in enumerate(messages)]
    for j, message in enumerate(plain):
        check_template(message["content"], f"{where}.input[{j}].content")
    sampling = {**GRADER_SAMPLING, **{k: v for k, v in (spec.get("sampling_params") or {}).items() if v is not None}}
    for key, low, high in (("temperature", 0, 2), ("max_completions_tokens", 1, 4096)):
        if not isinstance(sampling[key], (int, float)) or not low <= sampling[key] <= high:
            raise InvalidRequest(f"{where}.sampling_params.{key} must be from {low} to {high}",
                                 param=f"{where}.sampling_params.{key}")
    if kind == "score_model":
        bounds = spec.get("range") or [0, 1]
        if (not isinstance(bounds, list) or len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds)
                or bounds[0] >= bounds[1]):
            raise InvalidRequest(f"{where}.range must be [low, high] with low < high", param=f"{where}.range")
        return ModelGrader(name, kind, model, plain, sampling, spec, range=(float(bounds[0]), float(bounds[1])),
                           threshold=_number(spec, "pass_threshold", where))
    labels, passing = spec.get("labels"), spec.get("passing_labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise InvalidRequest(f"{where}.labels must be a non-empty list of strings", param=f"{where}.labels")
    if not isinstance(passing, list) or not passing or not set(passing) <= set(labels):
        raise InvalidRequest(f"{where}.passing_labels must be a non-empty subset of labels",
                             param=f"{where}.passing_labels")
    return ModelGrader(name, kind, model, plain, sampling, spec, labels=labels, passing=passing)


def _number(spec: dict, key: str, where: str, *, required: bool = False) -> float | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequest(f"{where}.{key} must be a number", param=f"{where}.{key}")
    return float(value)


# ---------------------------------------------------------------------------------------------------- tallies

def item_status(results: list[Result], sample_error: bool) -> str:
    """`error` when the sample could not be made or a grader could not grade; else `fail` if any grader failed."""
    if sample_error or any(r.error for r in results):
        return "error"
    return "fail" if any(r.passed is False for r in results) else "pass"


@dataclass
class Tally:
    """A run's counts as its items are graded: the result counts, each grader's passes with the 95% interval of
    its pass rate (over the items it passed or failed), and the tokens each model used."""

    names: list[str]
    counts: dict = field(default_factory=lambda: {"total": 0, "passed": 0, "failed": 0, "errored": 0})
    graders: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)

    def __post_init__(self):
        self.graders = {n: {"passed": 0, "failed": 0, "errored": 0, "not_applicable": 0} for n in self.names}

    def add(self, status: str, results: list[Result], answers: list[tuple[str, Answer]]) -> None:
        self.counts["total"] += 1
        self.counts[{"pass": "passed", "fail": "failed", "error": "errored"}[status]] += 1
        for result in results:
            kind = ("errored" if result.error else "not_applicable" if result.passed is None
                    else "passed" if result.passed else "failed")
            self.graders[result.name][kind] += 1
        for model, answer in answers:
            used = self.usage.setdefault(model, {"model_name": model, "invocation_count": 0, "prompt_tokens": 0,
                                                 "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
            used["invocation_count"] += 1
            used["prompt_tokens"] += answer.prompt_tokens
            used["completion_tokens"] += answer.completion_tokens
            used["total_tokens"] += answer.prompt_tokens + answer.completion_tokens

    def to_dict(self) -> dict:
        per = [{"testing_criteria": name, **c, "pass_rate": wilson(c["passed"], c["passed"] + c["failed"]).to_dict()}
               for name, c in self.graders.items()]
        return {"result_counts": dict(self.counts), "per_testing_criteria_results": per,
                "per_model_usage": list(self.usage.values())}
