"""The whole travel lab in the studio, as a new user does it, with the real SmolLM2-135M-Instruct and the travel
data (about 15 minutes on 2 cores; `make test-slow`): upload both files, fine-tune with suffix ft-travel and the
default parameters while the metrics chart grows, deploy the base and the fine-tuned model (5K tokens per
minute, Default filter), ask the lab's questions to both side by side under the lab's system message, compare
them, and clean up. `STUDIO_SCREENSHOTS=docs/screenshots` saves the pictures docs/studio.md shows.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import TRAVEL, serve_in_thread
from test_studio import ARGS, CHROMIUM, drop_file, shot

pytestmark = [pytest.mark.slow, pytest.mark.real_model]
BASE = "SmolLM2-135M-Instruct"
QUESTIONS = ["What can you do?", "Where in Rome should I stay?",
             "I'm mostly there for the food. Where should I stay to be within walking distance of affordable restaurants?",
             "What are some local delicacies I should try?"]


@pytest.fixture
def server(monkeypatch, home):
    monkeypatch.setenv("TUNELAB_API_KEY", "lab-key")
    monkeypatch.setenv("TUNELAB_AUTO_COMPARE", "false")  # the comparison is started from the Evaluate page
    with serve_in_thread() as running:
        running.root = running.base_url.removesuffix("/v1")
        yield running


def test_the_travel_lab_in_the_browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(server.root + "/")
        shot(page, "sign-in")
        page.goto(server.root + "/?token=lab-key")  # the link `tunelab serve` prints

        # Data: upload both files (drop one, pick the other), review the training file.
        page.goto(server.root + "/#/data")
        drop_file(page, ".drop", "valid.jsonl", (TRAVEL / "valid.jsonl").read_text())
        page.get_by_text("Ready to train: 35 examples").wait_for(timeout=180_000)  # converts the model once
        page.goto(server.root + "/#/data")
        page.set_input_files(".drop input[type=file]", str(TRAVEL / "train.jsonl"))
        page.get_by_text("Ready to train: 186 examples").wait_for()
        page.locator("#line-1 .bubble.assistant").first.wait_for()
        shot(page, "data")

        # Fine-tuning: the wizard with suffix ft-travel and the default task parameters.
        page.get_by_role("button", name="Fine-tune with this file").click()
        dialog = page.locator("dialog")
        assert dialog.locator("select[name=model]").input_value() == BASE
        dialog.locator("input[name=suffix]").fill("ft-travel")
        dialog.get_by_role("button", name="Next").click()
        dialog.get_by_text("186 examples · 0 errors").wait_for()
        valid = next(f["id"] for f in api_key(server).get("/files").json()["data"] if f["filename"] == "valid.jsonl")
        dialog.locator("select[name=validation_file]").select_option(valid)
        dialog.get_by_role("button", name="Next").click()
        assert dialog.locator("input[name=n_epochs]").get_attribute("placeholder") == "auto (3)"
        assert dialog.locator("input[name=batch_size]").get_attribute("placeholder") == "auto (4)"
        shot(page, "wizard")
        dialog.get_by_role("button", name="Next").click()
        dialog.get_by_role("button", name="Confirm").click()
        page.wait_for_url(re.compile(r"#/fine-tuning/ftjob-"))
        page.click("button[data-tab=Metrics]")
        chart = page.locator("#loss-chart")
        expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=300_000)
        growing = int(chart.get_attribute("data-points"))

        # Meanwhile, as in the lab: deploy the base model and chat with it.
        page.goto(server.root + "/#/models")
        page.get_by_role("button", name="+ Deploy model").click()
        page.get_by_role("button", name="Deploy base model").click()
        page.locator("dialog input[name=name]").fill("base-travel")
        page.locator("dialog button[type=submit]").click()
        page.locator("tr[data-deployment=base-travel][data-state=Succeeded]").wait_for()

        page.goto(server.root + "/#/fine-tuning")
        page.locator("tr[data-job] a").first.click()
        page.click("button[data-tab=Metrics]")
        page.locator(".badge[data-status=succeeded]").first.wait_for(timeout=3_000_000)
        expect(chart).to_have_attribute("data-points", "141", timeout=30_000)  # one per step: 3 epochs × 47
        assert growing < 141
        shot(page, "metrics")

        page.get_by_role("button", name="Deploy", exact=True).click()
        page.locator("dialog input[name=name]").fill("ft-travel")
        page.locator("dialog button[type=submit]").click()
        page.locator("tr[data-deployment=ft-travel][data-state=Succeeded]").wait_for()
        shot(page, "models")

        # Playground: both side by side, the lab's system message, the lab's questions.
        page.goto(server.root + "/#/playground?deployment=base-travel&compare=1")
        page.select_option("select[name=deployment_b]", "ft-travel")
        page.select_option("select[aria-label='system message presets']", label="Travel assistant (the lab's final message)")
        page.get_by_role("button", name="Apply changes").click()
        page.get_by_role("button", name="Clear chat").click()
        for i, question in enumerate(QUESTIONS):
            page.fill("textarea[name=message]", question)
            page.press("textarea[name=message]", "Enter")
            for name in ("base-travel", "ft-travel"):
                answer = page.locator(f".pane[data-deployment={name}] .bubble.assistant").nth(i)
                answer.locator(".meta").filter(has_text=re.compile("tokens|filtered|Rate limit")).wait_for()
        shot(page, "playground")

        # Evaluate: the lab's questions through both, measured.
        page.goto(server.root + "/#/evaluate/new")
        page.get_by_role("button", name="Start comparison").click()
        page.locator("h1 .badge[data-status=completed]").wait_for(timeout=900_000)
        shot(page, "evaluate")

        # Clean up: everything but the base model.
        page.goto(server.root + "/#/clean-up")
        page.locator("section[data-kind=deployment] tbody tr").nth(1).wait_for()
        shot(page, "clean-up")
        page.get_by_role("button", name="Delete all", exact=True).click()
        page.locator("dialog button.danger").click()
        page.get_by_text(re.compile(r"Freed \d")).wait_for()
        assert all(line.startswith("Deleted ") for line in page.locator("ol.log li").all_inner_texts())
        storage = api_key(server).get("/storage").json()
        assert not any(storage[k] for k in ("deployments", "models", "jobs", "files", "evaluations"))
        browser.close()
        assert not errors, errors


def api_key(server):
    import httpx2 as httpx

    return httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer lab-key"}, timeout=30)
