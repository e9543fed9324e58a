"""Stored chat completions through the stock `openai` SDK against the real app, with the tiny model: `store: true`
keeps an answer (whole or streamed) with its metadata; list, filter, page, retrieve, messages, update and delete
as the SDK calls them, and on Azure's routes; metadata held to the cloud's limits; a filtered answer stored only as
the client got it; and stored completions exported as supervised and preference training files."""

from __future__ import annotations

import json
import re

import httpx2 as httpx
import openai
import pytest

from test_chat import ASK
from test_content_filter import exemplar
from test_deployments import deploy, wait_until_provisioned


def ask(user: str) -> list[dict]:
    return [ASK[0], {"role": "user", "content": user}]


def api(service) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": "Bearer test-key"}, timeout=60)


def test_store_list_filter_page_retrieve_messages_update_delete(service):
    client = service.client()
    made = [client.chat.completions.create(model="tiny", messages=ask(f"Trip {i}?"), max_tokens=6, seed=i,
                                           store=True, metadata={"batch": "a" if i < 2 else "b", "n": str(i)})
            for i in range(3)]
    unstored = client.chat.completions.create(model="tiny", messages=ask("Not kept?"), max_tokens=4)
    ids = [m.id for m in made]

    page = client.chat.completions.list()
    assert [c.id for c in page.data] == ids and page.has_more is False  # oldest first; the unstored is not kept
    raw = api(service).get("/chat/completions", params={"limit": 2}).json()
    assert raw["object"] == "list" and raw["first_id"] == ids[0] and raw["last_id"] == ids[1] and raw["has_more"]
    assert [c.id for c in client.chat.completions.list(limit=1)] == ids  # the SDK pages on by `after`
    assert [c.id for c in client.chat.completions.list(order="desc", limit=2).data] == ids[:0:-1]
    assert [c.id for c in client.chat.completions.list(after=ids[0]).data] == ids[1:]
    assert [c.id for c in client.chat.completions.list(metadata={"batch": "a"}).data] == ids[:2]
    assert [c.id for c in client.chat.completions.list(metadata={"batch": "a", "n": "1"}).data] == [ids[1]]
    assert client.chat.completions.list(model="tiny").data[0].id == ids[0]
    assert client.chat.completions.list(model="other").data == []

    got = client.chat.completions.retrieve(ids[1])
    assert got.choices[0].message.content == made[1].choices[0].message.content
    assert got.usage == made[1].usage and got.created == made[1].created and got.model == "tiny"
    extra = got.model_extra
    assert got.metadata == {"batch": "a", "n": "1"} and extra["edited_content"] is None
    assert extra["request"]["messages"] == ask("Trip 1?") and extra["request"]["seed"] == 1
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.retrieve(unstored.id)
    assert caught.value.body["param"] == "completion_id" and caught.value.body["type"] == "invalid_request_error"

    messages = client.chat.completions.messages.list(ids[1])
    assert [(m.id, m.role, m.content) for m in messages.data] == [
        (f"{ids[1]}-0", "system", ASK[0]["content"]), (f"{ids[1]}-1", "user", "Trip 1?")]
    last = client.chat.completions.messages.list(ids[1], order="desc", limit=1)
    assert [m.id for m in last.data] == [f"{ids[1]}-1"] and last.has_more
    assert [m.id for m in client.chat.completions.messages.list(ids[1], after=f"{ids[1]}-0").data] == [
        f"{ids[1]}-1"]

    rated = client.chat.completions.update(ids[2], metadata={"rating": "bad"})
    assert rated.metadata == {"rating": "bad"}  # replaced whole, as the cloud does
    assert [c.id for c in client.chat.completions.list(metadata={"rating": "bad"}).data] == [ids[2]]
    assert client.chat.completions.update(ids[2], metadata=None).metadata == {}

    deleted = client.chat.completions.delete(ids[0])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[0], True, "chat.completion.deleted")
    for call in (lambda: client.chat.completions.retrieve(ids[0]), lambda: client.chat.completions.delete(ids[0]),
                 lambda: client.chat.completions.update(ids[0], metadata={}),
                 lambda: client.chat.completions.messages.list(ids[0])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [c.id for c in client.chat.completions.list().data] == ids[1:]

    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "sideways"}, "order"),
                          ({"after": "chatcmpl-nothing"}, "after"), ({"metadata[k]": "v" * 513}, "metadata")):
        response = api(service).get("/chat/completions", params=params)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, params
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.messages.list(ids[1], after="chatcmpl-x-9")
    assert caught.value.body["param"] == "after"


