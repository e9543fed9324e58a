"""Preference pairs from comparisons: for each prompt, an answer that passes every chosen check (preferred) beside
an answer to the same prompt that fails one (non-preferred), as lines of the cloud's preference JSONL that a DPO
job trains on.

    mined = mine([report], checks=["policy"], max_per_prompt=2)     # reports as `compare.report` builds them
    mined.rows()                                                    # [{"input": …, "preferred_output": …}, …]
    mined.pairs[0].failed                                           # why: the failed checks with their evidence

The rule. The checks judged by default are those with a yes/no value and a better direction (a pass is the value
`higher_is_better`); a check that does not apply to an answer (None) does not count. An answer passes when at
least one chosen check applied and none failed, and fails when one failed. Filtered, errored and empty answers
are left out on both sides: never preferred, and an empty or cut-off answer teaches nothing as the bad example.
Each failing answer is paired with one passing answer, taken in turn so that several passing answers share the
work; `max_per_prompt` keeps the first pairs of each prompt. The output depends only on the reports and their
order. A preferred answer cut off at the comparison's max_tokens is counted (`preferred_cut_off`) and marked, for
a reviewer to finish or drop: trained as preferred, it would teach stopping mid-sentence.

Several reports over the same prompts (several seeds, other candidates) pool their answers: a prompt is its id
with its full input (the report's system message and the prompt's messages), so answers pool only where they
answered the same conversation. Reports from before the per-prompt `messages` field hold the last user message
(`question`) only; it stands for the conversation then.

`validate_rows` checks preference lines sent back after a person edited them (the studio's review) with the data
check's rules for a preference line, naming the line and the field of a problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from ..data.preference import check_pair, same_answer
from ..errors import InvalidRequest

ALIASES = {"preferred_completion": "preferred_output", "non_preferred_completion": "non_preferred_output"}
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Side:
    """Where one answer of a pair came from."""

    evaluation: str | None  # the comparison's id, when the caller named it
    candidate: str
    seed: int | None
    text: str
    finish_reason: str | None = None  # "length": cut off at the comparison's max_tokens


@dataclass(frozen=True)
class Failure:
    """A chosen check the non-preferred answer failed, with the check's evidence."""

    check: str
    title: str | None
    value: Any
    reason: str | None


@dataclass
class Pair:
    prompt_id: str
    kind: str
    messages: list[dict]  # the input: the system message, if any, and the prompt's messages
    preferred: Side
    non_preferred: Side
    failed: list[Failure]

    def row(self) -> dict:
        """The preference JSONL line (what the file holds; the rest is for a reviewer)."""
        return {"input": {"messages": self.messages},
                "preferred_output": [{"role": "assistant", "content": self.preferred.text}],
                "non_preferred_output": [{"role": "assistant", "content": self.non_preferred.text}]}

    def to_dict(self) -> dict:
        return {"prompt_id": self.prompt_id, "kind": self.kind, "row": self.row(),
                "preferred": asdict(self.preferred), "non_preferred": asdict(self.non_preferred),
                "failed": [asdict(f) for f in self.failed]}


@dataclass
class Mined:
    pairs: list[Pair]
    summary: dict

    def rows(self) -> list[dict]:
        return [p.row() for p in self.pairs]

    def jsonl(self) -> bytes:
        return self.lines(self.rows())

    @staticmethod
    def lines(rows: Iterable[dict]) -> bytes:
        """Preference lines as the file holds them: one JSON object a line, UTF-8."""
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    def why_none(self) -> str:
        """Why no pair came out, in one line (for a 400 and the CLI)."""
        s = self.summary
        return (f"no prompt had both a passing and a failing answer: {s['prompts']} prompts, "
                f"{s['prompts_with_passing']} with a passing answer, {s['prompts_with_failing']} with a failing "
                f"answer (checks: {', '.join(s['checks'])})")


@dataclass
class _Answer:
    side: Side
    failed: list[Failure]


@dataclass
class _Prompt:
    id: str
    kind: str
    messages: list[dict]
    passing: list[_Answer] = field(default_factory=list)
    failing: list[_Answer] = field(default_factory=list)


