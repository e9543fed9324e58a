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
    "mixed_format": json.dumps({"input": {"messages": [USER]}, "preferred_output": [BOT],
                                "non_preferred_output": [{"role": "assistant", "content": "no."}]}),
}


def rules_in_docstring() -> set[str]:
    return set(re.findall(r"- `(\w+)`", validate_file.__doc__))


def test_every_documented_rule_has_a_fixture():
    assert rules_in_docstring() == set(BAD_LINES) | {"too_few_examples", "equal_answers"}


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


# --- preference pairs (data/preference.py) ------------------------------------------------------------------------

def good_pair(i: int) -> dict:
    return {"input": {"messages": [SYS, {"role": "user", "content": f"Plans for day {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Walk the old town on day {i}. Your pace?"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Book Hotel Plaza {i}."}]}


def with_(i: int, **changes) -> str:
    row = good_pair(i)
    for key, value in changes.items():
        if value is None:
            row.pop(key, None)
        else:
            row[key] = value
    return json.dumps(row)


ANSWER = [{"role": "assistant", "content": "Fine."}]
# rule -> a preference line that breaks exactly that rule
BAD_PAIRS = {
    "unknown_key": with_(0, score=1),
    "missing_input": with_(0, input={"messages": []}),
    "invalid_output": with_(0, preferred_output=ANSWER * 2),
    "mixed_format": json.dumps({"messages": [USER, BOT]}),
}
# more ways to break a pair, each with the rule and a piece of its message
MORE_BAD_PAIRS = [
    (with_(0, input=None), "missing_input", "`input` must be an object"),
    (with_(0, input={"messages": [USER, BOT]}), "missing_input", "ends with an assistant message"),
    (with_(0, input={"messages": [{"role": "user", "content": " "}]}), "invalid_content", "input.messages[0].content"),
    (with_(0, input={"messages": [{"role": "narrator", "content": "x"}]}), "invalid_role", "input.messages[0].role"),
    (with_(0, non_preferred_output=None), "invalid_output", "`non_preferred_output` is missing"),
    (with_(0, preferred_output=[{"role": "user", "content": "x"}]), "invalid_output", "must be the assistant's"),
    (with_(0, preferred_output=[{"role": "assistant", "content": ""}]), "invalid_output", "content is empty"),
    (with_(0, preferred_output=[{**BOT, "tool_calls": [CALL]}]), "invalid_output", "only role and text"),
    (with_(0, preferred_output={"role": "assistant", "content": "x"}), "invalid_output", "found an object"),
]


def pair_rules_in_docstring() -> set[str]:
    from tunelab.data.preference import check_pair

    return set(re.findall(r"- `(\w+)`", check_pair.__doc__))


def test_every_documented_pair_rule_has_a_fixture():
    assert pair_rules_in_docstring() | {"mixed_format"} == set(BAD_PAIRS)


@pytest.mark.parametrize("line, rule, text", [(line, rule, rule) for rule, line in BAD_PAIRS.items()]
                         + MORE_BAD_PAIRS)
def test_pair_rule_is_reported_on_its_line(tmp_path, line, rule, text):
    rows = [json.dumps(good_pair(i)) for i in range(12)]
    rows.insert(4, line)
    result = validate_file(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert result.format == "preference" and len(result.examples) == 12
    assert [(p.line, p.rule) for p in result.errors] == [(5, rule)]
    assert text in str(result.errors[0])


def test_pairs_with_the_old_names_and_text_parts_are_accepted(tmp_path):
    rows = [good_pair(i) for i in range(10)]
    rows[0] = {"input": rows[0]["input"], "preferred_completion": rows[0]["preferred_output"],
               "non_preferred_completion": [{"role": "assistant", "content": [{"type": "text", "text": "No."}]}]}
    result = validate_file(write_jsonl(tmp_path / "pairs.jsonl", rows), expect="preference")
    assert not result.problems and result.examples[0].non_preferred == "No."


def test_a_file_whose_pairs_all_have_equal_answers_is_refused(tmp_path):
    rows = [good_pair(i) for i in range(10)]
    for row in rows:
        row["non_preferred_output"] = [{"role": "assistant", "content": "  " + row["preferred_output"][0]["content"]
                                        .replace(" ", "\n ")}]
    result = validate_file(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [(p.line, p.rule) for p in result.errors] == [(0, "equal_answers")]


def test_the_format_a_caller_needs_is_named(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [good_pair(i) for i in range(10)])
    chats = write_jsonl(tmp_path / "chats.jsonl", varied_chats(10))
    for path, expect, other in ((pairs, "chat", "preference"), (chats, "preference", "chat")):
        result = validate_file(path, expect=expect)
        assert [(p.line, p.rule) for p in result.errors] == [(1, "wrong_format")]
        assert f"in the {other} format" in result.errors[0].message and f"needs the {expect} format" in \
            result.errors[0].message
