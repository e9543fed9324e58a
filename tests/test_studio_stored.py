"""The studio's stored completions page in a real headless Chromium against the real service with the tiny model:
two answers stored through the SDK are listed; one is rated good, the other bad and edited (its original stays
in view); the filter narrows the list; and the page exports a preference file whose content is checked."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from conftest import serve_in_thread
from test_chat import ASK
from test_studio import ARGS, CHROMIUM, KEY, WAIT, api, pytestmark, shot  # noqa: F401 (pytestmark: the skip rule)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("studio-stored") / "home"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"TUNELAB_HOME": str(home), "TUNELAB_API_KEY": KEY, "TUNELAB_DEFAULT_MODEL": "tiny",
                            "TUNELAB_AUTO_COMPARE": "false"}.items():
            env.setenv(name, value)
        from tunelab.models.catalog import import_model

        import_model(tiny_model, "tiny")
        with serve_in_thread() as running:
            running.home = home
            running.root = running.base_url.removesuffix("/v1")
            yield running


@pytest.fixture(autouse=True)
def home(server):
    return server.home


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        opened = browser.new_page(viewport={"width": 1366, "height": 860})
        opened.set_default_timeout(WAIT)
        errors = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        yield opened
        browser.close()
    assert not errors, errors  # no script error on the page


def test_rate_edit_and_export_stored_completions_as_a_preference_file(page, server):
    client = server.client()
    first, second = (client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, seed=seed, store=True,
                                                    metadata={"page": "studio"}) for seed in (1, 2))
    client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4)  # not stored: not listed
    original = {c.id: c.choices[0].message.content for c in (first, second)}

    page.goto(server.root + f"/?token={KEY}")
    page.locator("#nav a", has_text="Stored completions").click()
    rows = page.locator("tr[data-completion]")
    rows.nth(1).wait_for()
    assert rows.count() == 2 and rows.first.get_attribute("data-completion") == second.id  # newest first
    assert "Where should I go in May?" in rows.first.locator(".asked").inner_text()

    page.locator(f"tr[data-completion={first.id}] button[data-rate=good]").click()
    page.locator(f"tr[data-completion={first.id}][data-rating=good]").wait_for()
    page.locator(f"tr[data-completion={second.id}] button[data-rate=bad]").click()
    bad = page.locator(f"tr[data-completion={second.id}][data-rating=bad]")
    bad.wait_for()
    assert "rating: bad" in bad.locator(".metadata").inner_text()

    bad.get_by_role("button", name="Edit answer").click()
    page.fill("dialog textarea[name=edited_content]", "Lisbon in May: warm and bright. What do you enjoy?")
    page.get_by_role("button", name="Save edit").click()
    edited = page.locator(f"tr[data-completion={second.id}] .edited")
    edited.wait_for()
    assert "Lisbon in May: warm and bright." in edited.inner_text()
    assert page.locator(f"tr[data-completion={second.id}] .original s").text_content() == original[second.id]
    stored = client.chat.completions.retrieve(second.id)
    assert stored.choices[0].message.content == original[second.id]  # the original is kept, not overwritten
    assert stored.model_extra["edited_content"] == "Lisbon in May: warm and bright. What do you enjoy?"

    page.fill("input[name=metadata]", "rating=bad")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-completion]")).to_have_count(1)
    page.fill("input[name=metadata]", "page=studio")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-completion]")).to_have_count(2)
    shot(page, "stored")

    page.get_by_role("button", name="Export as preference file").click()
    made = page.locator(".exported p.ok[data-file]")
    made.wait_for()
    file_id = made.get_attribute("data-file")
    assert "2 examples" in made.inner_text()
    assert made.get_by_role("link", name="Open its data report").get_attribute("href") == f"#/data/{file_id}"
    assert client.files.retrieve(file_id).purpose == "fine-tune"
    rows = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    edit = "Lisbon in May: warm and bright. What do you enjoy?"
    assert rows == [
        {"input": {"messages": ASK}, "preferred_output": [{"role": "assistant", "content": preferred}],
         "non_preferred_output": [{"role": "assistant", "content": original[second.id]}]}
        for preferred in (edit, original[first.id])]


def test_clean_up_deletes_stored_completions_last(page, server):
    client = server.client()
    kept = {c.id for c in client.chat.completions.list()}
    assert len(kept) == 2  # the two of the test above
    page.goto(server.root + f"/?token={KEY}")
    page.goto(server.root + "/#/clean-up")
    rows = page.locator("section[data-kind=stored] tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_role("button", name="Delete all", exact=True).click()
    page.locator("dialog button.danger").click()
    page.get_by_text(re.compile(r"Freed \d")).wait_for()
    done = page.locator("ol.log li").all_inner_texts()
    assert [line.split()[1] for line in done][-2:] == ["stored", "stored"], done  # after the files
    assert client.chat.completions.list().data == []
    expect(page.locator("p.empty", has_text="None.")).to_have_count(8)  # one per kind, evals included
