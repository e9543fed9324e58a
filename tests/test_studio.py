"""The studio in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the real service with
the tiny model: sign in, upload and review a file, fine-tune through the wizard while the metrics chart grows
(pause and resume included), deploy, chat with streaming, change the system message and clear the chat, compare
two deployments, see a filtered prompt, run a comparison, export the fine-tune and a checkpoint, and delete
everything.

The tests share one server, one browser page and one fine-tune, and run in file order: each step of the lab
starts from where the previous one left the service. `STUDIO_SCREENSHOTS=docs/screenshots` saves a PNG of each
page there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import expect

from conftest import TRAVEL, serve_in_thread, varied_chats
from test_content_filter import exemplar

CHROMIUM = "/usr/bin/chromium"
TRAVEL_CHECKS = f"{TRAVEL / 'checks.py'}:policy,{TRAVEL / 'checks.py'}:redirect"  # as for the travel lab
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
KEY = "test-key"
SHOTS = os.environ.get("STUDIO_SCREENSHOTS")
WAIT = 60_000  # ms: the longest a step may take (a fine-tune of the tiny model takes seconds)

# Outside CI a machine without the browser skips these; in CI (where `make test` installs it) they must run.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="the studio tests need Debian's chromium: make browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("studio") / "home"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"TUNELAB_HOME": str(home), "TUNELAB_API_KEY": KEY, "TUNELAB_LEASE_SECONDS": "3",
                            "TUNELAB_DEFAULT_MODEL": "tiny", "TUNELAB_AUTO_COMPARE": "false",
                            "TUNELAB_CHECKS": TRAVEL_CHECKS}.items():
            env.setenv(name, value)
        from tunelab.models.catalog import import_model

        import_model(tiny_model, "tiny")
        with serve_in_thread() as running:
            running.home = home
            running.root = running.base_url.removesuffix("/v1")
            yield running


@pytest.fixture(autouse=True)
def home(server):
    """The module's one home for every test (the per-test home of conftest would hide the server's models)."""
    return server.home


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 860}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(WAIT)
    errors = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.errors = errors
    yield opened
    context.close()
    assert not errors, errors  # no script error on any page


def api(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=False)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def drop_file(page, selector: str, name: str, text: str) -> None:
    """Drop a file on an element as a person drags one from their desktop."""
    transfer = page.evaluate_handle("""([name, text]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], name, {type: "application/jsonl"}));
        return transfer;
    }""", [name, text])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def points(page, canvas: str) -> int:
    return page.evaluate(f"Chart.getChart(document.querySelector('{canvas}')).data.datasets[0].data.length")


def test_sign_in_asks_for_the_key_and_the_printed_link_sets_it(page, server):
    port = server.root.rsplit(":", 1)[1]
    page.goto(server.root + "/")
    page.get_by_text("Open the link `tunelab serve` printed").wait_for()
    page.fill("input[name=key]", "wrong-key")
    page.click("button[type=submit]")
    page.get_by_text("That key is not valid for this service.").wait_for()
    page.fill("input[name=key]", KEY)  # the form: a session, and the key kept nowhere in the browser
    page.click("button[type=submit]")
    page.locator("#nav a.current", has_text="Data").wait_for()
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly: no script reads it
    cookie = {c["name"]: c for c in page.context.cookies()}[f"tunelab_session_{port}"]
    assert cookie["value"] != KEY and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    page.click("#signout")  # ends the session on the server, not only in this browser
    page.get_by_text("Open the link `tunelab serve` printed").wait_for()
    replayed = httpx.get(server.base_url + "/models", headers={"Cookie": f"tunelab_session_{port}={cookie['value']}",
                                                               "X-Requested-With": "tunelab-studio"})
    assert replayed.status_code == 401
    page.goto(server.root + "/")
    page.get_by_text("Open the link `tunelab serve` printed").wait_for()

    page.goto(server.root + "/?token=not-the-key")
    page.get_by_text("That sign-in link is not valid for this server").wait_for()
    page.goto(server.root + f"/?token={KEY}")
    page.locator("#nav a.current", has_text="Data").wait_for()
    assert "token" not in page.url  # the redirect took the key out of the address bar
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    cookie = {c["name"]: c for c in page.context.cookies()}[f"tunelab_session_{port}"]
    assert cookie["value"] != KEY and cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_upload_a_file_and_review_its_examples_and_report(page, server, tmp_path):
    broken = varied_chats(12)
    broken[2] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]}
    path = tmp_path / "broken.jsonl"
    path.write_text(jsonl(broken))
    page.goto(server.root + "/#/data")
    page.set_input_files(".drop input[type=file]", str(path))
    page.get_by_text("2 errors: a job with this file would fail in validation.").wait_for()
    assert page.locator(".problems.errors li[data-rule=invalid_role]").inner_text().startswith("line 3 · invalid_role")
    assert "robot" in page.locator(".problems.errors").inner_text()
    assert page.locator("#line-3.has-error").is_visible()  # the bad example is marked among the bubbles

    page.goto(server.root + "/#/data")
    drop_file(page, ".drop", "train.jsonl", jsonl(varied_chats(16)))
    page.get_by_text("Ready to train: 16 examples, no errors").wait_for()
    assert page.locator(".chat").count() == 16 and page.locator(".chat .bubble.assistant").count() == 16
    assert "Lisbon" in page.locator("#line-1 .bubble.user").inner_text()
    counts = page.evaluate("Chart.getChart(document.querySelector('#histogram')).data.datasets[0].data")
    assert sum(counts) == 16  # the token histogram holds every example
    facts = page.locator(".facts").inner_text()
    assert "auto epochs · batch size" in facts and "Estimated training time" in facts
    shot(page, "data")

    page.goto(server.root + "/#/data")
    listed = page.locator("tr[data-file]")
    listed.nth(1).wait_for()
    assert {listed.nth(i).locator("td").first.inner_text() for i in range(2)} == {"broken.jsonl", "train.jsonl"}


def test_fine_tune_with_the_wizard_and_watch_the_metrics_grow(page, server):
    http = api(server)
    train = next(f for f in http.get("/files").json()["data"] if f["filename"] == "train.jsonl")
    page.goto(server.root + "/#/fine-tuning")
    page.click("text=+ Fine-tune model")
    dialog = page.locator("dialog")
    dialog.locator("select[name=model]").select_option("tiny")
    dialog.locator("input[name=suffix]").fill("ft travel")
    dialog.locator("button", has_text="Next").click()
    dialog.get_by_text("The suffix is 1–64 letters").wait_for()  # checked before anything is sent
    dialog.locator("input[name=suffix]").fill("ft-travel")
    dialog.locator("button", has_text="Next").click()

    dialog.locator("select[name=training_file]").select_option(train["id"])
    dialog.get_by_text("16 examples · 0 errors").wait_for()
    drop_file(page, "dialog .picker:nth-of-type(2) .drop", "valid.jsonl", jsonl(varied_chats(20)[16:]))
    dialog.get_by_text("valid.jsonl uploaded as").wait_for()
    dialog.get_by_text("4 examples · 1 error").wait_for()  # fewer than 10 examples: the report says so
    dialog.locator("button", has_text="Next").click()
    dialog.get_by_text("The validation file has errors").wait_for()  # and the wizard will not go on with it
    dialog.locator("select[name=validation_file]").select_option("")
    dialog.locator("button", has_text="Next").click()

    epochs = dialog.locator("input[name=n_epochs]")
    assert epochs.get_attribute("placeholder") == "auto (7)"  # 16 examples: min(25, ceil(100 / 16))
    assert dialog.locator("input[name=batch_size]").get_attribute("placeholder") == "auto (1)"
    assert dialog.locator("input[name=learning_rate_multiplier]").get_attribute("placeholder") == "auto (1.0)"
    epochs.fill("25")
    dialog.locator("input[name=batch_size]").fill("1")
    dialog.locator("input[name=seed]").fill("7")
    dialog.locator("button", has_text="Next").click()
    review = dialog.locator(".facts").inner_text()
    assert "ft-travel" in review and "train.jsonl" in review and "auto (1.0)" in review
    dialog.locator("button", has_text="Confirm").click()

    page.wait_for_url(re.compile(r"#/fine-tuning/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    page.click("button[data-tab=Metrics]")
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", re.compile(r"^([2-9]|[1-9]\d+)$"), timeout=WAIT)
    page.click("button:text-is('Pause')")
    page.locator(".badge[data-status=paused]").first.wait_for()
    paused_at = points(page, "#loss-chart")
    print("paused at", paused_at)
    assert 2 <= paused_at < 400
    shot(page, "metrics")
    page.click("button:text-is('Resume')")
    page.locator(".badge[data-status=succeeded]").first.wait_for()
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "400", timeout=WAIT)
    assert points(page, "#loss-chart") == 400 > paused_at  # the chart kept growing after the resume
    assert points(page, "#accuracy-chart") == 400

    page.click("button[data-tab=Details]")
    details = page.locator("[data-panel=Details]").inner_text()
    assert "Trained tokens" in details and "Paused" in details and "Succeeded" in details
    page.click("button[data-tab=Checkpoints]")
    assert page.locator("[data-panel=Checkpoints] tbody tr").count() >= 2  # one per epoch (last 3 kept) + the pause
    with page.expect_download() as download:
        page.click("text=Download results.csv")
    assert Path(download.value.path()).read_text().startswith("step,train_loss")
    assert http.get(f"/fine_tuning/jobs/{job_id}").json()["fine_tuned_model"].startswith("ft:tiny:local:ft-travel:")


def test_deploy_the_base_and_the_fine_tuned_model(page, server):
    page.goto(server.root + "/#/models")
    page.click("text=+ Deploy model")
    page.click("text=Deploy base model")
    dialog = page.locator("dialog")
    dialog.locator("select[name=model]").select_option("tiny")
    dialog.locator("input[name=name]").fill("base travel")
    assert dialog.locator("select[name=type]").input_value() == "Standard"
    assert dialog.locator("input[name=tpm]").input_value() == "5"
    dialog.locator("select[name=content_filter]").select_option("None")
    dialog.locator("button[type=submit]").click()
    dialog.locator(".error", has_text="a deployment name is 2–64 letters").wait_for()  # the API's own message
    dialog.locator("input[name=name]").fill("base-travel")
    dialog.locator("button[type=submit]").click()
    page.locator("tr[data-deployment=base-travel][data-state=Succeeded]").wait_for()

    page.click("text=+ Deploy model")
    page.click("text=Deploy fine-tuned model")
    assert dialog.locator("input[name=name]").input_value() == "ft-travel"  # the suffix is the default name
    assert dialog.locator("select[name=content_filter]").input_value() == "Default"
    dialog.locator("select[name=checkpoint] option").nth(1).wait_for(state="attached")  # its checkpoints are offered
    dialog.locator("button[type=submit]").click()
    page.locator("tr[data-deployment=ft-travel][data-state=Succeeded]").wait_for()
    shot(page, "models")


def test_chat_streams_and_the_system_message_applies_after_clear(page, server):
    page.goto(server.root + "/#/playground?deployment=base-travel")
    page.fill("input[name=max_tokens]", "48")
    page.evaluate("""() => {  // every length the answer's text takes while it arrives
        window.seen = [];
        new MutationObserver(() => {
            const text = document.querySelector('.bubble.assistant .text');
            if (text) window.seen.push(text.textContent.length);
        }).observe(document.querySelector('.panes'), {childList: true, subtree: true, characterData: true});
    }""")
    box = page.locator("textarea[name=message]")
    box.fill("Where should I go in May?")
    box.press("Shift+Enter")
    box.press_sequentially("Somewhere warm.")
    assert box.input_value() == "Where should I go in May?\nSomewhere warm." and page.locator(".bubble.user").count() == 0
    with page.expect_request("**/v1/chat/completions") as sent:
        box.press("Enter")
    body = sent.value.post_data_json
    assert body["stream"] is True and body["model"] == "base-travel" and body["max_tokens"] == 48
    assert body["messages"] == [{"role": "user", "content": "Where should I go in May?\nSomewhere warm."}]
    page.locator(".bubble.assistant .meta", has_text="tokens").wait_for()
    lengths = sorted(set(n for n in page.evaluate("window.seen") if n > 0))
    assert len(lengths) >= 2, lengths  # the answer arrived in pieces, as they were generated
    assert re.search(r"\d+ tokens \(prompt \d+\) · [\d.]+ s · first token [\d.]+ s", page.locator(".bubble.assistant .meta").inner_text())

    system = page.locator("textarea[name=system]")
    system.fill("You are an AI assistant that helps people plan their holidays.")
    page.get_by_role("button", name="Apply changes").click()
    page.get_by_text("Applied: the next messages use it").wait_for()
    page.get_by_role("button", name="Clear chat").click()
    assert page.locator(".bubble").count() == 0
    with page.expect_request("**/v1/chat/completions") as sent:
        box.fill("What can you do?")
        box.press("Enter")
    assert sent.value.post_data_json["messages"] == [
        {"role": "system", "content": "You are an AI assistant that helps people plan their holidays."},
        {"role": "user", "content": "What can you do?"}]
    page.locator(".bubble.assistant .meta", has_text="tokens").wait_for()
    shot(page, "playground")


def test_compare_two_deployments_side_by_side(page, server):
    page.goto(server.root + "/#/playground?deployment=base-travel")
    page.check("input[name=compare]")
    page.select_option("select[name=deployment_b]", "ft-travel")
    page.select_option("select[aria-label='system message presets']", label="Travel assistant (the lab's final message)")
    page.get_by_role("button", name="Apply changes").click()
    page.fill("input[name=max_tokens]", "24")
    page.fill("textarea[name=message]", "Where in Rome should I stay?")
    page.press("textarea[name=message]", "Enter")
    for name in ("base-travel", "ft-travel"):
        pane = page.locator(f".pane[data-deployment={name}]")
        pane.locator(".bubble.user", has_text="Where in Rome should I stay?").wait_for()
        pane.locator(".bubble.assistant .meta", has_text="tokens").wait_for()
    shot(page, "compare")

    # A prompt the ft-travel deployment's Default filter blocks: both panes say what happened.
    page.fill("textarea[name=message]", exemplar("violence", "high"))
    page.press("textarea[name=message]", "Enter")
    page.locator(".pane[data-deployment=ft-travel] .filter", has_text="The prompt was filtered: violence (high)").wait_for()
    page.locator(".pane[data-deployment=base-travel] .bubble.assistant").nth(1).locator(".meta", has_text="tokens").wait_for()


def test_start_a_comparison_and_read_its_report(page, server):
    page.goto(server.root + "/#/evaluate")
    page.click("text=+ New comparison")
    page.locator("input[name=candidate]").first.wait_for()
    checked = page.locator("input[name=candidate]:checked")
    assert [checked.nth(i).get_attribute("value") for i in range(checked.count())] == ["base-travel", "ft-travel"]
    assert "Where in Rome should I stay?" in page.locator("textarea[name=prompts]").input_value()
    page.fill("input[name=max_tokens]", "8")
    page.click("text=Start comparison")
    page.wait_for_url(re.compile("#/evaluate/eval-"))
    page.locator("h1 .badge[data-status=completed]").wait_for()
    assert page.locator("table.answers tbody tr").count() == 5
    charts = page.evaluate("[...document.querySelectorAll('main canvas')].filter(c => Chart.getChart(c)).length")
    assert charts == 2  # policy and engagement; redirect scores off-topic prompts only, and these hold none
    # five prompts: every share with its n and 95% interval, and no winner called on so few
    measured = page.locator("main table:not(.answers)").inner_text()
    assert re.search(r"\d+% \(\d+%–\d+%, n=5\)", measured), measured
    assert page.locator(".verdict").inner_text().startswith("no clear winner on 5 prompts")
    with page.expect_download() as download:
        page.click("text=Download HTML")
    report = Path(download.value.path()).read_text()
    assert "Answers side by side" in report and "new Chart(" in report and "<script src" not in report
    shot(page, "evaluate")


def test_export_a_fine_tuned_model_and_a_checkpoint_and_download_the_files(page, server):
    http = api(server)
    model = next(m for m in http.get("/models").json()["data"] if m["kind"] == "fine-tuned")
    page.goto(server.root + "/#/models")
    shown = page.locator("tr[data-model=tiny] dl.facts").inner_text()
    tiny = next(m for m in http.get("/models").json()["data"] if m["id"] == "tiny")
    assert f"Parameters\n{tiny['parameters']}" in shown and f"Chat template\n{tiny['chat_template']}" in shown
    if tiny.get("architecture"):  # the catalog's fields, shown whenever the API gives them
        assert f"Architecture\n{tiny['architecture']}" in shown and "Fast paths\ntraining" in shown
    page.locator(f"tr[data-model='{model['id']}']").get_by_role("button", name=f"Export {model['id']}").click()
    dialog = page.locator("dialog")
    expect(dialog.locator("select[name=format]")).to_be_focused()
    expect(dialog.locator("select[name=quantization]")).to_be_hidden()  # GGUF's options appear with GGUF
    dialog.locator("select[name=format]").select_option("gguf")
    dialog.locator("select[name=quantization]").select_option("f16")
    expect(dialog.locator("textarea[name=system]")).to_be_hidden()
    dialog.locator("input[name=ollama]").check()
    dialog.get_by_label("System message for Ollama (optional)").fill("You are a travel assistant.")
    dialog.locator("button[type=submit]").click()
    bar = dialog.get_by_role("progressbar")
    bar.wait_for()  # from the moment it starts
    dialog.locator("[role=status][data-status=succeeded]").wait_for()
    expect(bar).to_have_attribute("aria-valuenow", "100")
    found = http.get("/exports", params={"limit": 1}).json()["data"][0]
    assert found["status"] == "succeeded" and found["model"] == model["id"]
    shown = dialog.locator("tr[data-file]").evaluate_all("rows => rows.map(r => [r.dataset.file, r.cells[1].textContent])")
    assert [name for name, _ in shown] == [f["name"] for f in found["files"]]
    assert "Modelfile" in dict(shown) and any(name.endswith(".gguf") for name, _ in shown)
    with page.expect_download() as download:
        dialog.get_by_role("button", name="Download Modelfile").click()
    saved = Path(download.value.path())
    assert saved.stat().st_size == next(f["bytes"] for f in found["files"] if f["name"] == "Modelfile")
    assert "You are a travel assistant." in saved.read_text()
    shot(page, "export")
    dialog.locator(".actions button", has_text="Close").click()
    page.locator(f"#exports tr[data-export='{found['id']}'][data-status=succeeded]").wait_for()

    page.goto(server.root + f"/#/fine-tuning/{model['fine_tuning_job_id']}")  # a checkpoint, from the job's page
    page.click("button[data-tab=Checkpoints]")
    checkpoint = page.locator("[data-panel=Checkpoints] tbody tr code").first.inner_text()
    page.get_by_role("button", name=f"Export {checkpoint}").click()
    dialog.locator("select[name=format]").select_option("peft")
    dialog.locator("button[type=submit]").click()
    dialog.locator("[role=status][data-status=succeeded]").wait_for()
    dialog.locator("tr[data-file='adapter_model.safetensors']").wait_for()
    dialog.locator(".actions button", has_text="Close").click()
    assert http.get("/exports", params={"limit": 1}).json()["data"][0]["model"] == checkpoint


def test_delete_everything_in_dependency_order(page, server):
    page.goto(server.root + "/#/clean-up")
    page.locator("section[data-kind=deployment] tbody tr").nth(1).wait_for()
    exports = page.locator("section[data-kind=export] tbody tr").all_inner_texts()
    assert len(exports) == 2 and all("(succeeded," in row and re.search(r"\d (B|KB|MB)\s*$", row)
                                     for row in exports), exports  # each with the disk it takes
    shot(page, "clean-up")
    page.get_by_role("button", name="Delete all", exact=True).click()
    page.locator("dialog button.danger").click()
    page.get_by_text(re.compile(r"Freed \d")).wait_for()
    done = page.locator("ol.log li").all_inner_texts()
    kinds = [line.split()[1] for line in done]
    assert all(line.startswith("Deleted ") for line in done), done
    assert kinds.index("deployment") < kinds.index("export") < kinds.index("model") < kinds.index("job") \
        < kinds.index("file") < kinds.index("evaluation")
    assert kinds.count("export") == 2  # the fine-tune's and the checkpoint's, exported above
    storage = api(server).get("/storage").json()
    assert not any(storage[k] for k in ("deployments", "exports", "models", "jobs", "files", "evaluations"))
    assert not [p for p in (server.home / "exports").rglob("*") if p.is_file()]
    assert page.locator("p.empty", has_text="None.").count() == 8  # one per kind, stored completions and evals too