def judged_checks(reports: Sequence[dict]) -> dict[str, tuple[bool, bool]]:
    """The checks of every report that can pass or fail an answer (a better direction, and no value but yes or
    no), each with the value that passes and whether any answer was judged by it."""
    found = {}
    summaries = [_summaries(r) for r in reports]
    for name, summary in summaries[0].items():
        better = summary.get("higher_is_better")
        if better is None or any(name not in s or s[name].get("higher_is_better") != better for s in summaries):
            continue
        values = [v for r in reports for v in _values(r, name)]
        if all(isinstance(v, bool) for v in values):
            found[name] = (better, bool(values))
    return found


def mine(reports: Sequence[dict], *, checks: Sequence[str] | None = None, max_per_prompt: int | None = None,
         names: Sequence[str | None] | None = None) -> Mined:
    """Pairs from one or more comparison reports (plain dicts); `names` are the reports' evaluation ids, kept
    with each answer so a reviewer sees where it came from. Refuses checks that cannot pass or fail."""
    if not reports:
        raise InvalidRequest("name at least one comparison", param="evaluations")
    if max_per_prompt is not None and max_per_prompt < 1:
        raise InvalidRequest("max_per_prompt is at least 1", param="max_per_prompt")
    names = list(names) if names is not None else [None] * len(reports)
    if all(names):  # the same comparisons give the same pairs, in whatever order they were named
        reports, names = map(list, zip(*sorted(zip(reports, names), key=lambda pair: pair[1])))
    chosen = _choose(reports, checks, names)
    prompts, excluded, answers = _pool(reports, names, chosen)
    pairs, capped = [], 0
    for prompt in prompts.values():
        passing = _distinct(prompt.passing)
        failing = _distinct(prompt.failing, also_seen=passing)  # a text that also passed elsewhere is no loser
        made = [Pair(prompt.id, prompt.kind, prompt.messages, passing[i % len(passing)].side, bad.side, bad.failed)
                for i, bad in enumerate(failing)] if passing else []
        if max_per_prompt is not None and len(made) > max_per_prompt:
            capped += len(made) - max_per_prompt
            made = made[:max_per_prompt]
        pairs.extend(made)
    failures = {check: sum(1 for p in pairs if any(f.check == check for f in p.failed)) for check in chosen}
    summary = {"reports": len(reports), "checks": list(chosen), "prompts": len(prompts), "answers": answers,
               "excluded": excluded,
               "prompts_with_passing": sum(1 for p in prompts.values() if p.passing),
               "prompts_with_failing": sum(1 for p in prompts.values() if p.failing),
               "prompts_with_pair": len({p.prompt_id + json.dumps(p.messages) for p in pairs}),
               "pairs": len(pairs), "capped": capped, "max_per_prompt": max_per_prompt, "failures": failures,
               "preferred_cut_off": sum(1 for p in pairs if p.preferred.finish_reason == "length")}
    return Mined(pairs, summary)


def _pool(reports: Sequence[dict], names: Sequence[str | None], chosen: dict[str, bool]):
    """Every answer judged and filed under its prompt (id + whole input), with the counts of those left out."""
    prompts: dict[str, _Prompt] = {}
    excluded = {"filtered": 0, "errors": 0, "empty": 0, "unjudged": 0}
    answers = 0
    for report, name in zip(reports, names):
        settings = report.get("settings") or {}
        system = settings.get("system")
        titles = {k: s.get("title") for k, s in _summaries(report).items()}
        for prompt in report.get("prompts", []):
            messages = ([{"role": "system", "content": system}] if system else []) + _messages(prompt)
            key = json.dumps([prompt["id"], messages], sort_keys=True)
            pooled = prompts.setdefault(key, _Prompt(str(prompt["id"]), prompt.get("kind") or "general", messages))
            for candidate, answer in prompt["answers"].items():
                answers += 1
                failed = _judge(answer, chosen, titles)
                if isinstance(failed, str):
                    excluded[failed] += 1
                    continue
                got = _Answer(Side(name, candidate, settings.get("seed"), answer["text"], answer.get("finish_reason")),
                              failed)
                (pooled.failing if failed else pooled.passing).append(got)
    return prompts, excluded, answers


def _judge(answer: dict, chosen: dict[str, bool], titles: dict[str, str | None]) -> list[Failure] | str:
    """The chosen checks the answer failed (none: it passes), or why it is left out."""
    left_out = _left_out(answer)
    if left_out:
        return left_out
    failed, applied = [], 0
    for check, better in chosen.items():
        score = (answer.get("scores") or {}).get(check) or {}
        if score.get("value") is None:
            continue  # the check does not apply to this answer
        applied += 1
        if bool(score["value"]) != better:
            failed.append(Failure(check, titles.get(check), score["value"], _evidence(score)))
    return failed if applied else "unjudged"


