"""Deployments in Azure's shape, their token-rate limits, and chat through `OpenAI` and `AzureOpenAI` clients."""

from __future__ import annotations

import time

import httpx2 as httpx
import openai
import pytest

from conftest import serve_in_thread
from test_chat import ASK
from tunelab.deploy.limits import RateLimited, RateLimiter, duration
from tunelab.errors import InvalidRequest


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_limiter_admits_up_to_the_limits_and_says_how_long_to_wait():
    clock = Clock()
    limiter = RateLimiter(capacity=1, clock=clock)  # 1,000 tokens and 6 requests a minute, 1 per 10 s
    charge, headers = limiter.admit(600)
    assert headers["x-ratelimit-limit-tokens"] == "1000" and headers["x-ratelimit-remaining-tokens"] == "400"
    assert headers["x-ratelimit-limit-requests"] == "6" and headers["x-ratelimit-remaining-requests"] == "5"
    with pytest.raises(RateLimited) as burst:  # a second request inside the 10-second window
        limiter.admit(10)
    assert burst.value.status == 429 and burst.value.type == "requests" and burst.value.retry_after == pytest.approx(10)
    clock.now += burst.value.retry_after
    with pytest.raises(RateLimited) as tokens:  # 600 + 500 > 1,000 within the minute
        limiter.admit(500)
    assert tokens.value.type == "tokens" and tokens.value.retry_after == pytest.approx(50)
    assert tokens.value.headers["x-ratelimit-remaining-tokens"] == "400"
    limiter.settle(charge, 300)  # it really used 300
    limiter.admit(500)
    clock.now += 60
    _, headers = limiter.admit(900)
    assert int(headers["x-ratelimit-remaining-tokens"]) >= 0
    with pytest.raises(InvalidRequest) as never:
        limiter.admit(1001)
    assert never.value.param == "max_tokens"
    assert [duration(s) for s in (0.02, 1, 59.2, 360)] == ["20ms", "1s", "1m0s", "6m0s"]


def wait_until_provisioned(client_http, base_url, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client_http.get(f"{base_url}/deployments/{name}").json()["properties"]["provisioningState"]
        if state != "Creating":
            return state
        time.sleep(0.1)
    raise AssertionError(f"{name} still Creating")


def deploy(http, base_url, name, model, capacity=5, policy="Default"):
    return http.put(f"{base_url}/deployments/{name}", json={
        "sku": {"name": "Standard", "capacity": capacity},
        "properties": {"model": {"format": "OpenAI", "name": model}, "raiPolicyName": policy}})


def test_deploy_base_and_fine_tune_then_chat_through_both_clients(tuned):
    service, model = tuned
    http = httpx.Client(headers={"Authorization": "Bearer test-key"})
    for name, target in (("base-travel", "tiny"), ("ft-travel", model)):
        created = deploy(http, service.base_url, name, target)
        assert created.status_code == 201
        body = created.json()
        assert body["name"] == name and body["sku"] == {"name": "Standard", "capacity": 5}
        assert body["properties"]["provisioningState"] == "Creating"
        assert body["properties"]["model"]["name"] == target and body["properties"]["raiPolicyName"] == "Default"
    assert wait_until_provisioned(http, service.base_url, "base-travel") == "Succeeded"
    assert wait_until_provisioned(http, service.base_url, "ft-travel") == "Succeeded"
    listed = http.get(f"{service.base_url}/deployments").json()["value"]
    assert [d["name"] for d in listed] == ["base-travel", "ft-travel"]

    client = service.client()
    raw = client.chat.completions.with_raw_response.create(model="ft-travel", messages=ASK, max_tokens=8, seed=4)
    assert raw.headers["x-ratelimit-limit-tokens"] == "5000" and raw.headers["x-ratelimit-limit-requests"] == "30"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 5000
    direct = client.chat.completions.create(model=model, messages=ASK, max_tokens=8, seed=4)
    assert raw.parse().choices[0].message.content == direct.choices[0].message.content  # the same model

    azure = openai.AzureOpenAI(azure_endpoint=service.base_url.removesuffix("/v1"), api_key="test-key",
                               api_version="2024-10-21")
    answer = azure.chat.completions.create(model="ft-travel", messages=ASK, max_tokens=8, seed=4)
    assert answer.choices[0].message.content == direct.choices[0].message.content
    chunks = list(azure.chat.completions.create(model="base-travel", messages=ASK, max_tokens=5, stream=True,
                                              seed=4))  # unseeded, a random answer is sometimes filtered
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        azure.chat.completions.create(model="no-such-deployment", messages=ASK, max_tokens=2)

    # Delete rules: a deployed model stays; the deployment goes first.
    with pytest.raises(openai.BadRequestError) as caught:
        client.models.delete(model)
    assert "ft-travel" in caught.value.message
    assert http.delete(f"{service.base_url}/deployments/ft-travel").status_code == 204
    assert http.get(f"{service.base_url}/deployments/ft-travel").status_code == 404
    assert client.models.delete(model).deleted


def test_over_the_limit_is_a_429_that_the_sdk_retries(service):
    http = httpx.Client(headers={"Authorization": "Bearer test-key"})
    deploy(http, service.base_url, "small", "tiny", capacity=1)  # 1 request per 10 s
    assert wait_until_provisioned(http, service.base_url, "small") == "Succeeded"
    client = service.client(max_retries=0)
    client.chat.completions.create(model="small", messages=ASK, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="small", messages=ASK, max_tokens=4)
    headers = caught.value.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 10_000 and int(headers["Retry-After"]) <= 10
    assert headers["x-ratelimit-remaining-requests"] == "5"
    started = time.monotonic()
    patient = service.client(max_retries=3)
    assert patient.chat.completions.create(model="small", messages=ASK, max_tokens=4).choices
    assert time.monotonic() - started >= int(headers["retry-after-ms"]) / 1000 - 1
    with pytest.raises(openai.BadRequestError) as never:  # max_tokens alone over the limit: known before any work
        patient.chat.completions.create(model="small", messages=ASK, max_tokens=1001)
    assert never.value.body["param"] == "max_tokens"


def test_bad_deployments_are_refused_and_deployments_come_back_after_a_restart(monkeypatch, tiny_model, home):
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    import_model(tiny_model, "tiny")
    http = httpx.Client(headers={"Authorization": "Bearer test-key"})
    with serve_in_thread() as running:
        cases = [("x", "tiny", 5, "Default", 400, "name"), ("ok-name", "tiny", 0, "Default", 400, "sku.capacity"),
                 ("ok-name", "nope", 5, "Default", 404, "model"),
                 ("ok-name", "tiny", 5, "Strict", 400, "properties.raiPolicyName")]
        for name, model, capacity, policy, status, param in cases:
            response = deploy(http, running.base_url, name, model, capacity, policy)
            assert response.status_code == status and response.json()["error"]["param"] == param, response.json()
        assert deploy(http, running.base_url, "keep", "tiny").status_code == 201
        assert deploy(http, running.base_url, "keep", "tiny").status_code == 400  # the name is taken
        assert wait_until_provisioned(http, running.base_url, "keep") == "Succeeded"
    with serve_in_thread() as running:
        assert wait_until_provisioned(http, running.base_url, "keep") == "Succeeded"
        answer = running.client().chat.completions.create(model="keep", messages=ASK, max_tokens=3)
        assert answer.usage.completion_tokens == 3
