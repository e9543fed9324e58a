"""The studio's preference pairs in a real headless Chromium against the real service with the tiny model: from a
completed comparison, open the review, pool the answers of the same prompts at other seeds, rewrite a preferred
answer, drop a pair, save the kept pairs as a training file (its lines read back through the API), and go on to
the fine-tuning wizard with the file and the DPO method chosen; the wizard sends the DPO method with its beta.

The tests share one server and one page and run in file order, as tests/test_studio.py does.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import serve_in_thread
from test_studio import ARGS, CHROMIUM, KEY, WAIT, api, pytestmark, shot  # noqa: F401 - the same skip rule

SPLIT_CHECK = """
from tunelab.evaluate.checks import Score, check

@check("even_words", "An even number of words")
def even_words(case):
    count = len(case.answer.split())
    return Score(count % 2 == 0, f"{count} words")
"""
PROMPTS = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Where should I go in month {i}?"}]}
           for i in range(10)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("studio-pairs")
    (root / "split_checks.py").write_text(SPLIT_CHECK)
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"TUNELAB_HOME": str(root / "home"), "TUNELAB_API_KEY": KEY, "TUNELAB_LEASE_SECONDS": "3",
                            "TUNELAB_DEFAULT_MODEL": "tiny", "TUNELAB_AUTO_COMPARE": "false",
                            "TUNELAB_CHECKS": f"{root / 'split_checks.py'}:even_words"}.items():
            env.setenv(name, value)
        from tunelab.models.catalog import import_model

        import_model(tiny_model, "tiny")
        with serve_in_thread() as running:
            running.home = root / "home"
            running.root = running.base_url.removesuffix("/v1")
            yield running


@pytest.fixture(autouse=True)
def home(server):
    return server.home


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        opened = context.new_page()
        opened.set_default_timeout(WAIT)
        errors = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.goto(server.root + f"/?token={KEY}")
        opened.locator("#nav a.current", has_text="Data").wait_for()
        yield opened
        browser.close()
        assert not errors, errors  # no script error on any page


def comparisons(http, seeds) -> list[dict]:
    created = [http.post("/evaluations", json={"candidates": ["tiny"], "prompts": PROMPTS, "seed": seed,
                                               "system": "You are a travel assistant.", "max_tokens": 10,
                                               # one check only: whether the tiny model's noise ends with a
                                               # question (engagement) would decide if any answer can pass
                                               "checks": ["even_words"]}).json()["id"]
               for seed in seeds]
    found = []
    for evaluation_id in created:
        deadline = time.monotonic() + 120
        while (got := http.get(f"/evaluations/{evaluation_id}").json())["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert got["status"] == "completed", got["error"]
        found.append(got)
    return found


def test_review_edit_drop_and_save_pairs_then_go_on_to_a_dpo_fine_tune(page, server):
    http = api(server)
    first, *others = comparisons(http, seeds=(1, 2, 3))
    expected = http.post("/pairs", json={"evaluations": [first["id"], *[o["id"] for o in others]]}).json()
    assert expected["summary"]["pairs"] >= 2, expected["summary"]  # the seeds split on an even word count

    page.goto(server.root + f"/#/evaluate/{first['id']}")
    page.click("text=Make preference pairs")
    page.wait_for_url(f"**/#/evaluate/{first['id']}/pairs")
    # one seed: one answer per prompt, so nothing to pair yet, and the page says why
    page.get_by_text("no prompt had both a passing and a failing answer: 10 prompts").wait_for()
    for other in others:
        page.check(f"input[name=pool][value={other['id']}]")
    page.click("text=Find pairs")
    pairs = page.locator("article.pair")
    pairs.first.wait_for()
    assert pairs.count() == expected["summary"]["pairs"]
    assert page.locator("input[name=check][value=even_words]").is_checked()
    shown = pairs.first
    assert "fails An even number of words:" in shown.locator(".why").inner_text()
    assert "You are a travel assistant." in shown.locator(".bubble.system").inner_text()
    assert shown.locator("textarea[name=preferred]").input_value() == \
        expected["data"][0]["row"]["preferred_output"][0]["content"]

    shown.locator("textarea[name=preferred]").fill("Lisbon is lovely then. What kind of trip do you like?")
    pairs.nth(1).locator("input[name=keep]").uncheck()
    page.get_by_text(f"{pairs.count() - 1} of {pairs.count()} pairs kept").wait_for()
    shot(page, "pairs")
    page.fill("input[name=filename]", "reviewed-pairs.jsonl")
    page.click("text=Save as training file")
    saved = page.locator(".saved")
    saved.wait_for()
    file_id = saved.get_attribute("data-file")
    lines = [json.loads(x) for x in http.get(f"/files/{file_id}/content").text.splitlines()]
    kept = [p["row"] for i, p in enumerate(expected["data"]) if i != 1]
    kept[0] = {**kept[0], "preferred_output": [{"role": "assistant",
                                                "content": "Lisbon is lovely then. What kind of trip do you like?"}]}
    assert lines == kept
    assert http.get(f"/files/{file_id}").json()["filename"] == "reviewed-pairs.jsonl"
    assert page.locator(f"a[href='#/data/{file_id}']").is_visible()

    page.click("text=Fine-tune with DPO")
    dialog = page.locator("dialog")
    assert dialog.locator("select[name=method]").input_value() == "dpo"
    dialog.locator("button", has_text="Next").click()
    assert dialog.locator("select[name=training_file]").input_value() == file_id
    page.keyboard.press("Escape")


def test_the_wizard_sends_the_dpo_method_with_its_beta(page, server, tmp_path):
    http = api(server)
    rows = [{"input": {"messages": [{"role": "user", "content": f"Where should I go in month {i}, trip {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"Lisbon is mild in month {i}. What do you like?"}],
             "non_preferred_output": [{"role": "assistant", "content": f"Book Hotel Number{i} today."}]}
            for i in range(12)]
    uploaded = http.post("/files", data={"purpose": "fine-tune"},
                         files={"file": ("prefs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))}).json()
    page.goto(server.root + f"/#/fine-tuning?new=1&training_file={uploaded['id']}&method=dpo")
    dialog = page.locator("dialog")
    assert dialog.locator("select[name=method]").input_value() == "dpo"
    dialog.locator("select[name=model]").select_option("tiny")
    dialog.locator("input[name=suffix]").fill("dpo-travel")
    dialog.locator("button", has_text="Next").click()
    dialog.get_by_text("12 examples · 0 errors").wait_for()
    dialog.locator("button", has_text="Next").click()
    beta = dialog.locator("input[name=beta]")
    assert beta.get_attribute("placeholder") == "auto (0.1)"
    hint = dialog.locator("label.field", has=page.locator("input[name=beta]")).inner_text()
    assert "closer to the model it starts from" in hint
    beta.fill("5")
    dialog.locator("button", has_text="Next").click()
    dialog.get_by_text("Beta is a number above 0 and at most 2").wait_for()
    beta.fill("0.2")
    dialog.locator("input[name=n_epochs]").fill("1")
    dialog.locator("button", has_text="Next").click()
    review = dialog.locator(".facts").inner_text()
    assert "DPO preference" in review and "0.2" in review
    with page.expect_request("**/v1/fine_tuning/jobs") as sent:
        dialog.locator("button", has_text="Confirm").click()
    body = sent.value.post_data_json
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.2}}}
    assert "hyperparameters" not in body and body["training_file"] == uploaded["id"] and body["model"] == "tiny"
    page.wait_for_url("**/#/fine-tuning/ftjob-*")
    job = http.get(f"/fine_tuning/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    http.post(f"/fine_tuning/jobs/{job['id']}/cancel")
