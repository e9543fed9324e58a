"""The content filter: normalisation, the classifier's measured quality on the labelled set, policies, and the
Azure shapes of a filtered prompt and a filtered completion (streaming too) through the SDK."""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest

from conftest import TRAVEL, ROOT
from test_chat import ASK
from test_deployments import deploy, wait_until_provisioned
from tunelab.safety.classifier import EXEMPLARS, Classifier, load_exemplars, normalise
from tunelab.safety.policy import Policy

EVAL = ROOT / "tests" / "data" / "content_filter_eval.jsonl"


def exemplar(category: str, severity: str) -> str:
    return next(e.text for e in load_exemplars(EXEMPLARS) if e.category == category and e.severity == severity)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.default()


def test_normalisation_undoes_hidden_and_look_alike_characters():
    assert normalise("I will\u200b hu\u00adrt\u2060 you") == "I will hurt you"
    assert normalise("ｋｉｌｌ　them") == "kill them"
    assert normalise(" a \n\t b ") == "a b"


def test_the_classifier_blocks_harm_and_never_clean_travel_chat(classifier):
    """The measured floor (docs/service.md has the full figures): clean chat almost never blocked (at most 1 of
    the 74 clean items), most medium/high harm caught."""
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    blocked = {"safe": 0, "harm": 0}
    harmful = 0
    for row in rows:
        found = classifier.classify(row["text"])
        if row["category"] == "safe":
            blocked["safe"] += any(s in ("medium", "high") for s in found.values())
        elif row["severity"] in ("medium", "high"):
            harmful += 1
            blocked["harm"] += found[row["category"]] in ("medium", "high")
    assert blocked["safe"] <= 1
    assert blocked["harm"] / harmful >= 0.7


def test_travel_questions_behind_the_lab_system_message_are_rarely_blocked(classifier):
    """The prompt filter sees the system message and the question together. The filter holds no travel data
    (its everyday chat exemplars cover many topics), so this is chat it was not built from: docs/benchmarks.md
    has the measured 4 of 73 (0 when a travel corpus cut from train.jsonl was part of the filter)."""
    SYSTEM = (TRAVEL / "system.txt").read_text().strip()

    questions = [m["content"] for line in (TRAVEL / "valid.jsonl").read_text().splitlines()
                 for m in json.loads(line)["messages"] if m["role"] == "user"]
    questions += [json.loads(line)["messages"][-1]["content"] for line in
                  (TRAVEL / "prompts.jsonl").read_text().splitlines() if json.loads(line)["kind"] != "off_topic"]
    blocked = [q for q in questions if any(s in ("medium", "high")
                                           for s in classifier.classify(f"{SYSTEM}\n{q}").values())]
    assert len(blocked) <= 4 and len(questions) == 73


def test_hidden_characters_do_not_slip_past(classifier):
    text = exemplar("violence", "high")
    hidden = "\u200b".join(text[:12]) + text[12:]
    assert classifier.classify(hidden)["violence"] == classifier.classify(text)["violence"] == "high"


def test_policies_set_thresholds_for_prompts_and_completions_separately(classifier):
    threat = exemplar("violence", "high")
    blocked, results = Policy("Default").check(threat, "prompt", classifier)
    assert blocked and results["violence"] == {"filtered": True, "severity": "high"}
    assert results["hate"]["filtered"] is False
    lenient = Policy("lenient", prompt={c: "off" for c in ("hate", "sexual", "violence", "self_harm")})
    assert lenient.check(threat, "prompt", classifier)[0] is False
    assert lenient.check(threat, "completion", classifier)[0] is True
    mild = exemplar("hate", "low")
    assert Policy("Default").check(mild, "prompt", classifier)[0] is False
    strict = Policy("strict", prompt={"hate": "low", "sexual": "medium", "violence": "medium", "self_harm": "medium"})
    assert strict.check(mild, "prompt", classifier)[0] is True
    listed = Policy("words", blocklist=["Lisbon"])
    blocked, results = listed.check("Try LISBON in May!", "completion", classifier)
    assert blocked and results["custom_blocklists"]["filtered"]
    assert Policy("Default").check("Lisbon is lovely in May. Do you like hills?", "completion", classifier)[0] is False


def test_a_filtered_prompt_and_a_filtered_completion_in_azures_shapes(tuned):
    service, model = tuned
    http = httpx.Client(headers={"Authorization": "Bearer test-key"})
    assert deploy(http, service.base_url, "guarded", model).status_code == 201
    assert wait_until_provisioned(http, service.base_url, "guarded") == "Succeeded"
    client = service.client()

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="guarded", max_tokens=5,
                                       messages=[{"role": "user", "content": exemplar("violence", "high")}])
    error = caught.value.body
    assert error["code"] == "content_filter" and error["param"] == "prompt"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}

    clean = client.chat.completions.create(model="guarded", messages=ASK, max_tokens=12, seed=8).to_dict()
    assert clean["prompt_filter_results"][0]["content_filter_results"]["hate"] == {"filtered": False,
                                                                                   "severity": "safe"}
    assert set(clean["choices"][0]["content_filter_results"]) == {"hate", "sexual", "violence", "self_harm"}
    text = clean["choices"][0]["message"]["content"]

    # A custom policy whose blocklist holds a word of that very answer filters the completion.
    word = max(text.split(), key=len)
    policy = http.put(f"{service.base_url}/content_filters/no-{len(word)}", json={"blocklist": [word]})
    assert policy.status_code == 200 and policy.json()["completion"]["violence"] == "medium"
    assert deploy(http, service.base_url, "listed", model, policy=f"no-{len(word)}").status_code == 201
    assert wait_until_provisioned(http, service.base_url, "listed") == "Succeeded"
    filtered = client.chat.completions.create(model="listed", messages=ASK, max_tokens=12, seed=8).to_dict()
    choice = filtered["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
    assert choice["content_filter_results"]["custom_blocklists"]["filtered"] is True
    chunks = [c.to_dict() for c in client.chat.completions.create(model="listed", messages=ASK, max_tokens=12,
                                                                  seed=8, stream=True)]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert word not in streamed  # nothing past the flagged text leaves the server
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "content_filter"
    assert http.delete(f"{service.base_url}/content_filters/no-{len(word)}").status_code == 400  # in use
    assert http.delete(f"{service.base_url}/content_filters/Default").status_code == 400