def _choose(reports: Sequence[dict], requested: Sequence[str] | None, names: Sequence[str | None]) -> dict[str, bool]:
    """The checks that judge, with the value that passes: by default every yes/no check that judged an answer."""
    judged = judged_checks(reports)
    if not requested:
        chosen = {c: better for c, (better, used) in judged.items() if used}
        if not chosen:
            raise InvalidRequest("no check of the comparison passes or fails an answer (a yes/no check with a "
                                 "better direction, such as policy or engagement), so no answer can be preferred",
                                 param="checks")
        return chosen
    for check in requested:
        for i, report in enumerate(reports):
            summaries = _summaries(report)
            if check not in summaries:
                raise InvalidRequest(f"checks: {names[i] or f'report {i + 1}'} has no check {check!r}; it has "
                                     f"{', '.join(summaries) or 'none'}", param="checks")
        if check not in judged:
            summary = _summaries(reports[0])[check]
            what = ("has no better direction" if summary.get("higher_is_better") is None
                    else "scores more than yes or no")
            raise InvalidRequest(f"checks: {check!r} {what}, so it cannot pass or fail an answer; choose among "
                                 f"{', '.join(judged) or 'none'}", param="checks")
    return {check: judged[check][0] for check in requested}


def _summaries(report: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for candidate in report.get("candidates", []):
        for name, summary in (candidate.get("checks") or {}).items():
            found.setdefault(name, summary)
    return found


def _values(report: dict, check: str) -> list:
    return [((a.get("scores") or {}).get(check) or {}).get("value") for p in report.get("prompts", [])
            for a in p["answers"].values() if ((a.get("scores") or {}).get(check) or {}).get("value") is not None]


def _messages(prompt: dict) -> list[dict]:
    if prompt.get("messages"):
        return [dict(m) for m in prompt["messages"]]
    return [{"role": "user", "content": prompt["question"]}]  # a report from before `messages`


def _left_out(answer: dict) -> str | None:
    if answer.get("finish_reason") == "content_filter":
        return "filtered"
    if answer.get("error") or answer.get("finish_reason") == "error":
        return "errors"
    if not (answer.get("text") or "").strip():
        return "empty"
    return None


def _evidence(score: dict) -> str | None:
    return score.get("reason") or score.get("evidence")


def _distinct(answers: Iterable[_Answer], also_seen: Iterable[_Answer] = ()) -> list[_Answer]:
    """The answers with distinct texts (spacing aside), first seen first (two seeds can give the same answer),
    leaving out the texts of `also_seen`."""
    seen, kept = {_squash(a.side.text) for a in also_seen}, []
    for answer in answers:
        if _squash(answer.side.text) not in seen:
            seen.add(_squash(answer.side.text))
            kept.append(answer)
    return kept


def _squash(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------- edited rows


def validate_rows(rows: Sequence[Any], param: str = "pairs") -> list[dict]:
    """Preference lines as a client sent them, checked by the data check's rules for a preference line
    (`data/preference.py`), plus: the two answers differ. Returns them with the older field names renamed. The
    first problem is an `InvalidRequest` naming the line (1-based, as in the file) and the field."""
    if not isinstance(rows, list) or not rows:
        raise InvalidRequest(f"{param} is a non-empty list of preference lines", param=param)
    if len(rows) > MAX_ROWS:
        raise InvalidRequest(f"{param}: {len(rows)} lines; at most {MAX_ROWS:,} in one file", param=param)
    checked = []
    for number, row in enumerate(rows, 1):
        where = f"{param}[{number - 1}]"
        if not isinstance(row, dict):
            raise InvalidRequest(f"line {number}: a preference line is an object with input, preferred_output and "
                                 "non_preferred_output", param=where)
        example, problems = check_pair(number, row)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise InvalidRequest(f"line {number}: {problems[0][1]}{more}", param=where)
        if same_answer(example):
            raise InvalidRequest(f"line {number}: `preferred_output` is the same answer as `non_preferred_output`: "
                                 "a pair needs two different answers", param=where)
        checked.append({ALIASES.get(k, k): v for k, v in row.items()})
    return checked
