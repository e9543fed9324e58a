"""The studio's Evals page in a real headless Chromium: a run's `report_url` opens the run with each grader's pass
rate and interval and every output item's results; the eval lists its runs; clean-up lists the eval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_evals_api import SCHEMA, finished

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="the studio tests need Debian's chromium: make browser")


def test_a_runs_report_url_opens_it_in_the_studio(service):
    from playwright.sync_api import sync_playwright

    client = service.client(max_retries=0)
    ev = client.evals.create(name="greetings", data_source_config={"type": "custom", "item_schema": SCHEMA},
                             testing_criteria=[{"type": "string_check", "name": "says hi", "operation": "ilike",
                                                "input": "{{sample.output_text}}", "reference": "hi"}])
    rows = [{"item": {"question": q}, "sample": {"output_text": a}}
            for q, a in (("Hello?", "Hi there!"), ("Hey?", "Hi!"), ("Yo?", "Good day."))]
    run = finished(client, ev.id, client.evals.runs.create(ev.id, name="first", data_source={
        "type": "jsonl", "source": {"type": "file_content", "content": rows}}).id)
    root = service.base_url.removesuffix("/v1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(30_000)
        page.goto(f"{root}/?token={service.key}")
        page.locator("#nav a.current", has_text="Data").wait_for()
        page.goto(run.report_url)
        page.get_by_text("2 passed, 1 failed, 0 errored of 3").wait_for()
        page.get_by_text("2 / 3 · 67% [21%–94%]").wait_for()  # Wilson's interval for 2 of 3
        assert page.locator("tbody tr").count() == 1 + 3  # the grader, then the three items
        page.get_by_text("Good day.").wait_for()
        page.click("text=← Runs")
        page.locator("a", has_text="first").wait_for()
        page.click("text=← Evals")
        page.locator("a", has_text="greetings").wait_for()
        page.goto(f"{root}/#/clean-up")  # clean-up lists the eval with its runs, after the other kinds
        row = page.locator("section[data-kind=eval] tbody tr").first
        row.wait_for()
        assert ev.id in row.inner_text() and "greetings (1 runs)" in row.inner_text()
        assert page.locator("section[data-kind]").evaluate_all("s => s.map(x => x.dataset.kind)")[-1] == "eval"
        browser.close()
    assert not errors, errors
