"""Each review warning fires on its case and stays quiet on clean data."""

from __future__ import annotations

from tunelab.data.review import review
from tunelab.data.validate import validate_file
from conftest import TRAVEL, chat, varied_chats, write_jsonl


def warnings_for(tmp_path, rows, valid_rows=None):
    train = validate_file(write_jsonl(tmp_path / "t.jsonl", rows))
    valid = validate_file(write_jsonl(tmp_path / "v.jsonl", valid_rows)) if valid_rows else None
    return review(train.file, train.examples, (valid.file, valid.examples) if valid else None)


def rules(problems):
    return sorted({p.rule for p in problems})


def test_clean_data_raises_no_warning(tmp_path):
    assert warnings_for(tmp_path, varied_chats(12)) == []


def test_travel_data_raises_no_warning():
    train, valid = validate_file(TRAVEL / "train.jsonl"), validate_file(TRAVEL / "valid.jsonl")
    assert review(train.file, train.examples, (valid.file, valid.examples)) == []


def test_exact_and_near_duplicates(tmp_path):
    rows = varied_chats(10)
    near = chat(rows[3]["messages"][1]["content"], rows[3]["messages"][2]["content"].replace("start early", "Start early!"))
    found = warnings_for(tmp_path, rows + [rows[1], near])
    messages = [p.message for p in found if p.rule == "duplicate"]
    assert messages == ["2 examples are (nearly) identical (lines 2, 11)",
                        "2 examples are (nearly) identical (lines 4, 12)"]


def test_train_validation_overlap(tmp_path):
    rows = varied_chats(12)
    found = warnings_for(tmp_path, rows[:10], rows[8:])
    (overlap,) = [p for p in found if p.rule == "train_validation_overlap"]
    assert overlap.file.endswith("v.jsonl") and "(lines 1, 2)" in overlap.message


def test_varying_system_messages(tmp_path):
    rows = varied_chats(10) + [chat("Hi there, which islands?", "Try the Azores. Do you hike?", system="Be terse.")]
    assert rules(warnings_for(tmp_path, rows)) == ["system_message_varies"]


def test_cut_off_short_and_long_replies(tmp_path):
    rows = varied_chats(10) + [
        chat("Best time for Petra?", "Spring and autumn are ideal because the"),
        chat("Thanks!", "Sure!"),
        chat("Tell me everything about Peru", " ".join(["Peru has so much to see."] * 60) + " Ready?"),
    ]
    found = {p.rule: p for p in warnings_for(tmp_path, rows)}
    assert set(found) == {"reply_cut_off", "reply_short", "reply_long"}
    assert found["reply_cut_off"].line == 11 and found["reply_short"].line == 12 and found["reply_long"].line == 13


def test_missing_user_message(tmp_path):
    rows = varied_chats(10) + [{"messages": [{"role": "system", "content": "You are a travel assistant."},
                                             {"role": "assistant", "content": "Welcome! Where to next?"}]}]
    assert rules(warnings_for(tmp_path, rows)) == ["missing_user_message"]
