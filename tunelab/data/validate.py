"""Format validation of JSONL training files: one function, `validate_file`, and its rules.

    tunelab data check FILE      # runs this, then the token statistics and review warnings of `report.py`

A file is in one of two formats, told apart by its first example: chat (`{"messages": [...]}`, supervised
fine-tuning) or preference pairs (`{"input": ..., "preferred_output": ..., "non_preferred_output": ...}`, DPO;
the rules of a pair are in preference.py). A file holding both is an error naming the first line that differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MIN_EXAMPLES = 10  # the cloud's minimum; fewer fails the job with `invalid_n_examples`
MAX_JSON_DEPTH = 64  # deeper nesting is refused before it can exhaust the parser's stack

ROLES = ("system", "user", "assistant", "tool", "function")
PREFERENCE_KEYS = {"preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"}
EXAMPLE_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls", "function_call", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}


@dataclass
class Problem:
    """One finding, located by file and 1-based line (line 0: the file as a whole)."""

    file: str
    line: int
    rule: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.file}: line {self.line}" if self.line else self.file
        return f"{where}: [{self.rule}] {self.message}"


@dataclass
class Example:
    """A valid conversation with the line it came from; list-form text content is joined into one string."""

    line: int
    messages: list[dict]
    tools: list[dict] | None = None


FORMATS = {"chat": "chat format ({\"messages\": [...]}, for supervised fine-tuning)",
           "preference": "preference format ({\"input\": {\"messages\": [...]}, \"preferred_output\": [...], "
                         "\"non_preferred_output\": [...]}, for DPO)"}


@dataclass
class Validation:
    file: str
    examples: list = field(default_factory=list)  # Example (chat) or preference.PreferenceExample
    problems: list[Problem] = field(default_factory=list)
    format: str = "chat"  # or "preference": what the file's first example is
    first_line: int = 0  # where that first example is (0: no example at all)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def line_format(data: dict) -> str | None:
    """"chat" or "preference" for a parsed line, by its keys; None when it names neither."""
    if "messages" in data:
        return "chat"
    if "input" in data or set(data) & PREFERENCE_KEYS:
        return "preference"
    return None


def detect_format(path: str | Path, max_lines: int = 100) -> tuple[str | None, int]:
    """The format of a file's first JSON object line and that line's number, read cheaply (the first `max_lines`
    lines); (None, 0) when none is found there. `validate_file` reads the whole file with the same rule."""
    with Path(path).open("rb") as lines:
        for number, chunk in enumerate(lines, start=1):
            if number > max_lines:
                break
            try:
                data = json.loads(chunk.removeprefix(b"\xef\xbb\xbf"))
            except (ValueError, RecursionError):
                continue
            if isinstance(data, dict):
                return line_format(data) or "chat", number
    return None, 0


def validate_file(path: str | Path, *, min_examples: int = MIN_EXAMPLES, name: str | None = None,
                  expect: str | None = None) -> Validation:
    """Check that every line of `path` is an example in the OpenAI fine-tuning format — chat, or preference pairs
    (the format of the file's first example; `expect` names the one the caller needs, and a file in the other
    is one error, `wrong_format`, saying which format is needed).

    Rules (each error names the file, the 1-based line and the rule):
    - `encoding`: every line is UTF-8 with no NUL bytes and no lone surrogates (also from `\\ud800` escapes).
      A UTF-8 BOM at the start of the file, CRLF line ends and blank lines are accepted.
    - `invalid_json`: every non-blank line parses as JSON, nested at most 64 levels deep.
    - `not_an_object`: every line is a JSON object.
    - `unknown_key`: an example holds only `messages`, `tools`, `parallel_tool_calls`, `functions`; a message
      only the keys of its role (system/user: role, content, name; assistant: role, content, name, weight,
      tool_calls, function_call, refusal; tool: role, content, tool_call_id; function: role, content, name).
    - `missing_messages`: `messages` is a non-empty list of objects.
    - `invalid_role`: each message's `role` is one of system, user, assistant, tool, function.
    - `invalid_content`: `content` is a non-empty string, or a non-empty list of `{"type": "text", "text": str}`
      parts; an assistant message may leave it out (or null) only when it has `tool_calls` or `function_call`.
    - `invalid_weight`: `weight` appears only on assistant messages and is 0 or 1.
    - `invalid_tool_call`: `tool_calls` is a non-empty list of `{id, type: "function", function: {name,
      arguments}}` with string `arguments` holding JSON; a `tool` message has a `tool_call_id` naming an
      earlier call of the same conversation.
    - `invalid_tools`: `tools` is a list of `{type: "function", function: {name, ...}}`;
      `parallel_tool_calls` is a boolean.
    - `no_trained_assistant`: the example has at least one assistant message with weight other than 0.
    - `too_few_examples`: the file holds at least `min_examples` (10) valid examples (reported on line 0).
    - `mixed_format`: every line is in the format of the file's first example (chat or preference).
    - `equal_answers` (preference): not every pair's two answers are the same text (reported on line 0).
    Preference lines follow the rules of preference.py instead of the per-example ones above.
    """
    name = name or str(path)  # how errors name the file (the service names the uploaded file, not its blob)
    result = Validation(file=name)

    def error(line: int, rule: str, message: str) -> None:
        result.problems.append(Problem(name, line, rule, message))

    with Path(path).open("rb") as lines:  # streamed: a 512 MB upload is never held whole
        for number, chunk in enumerate(lines, start=1):
            _check_line(number, chunk.removeprefix(b"\xef\xbb\xbf") if number == 1 else chunk, result, error)

    if expect and result.first_line and result.format != expect:
        result.problems = [Problem(name, result.first_line, "wrong_format",
                                   f"this file is in the {FORMATS[result.format]}, but this training needs the "
                                   f"{FORMATS[expect]}")]
        result.examples = []
        return result
    if len(result.examples) < min_examples:
        error(0, "too_few_examples",
              f"the file has {len(result.examples)} valid example(s), but must have at least {min_examples}")
    if result.format == "preference" and result.examples:
        from .preference import same_answer

        if all(same_answer(e) for e in result.examples):
            error(0, "equal_answers", "in every pair the preferred and non-preferred answers are the same text: "
                                      "there is no preference to learn")
    return result


def _check_line(number: int, chunk: bytes, result: Validation, error) -> None:
    """Decode and parse one line, then apply the per-example rules; valid examples join `result`."""
    chunk = chunk.removesuffix(b"\n").removesuffix(b"\r")
    if not chunk.strip():
        return
    if b"\x00" in chunk:
        return error(number, "encoding", "the line contains a NUL byte")
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error(number, "encoding", f"not valid UTF-8 (byte {exc.start + 1} of the line)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return error(number, "invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return error(number, "invalid_json", "JSON nested too deeply")
    except ValueError as exc:  # e.g. an integer longer than Python converts (4,300 digits)
        return error(number, "invalid_json", f"invalid JSON: {exc}")
    if _depth(data) > MAX_JSON_DEPTH:
        return error(number, "invalid_json", f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(data, dict):
        return error(number, "not_an_object", f"each line must be a JSON object, found {_kind(data)}")
    kind = line_format(data)
    if not result.first_line:
        result.format, result.first_line = kind or "chat", number
    elif kind and kind != result.format:
        return error(number, "mixed_format", f"this line is in the {FORMATS[kind]}, but the file is in the "
                                             f"{FORMATS[result.format]} (from line {result.first_line}); a file "
                                             "holds one format")
    if result.format == "preference":
        from .preference import check_pair

        example, found = check_pair(number, data)
    else:
        found = _check_example(data)
        example = None if found else Example(number, _normalise(data["messages"]), data.get("tools"))
    for rule, message in found:
        error(number, rule, message)
    if example is not None:
        result.examples.append(example)


def _check_example(data: dict) -> list[tuple[str, str]]:
    """The per-line rules of `validate_file`; returns (rule, message) pairs, empty when the line is valid."""
    found: list[tuple[str, str]] = []
    for key in sorted(set(data) - EXAMPLE_KEYS):
        found.append(("unknown_key", f"unknown key {key!r} (allowed: {', '.join(sorted(EXAMPLE_KEYS))})"))
    if _has_lone_surrogate(data):
        found.append(("encoding", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"))
    found += _check_tools(data)

    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        found.append(("missing_messages", "`messages` must be a non-empty list of messages"))
        return found

    call_ids: set[str] = set()
    trained = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            found.append(("missing_messages", f"{where} must be an object, found {_kind(message)}"))
            continue
        role = message.get("role")
        if role not in ROLES:
            found.append(("invalid_role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}"))
            continue
        for key in sorted(set(message) - MESSAGE_KEYS[role]):
            found.append(("unknown_key", f"{where} has unknown key {key!r} for a {role} message"))

        calls = message.get("tool_calls")
        if calls is not None:
            found += _check_tool_calls(where, calls, call_ids)
        if role == "tool":
            ref = message.get("tool_call_id")
            if not isinstance(ref, str) or ref not in call_ids:
                found.append(("invalid_tool_call",
                              f"{where}.tool_call_id {ref!r} does not name a tool call made earlier in the example"))

        may_omit = role == "assistant" and (calls or message.get("function_call"))
        content = message.get("content")
        if content is None and may_omit:
            pass
        elif problem := _content_problem(content):
            found.append(("invalid_content", f"{where}.content {problem}"))

        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                found.append(("invalid_weight", f"{where}.weight is only allowed on assistant messages"))
            elif type(weight) is not int or weight not in (0, 1):
                found.append(("invalid_weight", f"{where}.weight must be 0 or 1, found {weight!r}"))
        if role == "assistant" and message.get("weight", 1) != 0:
            trained += 1

    if trained == 0:
        found.append(("no_trained_assistant", "the example needs at least one assistant message with weight 1"))
    return found


def _check_tool_calls(where: str, calls, call_ids: set[str]) -> list[tuple[str, str]]:
    if not isinstance(calls, list) or not calls:
        return [("invalid_tool_call", f"{where}.tool_calls must be a non-empty list")]
    found = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or call.get("type") != "function" \
                or not isinstance(function, dict) or not isinstance(function.get("name"), str):
            found.append(("invalid_tool_call", f"{at} must be {{id, type: \"function\", function: {{name, arguments}}}}"))
            continue
        arguments = function.get("arguments")
        try:
            if not isinstance(arguments, str):
                raise ValueError
            json.loads(arguments)
        except ValueError:
            found.append(("invalid_tool_call", f"{at}.function.arguments must be a string holding JSON"))
            continue
        call_ids.add(call["id"])
    return found


def _check_tools(data: dict) -> list[tuple[str, str]]:
    found = []
    tools = data.get("tools")
    if tools is not None:
        ok = isinstance(tools, list) and all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools)
        if not ok:
            found.append(("invalid_tools", "`tools` must be a list of {type: \"function\", function: {name, ...}}"))
    if "parallel_tool_calls" in data and not isinstance(data["parallel_tool_calls"], bool):
        found.append(("invalid_tools", "`parallel_tool_calls` must be true or false"))
    return found


def _content_problem(content) -> str | None:
    if isinstance(content, str):
        return None if content.strip() else "is empty"
    if isinstance(content, list) and content:
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else _kind(part)
                return f"has a {kind!r} part; only text parts can be trained on a text model"
            if not isinstance(part.get("text"), str) or not part["text"].strip():
                return "has an empty text part"
        return None
    if content is None:
        return "is missing"
    return f"must be a string, found {_kind(content)}"


def _normalise(messages: list[dict]) -> list[dict]:
    """Join list-form text content into one string so rendering sees plain strings."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": "".join(part["text"] for part in content)}
        out.append(message)
    return out


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _depth(value, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False
