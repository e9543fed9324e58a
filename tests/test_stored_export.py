"""The rows `data/stored_export.py` makes of stored completions: which answer stands for a completion, what a
rating leaves out, which pairs a preference file holds, and that the supervised rows pass the data check."""

from __future__ import annotations

from conftest import write_jsonl
from tunelab.data.stored_export import preference_rows, prompt, supervised_rows
from tunelab.data.validate import validate_file

SYSTEM = {"role": "system", "content": "You are a travel assistant."}


def stored(user: str, answer: str | None, *, rating: str | None = None, edit: str | None = None,
           finish: str = "stop", tools: list | None = None) -> dict:
    """A record as `CompletionStore.get` returns it."""
    request = {"model": "tiny", "messages": [SYSTEM, {"role": "user", "content": user}]}
    if tools:
        request["tools"] = tools
    return {"id": f"chatcmpl-{user}-{answer}", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
            "metadata": {"rating": rating} if rating else {}, "request": request, "edited_content": edit}


def pair(user: str, preferred: str, rejected: str) -> dict:
    return {"input": {"messages": [SYSTEM, {"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}]}


def test_the_prompt_is_the_request_in_the_training_format():
    record = stored("Hi?", "Hello.", tools=[{"type": "function", "function": {"name": "find"}}])
    record["request"]["messages"] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "Hi?", "name": None, "refusal": "x"}]
    record["request"]["parallel_tool_calls"] = False
    assert prompt(record) == {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi?"}],
                              "tools": [{"type": "function", "function": {"name": "find"}}],
                              "parallel_tool_calls": False}


def test_supervised_rows_use_the_edit_and_leave_out_bad_and_filtered_answers(tmp_path):
    exported = supervised_rows([
        stored("A?", "Plain."), stored("B?", "Wrong.", rating="bad"), stored("C?", "Wrong too.", rating="bad",
                                                                             edit="Fixed."),
        stored("D?", None, finish="content_filter"), stored("E?", "  "), stored("F?", "Fine.", rating="good")])
    assert [r["messages"][-1] for r in exported.rows] == [
        {"role": "assistant", "content": a} for a in ("Plain.", "Fixed.", "Fine.")]
    assert exported.rows[0]["messages"][:-1] == [SYSTEM, {"role": "user", "content": "A?"}]
    assert exported.left_out == {"rated bad": 1, "filtered or empty": 2}
    checked = validate_file(write_jsonl(tmp_path / "out.jsonl", exported.rows), min_examples=3)
    assert checked.problems == [] and len(checked.examples) == 3


def test_preference_pairs_good_and_edited_answers_against_bad_ones_to_the_same_messages():
    exported = preference_rows([
        stored("A?", "Good one.", rating="good"), stored("A?", "Bad one.", rating="bad"),
        stored("A?", "Other bad.", rating="bad", edit="Edited."), stored("A?", "Unrated."),
        stored("B?", "Bad elsewhere.", rating="bad"),  # no preferred answer to B: no pair
        stored("C?", "Same.", edit="Same."),  # an edit equal to its original makes no pair
        stored("D?", None, finish="content_filter", rating="bad"),
        stored("A?", "Tool bad.", rating="bad", tools=[{"type": "function", "function": {"name": "f"}}])])
    assert exported.rows == [
        pair("A?", "Edited.", "Other bad."),
        pair("A?", "Good one.", "Bad one."), pair("A?", "Good one.", "Other bad."),
        pair("A?", "Edited.", "Bad one.")]  # (Edited., Other bad.) once; the tools' prompt is another request
    assert exported.left_out == {"neither rated nor edited": 1, "filtered or empty": 1}


def test_nothing_to_pair_leaves_no_rows():
    assert preference_rows([stored("A?", "x", rating="good"), stored("A?", "y", rating="good")]).rows == []
    assert supervised_rows([]).rows == []
