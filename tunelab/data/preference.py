"""Preference pairs (the cloud's DPO format): the rules of one line, the pair as two renderable conversations,
and the reviewer's warnings about a set of pairs.

    {"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

`preferred_completion` / `non_preferred_completion` (the names before July 2025) are accepted as aliases. The
two outputs are the final assistant turn after `input.messages`; only that turn is scored (DPO compares the
model's log-probability of the two answers to the same prompt), everything in the input is context.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass

from .validate import Problem, _check_example, _content_problem, _has_lone_surrogate, _kind, _normalise

SIDES = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))
PAIR_KEYS = {"input", *(name for side in SIDES for name in side)}
INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
LISTED = 8  # lines named per warning


@dataclass
class PreferenceExample:
    """A valid pair with the line it came from: the prompt's messages, and the text of both answers."""

    line: int
    messages: list[dict]
    tools: list[dict] | None
    preferred: str
    non_preferred: str

    def conversation(self, answer: str) -> list[dict]:
        """The prompt followed by `answer`, the only trained turn (earlier assistant turns are context)."""
        context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in self.messages]
        return context + [{"role": "assistant", "content": answer}]


def check_pair(number: int, data: dict) -> tuple[PreferenceExample | None, list[tuple[str, str]]]:
    """The rules of one preference line (`tunelab data check` lists them; each error names its rule):
    - `unknown_key`: a line holds only `input`, `preferred_output`, `non_preferred_output` (or the aliases
      `preferred_completion`, `non_preferred_completion`); `input` only `messages`, `tools`, `parallel_tool_calls`.
    - `missing_input`: `input` is an object whose `messages` is a non-empty list; its messages follow the chat
      rules (roles, content, tool calls; reported as `input.messages[i]…`) and the last is not the assistant's.
    - `invalid_output`: each of the two outputs is a list of exactly one assistant message with non-empty text
      content (text only: DPO here compares text answers), holding only `role` and `content`.
    """
    found: list[tuple[str, str]] = []
    for key in sorted(set(data) - PAIR_KEYS):
        found.append(("unknown_key", f"unknown key {key!r} (allowed: input, preferred_output, non_preferred_output)"))
    answers = []
    for names in SIDES:
        present = [n for n in names if n in data]
        if len(present) > 1:
            found.append(("unknown_key", f"both {names[0]!r} and its older name {names[1]!r}: give one"))
        value = data.get(present[0]) if present else None
        text, problem = _output(value)
        if problem:
            found.append(("invalid_output", f"`{names[0]}` {problem}"))
        answers.append(text)

    prompt = data.get("input")
    if not isinstance(prompt, dict) or not isinstance(prompt.get("messages"), list) or not prompt["messages"]:
        found.append(("missing_input", "`input` must be an object with a non-empty `messages` list (the prompt)"))
        return None, found
    for key in sorted(set(prompt) - INPUT_KEYS):
        found.append(("unknown_key", f"input has unknown key {key!r} (allowed: {', '.join(sorted(INPUT_KEYS))})"))
    chat = {k: v for k, v in prompt.items() if k in INPUT_KEYS}
    for rule, message in _check_example(chat):
        if rule != "no_trained_assistant":  # the prompt trains nothing: the outputs are the answer
            found.append((rule, message if message.startswith("`") else f"input.{message}"))
    last = prompt["messages"][-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        found.append(("missing_input", "input.messages ends with an assistant message; it must end where the "
                                       "assistant answers (a user or tool message)"))
    if found:
        return None, found
    return PreferenceExample(number, _normalise(prompt["messages"]), prompt.get("tools"), *answers), []


def _output(value) -> tuple[str, str | None]:
    """The answer's text, or why the output is not one assistant message with text."""
    if value is None:
        return "", "is missing"
    if not isinstance(value, list) or len(value) != 1:
        count = f"{len(value)} messages" if isinstance(value, list) else _kind(value)
        return "", f"must be a list of exactly one assistant message, found {count}"
    message = value[0]
    if not isinstance(message, dict):
        return "", f"[0] must be an object, found {_kind(message)}"
    if message.get("role") != "assistant":
        return "", f"[0].role is {message.get('role')!r}; the answer must be the assistant's"
    extra = sorted(set(message) - {"role", "content"})
    if extra:
        return "", f"[0] has {', '.join(map(repr, extra))}: a preference answer holds only role and text content"
    if _has_lone_surrogate(message):
        return "", "[0] holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
    problem = _content_problem(message.get("content"))
    if problem:
        return "", f"[0].content {problem}"
    return _normalise([message])[0]["content"], None


def render_pair(tokenizer, example: PreferenceExample):
    """The two conversations (prompt + preferred, prompt + non-preferred), each trained on its last turn only."""
    from .render import render_chat

    return (render_chat(tokenizer, example.conversation(example.preferred), example.tools),
            render_chat(tokenizer, example.conversation(example.non_preferred), example.tools))


def same_answer(example: PreferenceExample) -> bool:
    """The two answers say the same thing, but for spacing: such a pair teaches nothing."""
    return _squash(example.preferred) == _squash(example.non_preferred)


def prompt_key(example: PreferenceExample) -> str:
    """The prompt, with spacing normalised, as a hash: equal keys are the same prompt."""
    text = json.dumps([[m["role"], _squash(m.get("content") or "")] for m in example.messages])
    return hashlib.sha1(text.encode()).hexdigest()


def review_pairs(file: str, examples: list[PreferenceExample],
                 validation: tuple[str, list[PreferenceExample]] | None = None) -> list[Problem]:
    """Warnings about a set of pairs, nothing that stops training:
    - `equal_answers`: the preferred and non-preferred answers are the same text (after whitespace normalisation):
      the pair's loss gradient is zero (if every pair is so, validate_file refuses the file).
    - `duplicate`: the same pair (prompt and both answers) more than once.
    - `train_validation_overlap`: a validation pair's prompt is also a training prompt, so the validation
      loss measures answers to prompts the model trained on.
    - `missing_user_message`: a prompt with no user message.
    """
    found: list[Problem] = []

    def warn(where: str, rule: str, lines: list[int], message: str) -> None:
        shown = ", ".join(map(str, lines[:LISTED])) + (f" and {len(lines) - LISTED} more" if len(lines) > LISTED
                                                       else "")
        found.append(Problem(where, lines[0] if len(lines) == 1 else 0, rule,
                             f"{message} (line{'s' if len(lines) > 1 else ''} {shown})", "warning"))

    equal = [e.line for e in examples if same_answer(e)]
    if equal and len(equal) < len(examples):
        warn(file, "equal_answers", equal, f"{len(equal)} pair(s) whose two answers are the same text: they teach "
                                           "nothing")
    by_pair: dict[tuple, list[int]] = defaultdict(list)
    for e in examples:
        by_pair[(prompt_key(e), _squash(e.preferred), _squash(e.non_preferred))].append(e.line)
    for lines in by_pair.values():
        if len(lines) > 1:
            warn(file, "duplicate", lines, f"{len(lines)} pairs are identical")
    no_user = [e.line for e in examples if not any(m["role"] == "user" for m in e.messages)]
    if no_user:
        warn(file, "missing_user_message", no_user, "prompts with no user message")
    if validation:
        valid_file, valid_examples = validation
        train_prompts = {prompt_key(e) for e in examples}
        overlap = [e.line for e in valid_examples if prompt_key(e) in train_prompts]
        if overlap:
            warn(valid_file, "train_validation_overlap", overlap,
                 f"{len(overlap)} validation prompt(s) also appear in the training file, so the validation DPO "
                 "loss measures prompts the model trained on")
    return found


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
