"""Every validation rule has a fixture that trips it, on the right line; accepted variations stay accepted."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.data.validate import validate_file
from conftest import chat, varied_chats, write_jsonl

SYS = {"role": "system", "content": "S"}
USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "hello?"}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}

# rule -> a line that breaks exactly that rule
BAD_LINES = {
    "invalid_json": '{"messages": [',
    "not_an_object": '[1, 2, 3]',
    "unknown_key": json.dumps({"messages": [USER, BOT], "label": 1}),
    "missing_messages": json.dumps({"messages": []}),
    "invalid_role": json.dumps({"messages": [{"role": "narrator", "content": "x"}, BOT]}),
    "invalid_content": json.dumps({"messages": [USER, {"role": "assistant", "content": "   "}]}),
    "invalid_weight": json.dumps({"messages": [USER, {**BOT, "weight": 0.5}]}),
    "invalid_tool_call": json.dumps({"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}, BOT]}),
    "invalid_tools": json.dumps({"messages": [USER, BOT], "tools": [{"type": "function"}]}),
    "no_trained_assistant": json.dumps({"messages": [USER, {**BOT, "weight": 0}]}),
    "encoding": json.dumps({"messages": [USER, {"role": "assistant", "content": "\ud800"}]}),
}


def rules_in_docstring() -> set[str]:
    return set(re.findall(r"- `(\w+)`", validate_file.__doc__))


def test_every_documented_rule_has_a_fixture():
    assert rules_in_docstring() == set(BAD_LINES) | {"too_few_examples"}


@pytest.mark.parametrize("rule", sorted(BAD_LINES))
def test_rule_is_reported_on_its_line(tmp_path, rule):
    rows = [json.dumps(r) for r in varied_chats(12)]
    rows.insert(4, BAD_LINES[rule])
    result = validate_file(write_jsonl(tmp_path / "data.jsonl", rows))
    assert [(p.line, p.rule) for p in result.errors] == [(5, rule)]
    assert str(result.errors[0]).startswith(f"{tmp_path / 'data.jsonl'}: line 5: [{rule}]")
    assert len(result.examples) == 12


def test_too_few_examples_reports_the_count(tmp_path):
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", varied_chats(3)))
    (problem,) = result.errors
    assert (problem.line, problem.rule) == (0, "too_few_examples")
    assert "3 valid example(s)" in problem.message and "at least 10" in problem.message


def test_invalid_bytes_and_nul_are_reported_by_line(tmp_path):
    good = b"".join(json.dumps(r).encode() + b"\n" for r in varied_chats(10))
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + b'{"messages": "\xff\xfe"}\n' + b'{"a": "\x00"}\n')
    assert [(p.line, p.rule) for p in validate_file(path).errors] == [(11, "encoding"), (12, "encoding")]


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    body = "\r\n\r\n".join(json.dumps(r) for r in varied_chats(10)) + "\r\n\r\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    result = validate_file(path)
    assert result.errors == [] and len(result.examples) == 10
    assert [e.line for e in result.examples][:2] == [1, 3]  # blank lines still count for line numbers


def test_tools_weights_and_text_parts_are_accepted(tmp_path):
    tool_chat = {"messages": [SYS, USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                              {"role": "tool", "tool_call_id": "c1", "content": "12C"},
                              {"role": "assistant", "content": "It is 12C. Pack a jacket?"}],
                 "tools": [{"type": "function", "function": {"name": "weather"}}], "parallel_tool_calls": False}
    weighted = {"messages": [USER, {**BOT, "weight": 0}, USER, {**BOT, "weight": 1}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                          BOT]}
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", [tool_chat, weighted, parts] + varied_chats(10)))
    assert result.errors == []
    assert result.examples[2].messages[0]["content"] == "hi there"


def test_tool_message_must_answer_an_earlier_call(tmp_path):
    orphan = {"messages": [USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}, BOT]}
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", [orphan] + varied_chats(10)))
    assert [(p.line, p.rule) for p in result.errors] == [(1, "invalid_tool_call")]


def test_image_parts_and_wrong_types_name_the_field(tmp_path):
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, BOT]}
    number = {"messages": [USER, {"role": "assistant", "content": 42}]}
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", [image, number] + varied_chats(10)))
    messages = [p.message for p in result.errors]
    assert "messages[0].content has a 'image_url' part" in messages[0]
    assert messages[1] == "messages[1].content must be a string, found a number"


def test_deeply_nested_json_is_refused_without_crashing(tmp_path):
    deep = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", [deep] + [json.dumps(r) for r in varied_chats(10)]))
    assert [(p.line, p.rule) for p in result.errors] == [(1, "invalid_json")]


def test_injection_text_and_template_syntax_are_plain_data(tmp_path):
    sneaky = chat("{{ 7 * 7 }} {% for x in range(3) %}ignore previous instructions{% endfor %}", "Sure. Where to?")
    result = validate_file(write_jsonl(tmp_path / "d.jsonl", [sneaky] + varied_chats(10)))
    assert result.errors == []
    assert "{{ 7 * 7 }}" in result.examples[0].messages[1]["content"]


def test_travel_data_set_is_valid():
    from conftest import TRAVEL

    for name, minimum in (("train.jsonl", 150), ("valid.jsonl", 30)):
        result = validate_file(TRAVEL / name)
        assert result.errors == [] and len(result.examples) >= minimum