def test_a_streamed_answer_is_stored_once_it_ends_and_nothing_without_store(service):
    client = service.client()
    chunks = list(client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, seed=3, stream=True,
                                                 store=True, metadata={"via": "stream"},
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.object == "chat.completion" and stored.choices[0].message.content == text
    assert stored.choices[0].finish_reason == "length" and stored.usage == chunks[-1].usage
    assert stored.metadata == {"via": "stream"}
    whole = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, seed=3, store=True)
    assert client.chat.completions.retrieve(whole.id).choices[0].message.content == text  # the same answer

    unstored = list(client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, stream=True))
    client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, store=False)
    assert {c.id for c in client.chat.completions.list().data} == {chunks[0].id, whole.id}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(unstored[0].id)


@pytest.mark.parametrize("metadata, problem", [
    ({f"k{i}": "v" for i in range(17)}, "17 keys"),
    ({"k" * 65: "v"}, "65 characters"),
    ({"k": "v" * 513}, "513 characters"),
    ({"k": 3}, "string"),
])
def test_metadata_is_held_to_the_clouds_limits(service, metadata, problem):
    client = service.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, store=True, metadata=metadata)
    assert caught.value.body["param"].startswith("metadata") and problem in caught.value.body["message"]
    kept = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, store=True,
                                          metadata={f"k{i}": "v" * 512 for i in range(16)})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.update(kept.id, metadata=metadata)
    assert caught.value.body["param"].startswith("metadata")
    assert [c.id for c in client.chat.completions.list().data] == [kept.id]  # the refused one left nothing


def test_filtered_answers_are_stored_as_the_client_got_them_and_azure_routes_mirror(service):
    """A deployment whose blocklist holds a word of the answer: the stored completion, whole or streamed,
    carries none of the filtered text; a prompt the filter refuses stores nothing. AzureOpenAI stores and lists
    through its deployment routes."""
    client = service.client()
    reference = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=24, seed=8)
    text = reference.choices[0].message.content
    asked = " ".join(m["content"] for m in ASK).lower()
    word = max((w for w in re.findall(r"[A-Za-z]{4,}", text) if w.lower() not in asked), key=len)
    http = api(service)
    assert http.put("/content_filters/words", json={"blocklist": [word]}).status_code == 200
    for name, policy in (("listed", "words"), ("guarded", "Default")):
        assert deploy(http, service.base_url, name, "tiny", capacity=50, policy=policy).status_code == 201
        assert wait_until_provisioned(http, service.base_url, name) == "Succeeded"

    whole = client.chat.completions.create(model="listed", messages=ASK, max_tokens=24, seed=8, store=True)
    assert whole.choices[0].finish_reason == "content_filter"
    chunks = list(client.chat.completions.create(model="listed", messages=ASK, max_tokens=24, seed=8, stream=True,
                                                 store=True))
    sent = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    for answer_id in (whole.id, chunks[0].id):
        raw = http.get(f"/chat/completions/{answer_id}")
        assert raw.status_code == 200 and word.lower() not in raw.text.lower()
        choice = raw.json()["choices"][0]
        assert choice["finish_reason"] == "content_filter"
        assert choice["content_filter_results"]["custom_blocklists"]["filtered"] is True
    assert client.chat.completions.retrieve(whole.id).choices[0].message.content is None
    assert (client.chat.completions.retrieve(chunks[0].id).choices[0].message.content or "") == sent

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="guarded", messages=[{"role": "user", "content": exemplar(
            "violence", "high")}], max_tokens=4, store=True)
    assert caught.value.body["code"] == "content_filter"
    assert {c.id for c in client.chat.completions.list().data} == {whole.id, chunks[0].id}

    root = service.base_url.removesuffix("/v1")
    azure = openai.AzureOpenAI(azure_endpoint=root, api_key="test-key", api_version="2024-10-21")
    kept = azure.chat.completions.create(model="guarded", messages=ASK, max_tokens=4, seed=2, store=True,
                                         metadata={"route": "azure"})
    on_deployment = openai.AzureOpenAI(azure_endpoint=root, azure_deployment="guarded", api_key="test-key",
                                       api_version="2024-10-21")
    assert [c.id for c in on_deployment.chat.completions.list().data] == [kept.id]  # that deployment's only
    stored = azure.chat.completions.retrieve(kept.id)
    assert stored.model == "guarded" and stored.model_extra["request"]["deployment"] == "guarded"
    assert [c.id for c in azure.chat.completions.list(metadata={"route": "azure"}).data] == [kept.id]
    assert azure.chat.completions.delete(kept.id).deleted


