"""Comparisons end to end with the tiny model through the API and the CLI: every prompt through every candidate,
checks, validation loss, latency and tokens, the verdict, reports in three formats; and bad input."""

from __future__ import annotations

import json
import math
import time

import openai
import pytest

from conftest import TRAVEL, upload, varied_chats, write_jsonl
from test_cli import tunelab
from tunelab.cli.compare import read_prompts
from tunelab.errors import InvalidRequest

PROMPTS = [{"id": "may", "messages": [{"role": "user", "content": "Where should I go in May?"}]},
           {"id": "rome", "kind": "forbidden", "messages": [{"role": "user", "content": "Where in Rome should I stay?"}]},
           {"id": "code", "kind": "off_topic", "messages": [{"role": "user", "content": "Write me a sorting function."}],
            "reference": "That is outside what I do, but where would you like to travel?"}]


@pytest.fixture
def travel_checks(monkeypatch):
    """The service runs the travel example's checks, as `tunelab lab travel` has its embedded server do."""
    monkeypatch.setenv("TUNELAB_CHECKS", f"{TRAVEL / 'checks.py'}:policy,{TRAVEL / 'checks.py'}:redirect")


def wait_for_evaluation(client, evaluation_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get(f"/evaluations/{evaluation_id}", cast_to=object)
        if found["status"] != "running":
            return found
        time.sleep(0.2)
    raise AssertionError(f"evaluation {evaluation_id} still running: {found['progress']}")


@pytest.mark.usefixtures("travel_checks")
def test_a_comparison_scores_every_candidate_on_every_prompt(tuned, tmp_path):
    service, model = tuned
    client = service.client()
    valid = upload(client, tmp_path, varied_chats(20)[16:], name="valid.jsonl")
    created = client.post("/evaluations", cast_to=object, body={
        "candidates": ["tiny", model], "prompts": PROMPTS, "system": "You are a travel assistant.",
        "max_tokens": 12, "validation_file": valid.id})
    assert created["status"] == "running" and created["progress"]["total"] == 3 * 2 + 2
    found = wait_for_evaluation(client, created["id"])
    assert found["status"] == "completed", found["error"]
    assert found["progress"]["done"] == found["progress"]["total"]
    # the fine-tune's own training file became the style reference
    assert found["request"]["style_file"] and found["request"]["validation_file"] == valid.id
    report = found["report"]
    base, tuned_ = report["candidates"]
    assert [base["name"], tuned_["name"]] == ["tiny", model]
    for candidate in (base, tuned_):
        checks = candidate["checks"]
        assert set(checks) >= {"policy", "engagement", "redirect", "style", "reference", "length"}
        assert checks["policy"]["count"] == 3 and checks["redirect"]["count"] == 1 and checks["reference"]["count"] == 1
        assert -1 <= checks["style"]["mean"] <= 1
        assert candidate["latency"]["ttft_s_median"] > 0 and candidate["tokens"]["prompt_per_request"] > 0
        assert candidate["errors"] == 0 and math.isfinite(candidate["validation"]["loss"])
    # trained on conversations like the validation file's: the fine-tune predicts them better
    assert tuned_["validation"]["loss"] < base["validation"]["loss"]
    assert "validation_loss" in report["verdict"]["wins"][model]
    assert [p["id"] for p in report["prompts"]] == ["may", "rome", "code"]
    side = report["prompts"][0]["answers"]
    assert side["tiny"]["text"] != side[model]["text"] and side[model]["completion_tokens"] <= 12
    assert set(side[model]["scores"]) >= {"policy", "engagement"}

    http = openai.DefaultHttpxClient(headers={"Authorization": f"Bearer {service.key}"})
    report_url = f"{service.base_url}/evaluations/{found['id']}/report"
    page = http.get(report_url, params={"format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Answers side by side" in page.text and model in page.text
    # Its chart is drawn by Chart.js, inlined: the file needs nothing beside it.
    assert "Chart.js v4" in page.text and "<script src" not in page.text and "<link" not in page.text
    config = json.loads(page.text.split("new Chart(document.getElementById('shares'), ", 1)[1].split(");</script>")[0])
    assert [d["label"] for d in config["data"]["datasets"]] == ["tiny", model]
    assert config["data"]["datasets"][1]["data"][0] == round(100 * tuned_["checks"]["policy"]["mean"], 1)
    markdown = http.get(report_url, params={"format": "markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith(f"# Comparison {found['id']}") and "**Verdict:**" in markdown.text
    assert http.get(report_url).json()["verdict"] == report["verdict"]
    listed = client.get("/evaluations", cast_to=object)["data"]
    assert [e["id"] for e in listed] == [found["id"]] and "report" not in listed[0]
    assert client.delete(f"/evaluations/{found['id']}", cast_to=object)["deleted"]
    with pytest.raises(openai.NotFoundError):
        client.get(f"/evaluations/{found['id']}", cast_to=object)


def test_a_parallel_comparison_answers_every_prompt_in_order_with_the_same_seeded_answers(tuned):
    """With parallel > 1 answers start as soon as a slot frees (a brief candidate does not wait for a long
    one); every prompt still gets one answer per candidate, in prompt order."""
    service, model = tuned
    client = service.client()
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Where should I go in month {i}?"}]}
               for i in range(7)]
    runs = {}
    for parallel in (1, 3):
        created = client.post("/evaluations", cast_to=object, body={
            "candidates": ["tiny", model], "prompts": prompts, "max_tokens": 8, "parallel": parallel})
        found = wait_for_evaluation(client, created["id"])
        assert found["status"] == "completed", found["error"]
        assert found["progress"]["done"] == found["progress"]["total"] == 14
        runs[parallel] = found["report"]
    for report in runs.values():
        assert [p["id"] for p in report["prompts"]] == [p["id"] for p in prompts]
        assert all(c["errors"] == 0 for c in report["candidates"])
        assert all(a["completion_tokens"] > 0 for p in report["prompts"] for a in p["answers"].values())
    assert runs[3]["settings"]["parallel"] == 3
    texts = {k: [[a["text"] for a in p["answers"].values()] for p in r["prompts"]] for k, r in runs.items()}
    assert texts[1] == texts[3], "seeded answers should not depend on how many run at once"


def test_bad_comparisons_are_refused_naming_the_field(service):
    client = service.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.post("/evaluations", cast_to=object, body={"candidates": ["no-such-model"], "prompts": PROMPTS})
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        client.post("/evaluations", cast_to=object, body={"candidates": ["tiny"], "prompts": []})
    assert empty.value.body["param"] == "prompts"
    with pytest.raises(openai.BadRequestError) as twice:
        client.post("/evaluations", cast_to=object, body={"candidates": ["tiny", "tiny"], "prompts": PROMPTS})
    assert twice.value.body["param"] == "candidates"
    with pytest.raises(openai.NotFoundError) as no_file:
        client.post("/evaluations", cast_to=object, body={"candidates": ["tiny"], "prompts": PROMPTS,
                                                          "validation_file": "file-missing"})
    assert "file-missing" in no_file.value.body["message"]
    with pytest.raises(openai.BadRequestError) as check:
        client.post("/evaluations", cast_to=object, body={"candidates": ["tiny"], "prompts": PROMPTS,
                                                          "checks": ["vibes"]})
    assert "vibes" in check.value.body["message"]
    assert client.get("/evaluations", cast_to=object)["data"] == []  # nothing was stored


@pytest.mark.usefixtures("travel_checks")
def test_the_compare_command_prints_the_verdict_and_writes_three_reports(capsys, tuned, tmp_path, monkeypatch):
    service, model = tuned
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Where should I go in May?"}, *PROMPTS[1:]])
    code, output = tunelab(capsys, "compare", "--prompts", str(prompts), "--system", "You are a travel assistant.",
                           "--max-tokens", "8", "--out", str(tmp_path / "reports"), "tiny", model)
    assert code == 0, output
    assert "Verdict:" in output and "Ends with a question" in output and "Tokens per request" in output
    folder = next((tmp_path / "reports").iterdir())
    assert {p.name for p in folder.iterdir()} == {"report.html", "report.md", "report.json"}
    assert json.loads((folder / "report.json").read_text())["settings"]["prompts"] == 3


def test_a_request_runs_the_checks_the_service_loaded_and_imports_nothing_itself(service, tmp_path, monkeypatch):
    (tmp_path / "tone_checks.py").write_text(
        "from tunelab.evaluate.checks import check\n\n"
        "@check('exclaims', 'Exclaims', None)\ndef exclaims(case):\n    return '!' in case.answer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    client = service.client(max_retries=0)
    for bad in (f"{TRAVEL / 'checks.py'}:policy", "tone_checks:exclaims"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.post("/evaluations", cast_to=object, body={"candidates": ["tiny"], "prompts": PROMPTS,
                                                              "checks": [bad]})
        assert refused.value.body["param"] == "checks" and "is not loaded on this service" in \
            refused.value.body["message"]
    monkeypatch.setattr(service.app.state.service.settings, "checks", ["tone_checks:exclaims"])  # TUNELAB_CHECKS
    created = client.post("/evaluations", cast_to=object, body={
        "candidates": ["tiny"], "prompts": PROMPTS[:1], "max_tokens": 4, "checks": ["length", "tone_checks:exclaims"]})
    found = wait_for_evaluation(client, created["id"])
    assert found["status"] == "completed", found["error"]
    assert list(found["report"]["candidates"][0]["checks"]) == ["length", "exclaims"]


def test_the_compare_command_names_a_bad_check_on_one_line(capsys, service, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    code, output = tunelab(capsys, "compare", "--prompts", str(prompts), "--checks", "no_such_module:tone", "tiny")
    assert code == 2 and "Traceback" not in output
    assert output.strip() == ("error: --checks: 'no_such_module:tone' is not loaded on this service; a request "
                              "chooses among the registered checks, and the service loads others named in its "
                              "TUNELAB_CHECKS setting")


def test_a_prompt_file_with_a_bad_line_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Hi"}\n{"prompt": \n')
    with pytest.raises(InvalidRequest, match="line 2: not valid JSON"):
        read_prompts(path)
    path.write_text('{"prompt": "Hi"}\n{"question": "Hi"}\n')
    with pytest.raises(InvalidRequest, match="line 2: expected an object"):
        read_prompts(path)
    assert read_prompts(write_jsonl(tmp_path / "ok.jsonl", PROMPTS))[2]["kind"] == "off_topic"


def test_a_job_with_a_validation_file_gets_a_comparison_with_its_base_when_it_succeeds(service, tmp_path):
    from conftest import wait_for, wait_for_event

    client = service.client()
    train = upload(client, tmp_path, varied_chats(16))
    valid = upload(client, tmp_path, varied_chats(19)[16:], name="valid.jsonl")
    job = wait_for(client, client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, validation_file=valid.id, suffix="auto",
        hyperparameters={"n_epochs": 1, "batch_size": 4}).id)
    assert job.status == "succeeded", job.error
    wait_for_event(client, job.id, "Comparing")
    attached = client.get("/evaluations", cast_to=object, options={"params": {"job_id": job.id}})["data"]
    assert len(attached) == 1 and attached[0]["candidates"] == ["tiny", job.fine_tuned_model]
    found = wait_for_evaluation(client, attached[0]["id"])
    assert found["status"] == "completed", found["error"]
    report = found["report"]
    assert [p["id"] for p in report["prompts"]] == ["line-1", "line-2", "line-3"]
    assert report["candidates"][1]["checks"]["reference"]["count"] == 3  # the validation replies are references
    assert report["candidates"][1]["validation"]["loss"] is not None
