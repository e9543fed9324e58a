"""`tunelab lab travel` with the tiny model: every step of the walkthrough through an embedded server."""

from __future__ import annotations

import json

from conftest import TRAVEL, varied_chats, write_jsonl
from test_cli import tunelab


def test_the_travel_walkthrough_runs_every_step(capsys, tiny_model, tmp_path, monkeypatch):
    from tunelab.models.catalog import import_model

    import_model(tiny_model, "tiny")
    data = tmp_path / "travel"
    data.mkdir()
    write_jsonl(data / "train.jsonl", varied_chats(16))
    write_jsonl(data / "valid.jsonl", varied_chats(20)[16:])
    prompts = [json.loads(line) for line in (TRAVEL / "prompts.jsonl").read_text().splitlines()]
    write_jsonl(data / "prompts.jsonl", prompts[:3] + [p for p in prompts if p["kind"] == "off_topic"][:1])
    monkeypatch.setenv("TUNELAB_LEASE_SECONDS", "3")
    code, output = tunelab(capsys, "lab", "travel", "--model", "tiny", "--data", str(data), "--out",
                           str(tmp_path / "reports"))
    assert code == 0, output
    for title in ("1. Upload", "2. Fine-tune tiny", "3. Deploy", "4. Ask the lab's questions", "5. Compare both on 4"):
        assert title in output, output
    assert "Succeeded: ft:tiny:local:ft-travel:" in output
    assert "base-travel: Succeeded" in output and "ft-travel: Succeeded" in output
    assert "Where in Rome" in output, output  # the lab's questions, side by side
    assert "Verdict:" in output and "The lab took" in output
    report = next((tmp_path / "reports").iterdir()) / "report.json"
    assert [c["name"] for c in json.loads(report.read_text())["candidates"]] == ["base-travel", "ft-travel"]


def test_the_walkthrough_says_what_is_missing(capsys, tmp_path):
    code, output = tunelab(capsys, "lab", "travel", "--data", str(tmp_path))
    assert code != 0 and "train.jsonl: no such file" in output and "Traceback" not in output