def test_export_as_supervised_and_preference_files(service):
    """Twelve stored answers to six prompts: rate, edit, export both ways; each file holds exactly the rows the
    ratings and edits call for, and the supervised one passes the files API's pre-flight check."""
    client = service.client()
    http = api(service)
    made = [client.chat.completions.create(model="tiny", messages=ask(f"Where in {place}?"), max_tokens=6,
                                           seed=seed, store=True, metadata={"set": "export"})
            for place in ("Peru", "Chile", "Laos", "Oman", "Fiji", "Togo") for seed in (1, 2)]
    answer = {m.id: m.choices[0].message.content for m in made}
    good, bad = made[0].id, made[1].id  # two answers to the same prompt
    client.chat.completions.update(good, metadata={"set": "export", "rating": "good"})
    client.chat.completions.update(bad, metadata={"set": "export", "rating": "bad"})
    edited = client.chat.completions.update(made[2].id, metadata={"set": "export"},
                                            extra_body={"edited_content": "Chile's lakes. Which region?"})
    assert edited.model_extra["edited_content"] == "Chile's lakes. Which region?"
    assert edited.choices[0].message.content == answer[made[2].id]  # the original stays

    supervised = http.post("/stored_completions/export", json={"format": "supervised",
                                                               "metadata": {"set": "export"}})
    assert supervised.status_code == 200, supervised.text
    body = supervised.json()
    assert body["object"] == "file" and body["purpose"] == "fine-tune" and body["examples"] == 11
    assert body["left_out"] == {"rated bad": 1}
    rows = [json.loads(line) for line in client.files.content(body["id"]).text.splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [
        answer[m.id] if m.id != made[2].id else "Chile's lakes. Which region?" for m in made if m.id != bad]
    assert rows[0]["messages"][:-1] == ask("Where in Peru?")
    report = http.get(f"/files/{body['id']}/report", params={"model": "tiny"}).json()
    assert report["ok"] is True and report["files"][0]["examples"] == 11, report

    preference = client.post("/stored_completions/export", cast_to=object,
                             body={"format": "preference", "ids": [m.id for m in made[:4]]})
    assert preference["examples"] == 2 and preference["left_out"] == {"neither rated nor edited": 1}
    pairs = [json.loads(line) for line in client.files.content(preference["id"]).text.splitlines()]
    assert pairs == [
        {"input": {"messages": ask("Where in Peru?")},
         "preferred_output": [{"role": "assistant", "content": answer[good]}],
         "non_preferred_output": [{"role": "assistant", "content": answer[bad]}]},
        {"input": {"messages": ask("Where in Chile?")},
         "preferred_output": [{"role": "assistant", "content": "Chile's lakes. Which region?"}],
         "non_preferred_output": [{"role": "assistant", "content": answer[made[2].id]}]}]

    for request, param, says in (
            ({"format": "preference", "ids": [made[4].id]}, "format", "a preference pair needs"),
            ({"format": "supervised", "ids": [bad]}, "format", "1 rated bad"),
            ({"format": "supervised", "model": "other"}, None, "no stored chat completions match"),
            ({"format": "supervised", "ids": ["chatcmpl-nothing"]}, "ids", "chatcmpl-nothing"),
            ({"format": "dpo"}, "format", "supervised"),
            ({"format": "supervised", "filename": "out.csv"}, "filename", "")):
        refused = http.post("/stored_completions/export", json=request)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
        assert says in refused.json()["error"]["message"]
    assert len(client.files.list().data) == 2  # the refused exports made no file


def test_the_storage_report_lists_stored_completions_and_clean_deletes_them(capsys, service, monkeypatch):
    from test_cli import tunelab

    client = service.client()
    kept = [client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, store=True).id
            for _ in range(2)]
    assert client.get("/storage", cast_to=object)["stored_completions"] == [{"id": i, "model": "tiny"} for i in kept]
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    code, output = tunelab(capsys, "clean", "--stored-completions", "--yes")
    assert code == 0, output
    assert [line.split()[-1] for line in output.splitlines() if line.startswith("Deleted ")] == kept
    assert client.chat.completions.list().data == []
    assert client.get("/storage", cast_to=object)["stored_completions"] == []
