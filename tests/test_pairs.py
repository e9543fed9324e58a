"""Preference pairs from comparisons: the rule on handmade reports (pass and fail, checks that do not apply,
filtered and errored answers, several reports pooled, the cap, the same output every time), edited lines checked
by line and field; then through the API on real comparisons of the tiny model (a check that splits its answers),
its refusals, and the `tunelab pairs` command on the same comparisons."""

from __future__ import annotations

import json
import time

import openai
import pytest

from test_cli import tunelab
from tunelab.errors import InvalidRequest
from tunelab.evaluate.pairs import mine, validate_rows

SUMMARIES = {"policy": {"check": "policy", "title": "Says what the assistant must not", "higher_is_better": False},
             "engagement": {"check": "engagement", "title": "Ends with a question", "higher_is_better": True},
             "redirect": {"check": "redirect", "title": "Steers back to travel", "higher_is_better": True},
             "length": {"check": "length", "title": "Words in the answer", "higher_is_better": None},
             "style": {"check": "style", "title": "Sounds like the training replies", "higher_is_better": True}}


def answer(text, policy=False, engagement=True, redirect=None, *, finish="stop", error=None, reason=None):
    return {"text": text, "finish_reason": finish, "error": error,
            "scores": {"policy": {"value": policy, "reason": reason if policy else None},
                       "engagement": {"value": engagement, "reason": text[-20:]},
                       "redirect": {"value": redirect, "reason": None},
                       "length": {"value": len(text.split()), "reason": None},
                       "style": {"value": 0.5, "reason": None}}}


def report(prompts, *, system="You are a travel assistant.", seed=42, candidates=("base", "ft"), question_only=False):
    """A report as `compare.report` builds it: `prompts` maps an id to {candidate: answer}."""
    rows = []
    for pid, answers in prompts.items():
        row = {"id": pid, "kind": "general", "question": f"Question {pid}?", "answers": answers}
        if not question_only:
            row["messages"] = [{"role": "user", "content": f"Question {pid}?"}]
        rows.append(row)
    return {"settings": {"system": system, "seed": seed, "prompts": len(rows)},
            "candidates": [{"name": c, "checks": {k: {**s, "mean": 0.5, "count": 1} for k, s in SUMMARIES.items()}}
                           for c in candidates],
            "prompts": rows}


def test_a_passing_answer_is_preferred_to_a_failing_one_and_the_line_is_the_cloud_format():
    mined = mine([report({"rome": {"base": answer("Stay at Hotel Roma. Enjoy!", policy=True, engagement=False,
                                                     reason="hotel: 'Hotel Roma'"),
                                   "ft": answer("Trastevere is lovely. What do you like?")}})], names=["eval-1"])
    assert mined.rows() == [{
        "input": {"messages": [{"role": "system", "content": "You are a travel assistant."},
                               {"role": "user", "content": "Question rome?"}]},
        "preferred_output": [{"role": "assistant", "content": "Trastevere is lovely. What do you like?"}],
        "non_preferred_output": [{"role": "assistant", "content": "Stay at Hotel Roma. Enjoy!"}]}]
    pair = mined.pairs[0]
    assert (pair.preferred.candidate, pair.non_preferred.candidate) == ("ft", "base")
    assert pair.preferred.evaluation == "eval-1" and pair.preferred.seed == 42
    assert [(f.check, f.reason) for f in pair.failed] == [("policy", "hotel: 'Hotel Roma'"),
                                                           ("engagement", "t Hotel Roma. Enjoy!")]
    # the default checks: yes/no with a direction; length (no direction) and style (a number) do not judge
    # redirect (off-topic prompts only) judged none of these answers
    assert mined.summary["checks"] == ["policy", "engagement"]
    assert mined.summary["failures"] == {"policy": 1, "engagement": 1}
    assert json.loads(mined.jsonl().decode().splitlines()[0]) == mined.rows()[0]
    assert "why" not in mined.jsonl().decode() and "failed" not in mined.jsonl().decode()


def test_only_the_chosen_checks_judge_and_a_check_that_does_not_apply_does_not_count():
    prompts = {"q": {"base": answer("Hotel Roma is the best. Where next?", policy=True),
                     "ft": answer("Rome is busy in May.", engagement=False)}}
    # by policy alone ft passes; by engagement alone base passes
    assert mine([report(prompts)], checks=["policy"]).pairs[0].preferred.candidate == "ft"
    assert mine([report(prompts)], checks=["engagement"]).pairs[0].preferred.candidate == "base"
    both = mine([report(prompts)])  # each fails one: no passing answer, no pair
    assert both.pairs == [] and both.summary["prompts_with_failing"] == 1
    assert both.why_none() == ("no prompt had both a passing and a failing answer: 1 prompts, 0 with a passing "
                               "answer, 1 with a failing answer (checks: policy, engagement)")
    # redirect applies to neither (None): judged on redirect only, nothing is judged at all
    only_redirect = mine([report(prompts)], checks=["redirect"])
    assert only_redirect.pairs == [] and only_redirect.summary["excluded"]["unjudged"] == 2
    # an off-topic prompt: redirect applies, and joins the default checks
    off = {"q": {"base": answer("Here is a sorting function. Anything else?", redirect=False),
                 "ft": answer("That is beyond me, but where would you like to travel?", redirect=True)}}
    steered = mine([report(off)])
    assert steered.summary["checks"] == ["policy", "engagement", "redirect"]
    assert [f.check for f in steered.pairs[0].failed] == ["redirect"] and steered.pairs[0].preferred.candidate == "ft"
    # redirect None beside a failing policy: the failure alone decides
    assert [f.check for f in mine([report(prompts)], checks=["policy", "redirect"]).pairs[0].failed] == ["policy"]


def test_checks_that_cannot_pass_or_fail_are_refused_naming_the_field():
    rep = report({"q": {"base": answer("A?"), "ft": answer("B.", engagement=False)}})
    for check, why in (("length", "has no better direction"), ("style", "scores more than yes or no"),
                       ("vibes", "has no check")):
        with pytest.raises(InvalidRequest, match=why) as refused:
            mine([rep], checks=[check])
        assert refused.value.param == "checks"
    with pytest.raises(InvalidRequest) as none:
        mine([rep], max_per_prompt=0)
    assert none.value.param == "max_per_prompt"


def test_filtered_errored_and_empty_answers_are_never_preferred():
    prompts = {"q": {"a": answer("", finish="content_filter"),  # its checks would pass: it must not count
                     "b": answer("Partial?", finish="error", error="engine stopped"),
                     "c": answer("   "),
                     "d": answer("Hotel Roma. Where next?", policy=True)}}
    mined = mine([report(prompts, candidates="abcd")])
    assert mined.pairs == [] and mined.summary["excluded"] == {"filtered": 1, "errors": 1, "empty": 1, "unjudged": 0}
    prompts["q"]["e"] = answer("Rome in spring is mild. Do you like walking?")
    mined = mine([report(prompts, candidates="abcde")])
    assert [(p.preferred.candidate, p.non_preferred.candidate) for p in mined.pairs] == [("e", "d")]


def test_several_reports_pool_their_answers_by_prompt_and_conversation():
    seed1 = report({"q1": {"ft": answer("Hotel Roma. Where next?", policy=True)},
                    "q2": {"ft": answer("Kyoto in autumn. When do you go?")}}, seed=1, candidates=["ft"])
    seed2 = report({"q1": {"ft": answer("Rome is lovely. What do you enjoy?")},
                    "q2": {"ft": answer("Try Ryokan Sakura, a ryokan. Which month?", policy=True)}},
                   seed=2, candidates=["ft"])
    mined = mine([seed1, seed2], names=["eval-a", "eval-b"])
    assert mined.summary["prompts"] == 2 and mined.summary["pairs"] == 2 and mined.summary["prompts_with_pair"] == 2
    q1, q2 = mined.pairs
    assert (q1.preferred.evaluation, q1.preferred.seed, q1.non_preferred.seed) == ("eval-b", 2, 1)
    assert (q2.preferred.evaluation, q2.non_preferred.evaluation) == ("eval-a", "eval-b")
    swapped = mine([seed2, seed1], names=["eval-b", "eval-a"])  # the order they are named in changes nothing
    assert [(p.row(), p.preferred, p.non_preferred) for p in swapped.pairs] == \
        [(p.row(), p.preferred, p.non_preferred) for p in mined.pairs]
    # another system message is another conversation: its answers do not pool with these
    other = report({"q1": {"ft": answer("Rome is lovely. What do you enjoy?")}}, system="Be brief.", candidates=["ft"])
    apart = mine([seed1, other])
    assert apart.pairs == [] and apart.summary["prompts"] == 3
    # a report from before `messages` holds the question: the same conversation when there is no more to it
    old = report({"q1": {"ft": answer("Rome is lovely. What do you enjoy?")}}, candidates=["ft"], question_only=True)
    assert len(mine([seed1, old]).pairs) == 1


def test_each_failing_answer_gets_a_passing_one_in_turn_up_to_the_cap_and_the_output_is_deterministic():
    good = [answer(f"Good answer {i}. Where to?") for i in range(2)]
    bad = [answer(f"Hotel Number{i} is great. Where to?", policy=True) for i in range(5)]
    answers = {f"g{i}": a for i, a in enumerate(good)} | {f"b{i}": a for i, a in enumerate(bad)}
    answers["dup"] = answer("Hotel Number0 is great.  Where to?", policy=True)  # the same text twice: one pair
    answers["odd"] = answer("Good answer 0.\nWhere to?", policy=True)  # judged both ways: never the loser
    rep = report({"q": answers}, candidates=list(answers))
    mined = mine([rep])
    assert [(p.preferred.candidate, p.non_preferred.candidate) for p in mined.pairs] == [
        ("g0", "b0"), ("g1", "b1"), ("g0", "b2"), ("g1", "b3"), ("g0", "b4")]
    capped = mine([rep], max_per_prompt=2)
    assert [p.non_preferred.candidate for p in capped.pairs] == ["b0", "b1"] and capped.summary["capped"] == 3
    assert mine([rep]).jsonl() == mined.jsonl()  # the same reports give the same file, byte for byte
    assert mined.summary["preferred_cut_off"] == 0
    answers["g0"]["finish_reason"] = "length"  # cut off at max_tokens: still preferred, but counted and marked
    cut = mine([report({"q": answers}, candidates=list(answers))])
    assert cut.summary["preferred_cut_off"] == 3 and cut.pairs[0].preferred.finish_reason == "length"


def test_edited_lines_are_checked_by_line_and_field():
    good = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Hello! Where to?"}],
            "non_preferred_output": [{"role": "assistant", "content": "Book Hotel Roma."}]}
    old_names = {"input": good["input"], "preferred_completion": good["preferred_output"],
                 "non_preferred_completion": good["non_preferred_output"]}
    assert validate_rows([good, old_names]) == [good, good]
    cases = [
        ({**good, "preferred_output": [{"role": "assistant", "content": " "}]},
         "line 2: `preferred_output` [0].content is empty"),
        ({**good, "non_preferred_output": []}, "line 2: `non_preferred_output` must be a list of exactly one"),
        ({**good, "input": {"messages": [{"role": "robot", "content": "Hi"}]}}, "line 2: input.messages[0]"),
        ({**good, "why": "policy"}, "line 2: unknown key 'why'"),
        ({**good, "preferred_output": good["non_preferred_output"]}, "line 2: `preferred_output` is the same answer"),
        ("text", "line 2: a preference line is an object"),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidRequest) as refused:
            validate_rows([good, bad])
        assert refused.value.message.startswith(message) and refused.value.param == "pairs[1]"
    with pytest.raises(InvalidRequest, match="non-empty list"):
        validate_rows([])


# ---------------------------------------------------------------------------------------------------- the API

SPLIT_CHECK = """
from tunelab.evaluate.checks import Score, check

@check("even_words", "An even number of words")
def even_words(case):
    count = len(case.answer.split())
    return Score(count % 2 == 0, f"{count} words")
"""

PROMPTS = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Where should I go in month {i}?"}]}
           for i in range(8)]


@pytest.fixture
def split_service(service, tmp_path, monkeypatch):
    """The service with a check that passes about half of the tiny model's answers (an even number of words)."""
    (tmp_path / "split_checks.py").write_text(SPLIT_CHECK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(service.app.state.service.settings, "checks", ["split_checks:even_words"])
    return service


def wait_for_evaluation(client, evaluation_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get(f"/evaluations/{evaluation_id}", cast_to=object)
        if found["status"] != "running":
            return found
        time.sleep(0.2)
    raise AssertionError(f"evaluation {evaluation_id} still running")


def comparisons(client, seeds=(1, 2, 3)) -> list[dict]:
    created = [client.post("/evaluations", cast_to=object, body={
        "candidates": ["tiny"], "prompts": PROMPTS, "system": "You are a travel assistant.", "seed": seed,
        "max_tokens": 10, "checks": ["even_words", "length"]})["id"] for seed in seeds]
    found = [wait_for_evaluation(client, i) for i in created]
    assert all(f["status"] == "completed" for f in found), [f["error"] for f in found]
    return found


def expected_pairs(found: list[dict]) -> dict[str, tuple[set, set]]:
    """Per prompt, the passing and failing texts, straight from the reports."""
    sides: dict[str, tuple[set, set]] = {}
    for evaluation in found:
        for prompt in evaluation["report"]["prompts"]:
            text = prompt["answers"]["tiny"]["text"]
            passing = prompt["answers"]["tiny"]["scores"]["even_words"]["value"]
            sides.setdefault(prompt["id"], (set(), set()))[0 if passing else 1].add(text)
    return sides


def test_pairs_from_real_comparisons_through_the_api_and_the_command(split_service, capsys, tmp_path, monkeypatch):
    client = split_service.client()
    found = comparisons(client)
    assert found[0]["report"]["prompts"][0]["messages"] == PROMPTS[0]["messages"]  # the report keeps the input
    sides = expected_pairs(found)
    with_pair = [p for p, (good, bad) in sides.items() if good and bad - good]
    assert with_pair, "the tiny model's answers should split on an even word count somewhere"
    mined = client.post("/pairs", cast_to=object, body={"evaluations": [f["id"] for f in found]})
    assert mined["object"] == "list" and mined["file"] is None
    assert mined["summary"]["checks"] == ["even_words"]  # length has no better direction
    assert mined["summary"]["prompts"] == 8 and mined["summary"]["reports"] == 3
    assert mined["summary"]["prompts_with_pair"] == len(with_pair)
    assert mined["summary"]["pairs"] == sum(len(sides[p][1]) for p in with_pair)
    for pair in mined["data"]:
        good, bad = sides[pair["prompt_id"]]
        row = pair["row"]
        assert row["input"]["messages"][0] == {"role": "system", "content": "You are a travel assistant."}
        assert row["preferred_output"][0]["content"] in good and row["non_preferred_output"][0]["content"] in bad
        assert pair["failed"][0]["check"] == "even_words" and pair["failed"][0]["reason"].endswith("words")
        assert pair["preferred"]["evaluation"] in {f["id"] for f in found} and pair["preferred"]["seed"] in (1, 2, 3)

    saved = client.post("/pairs", cast_to=object, body={"evaluations": [f["id"] for f in found],
                                                        "max_per_prompt": 1, "save": True, "filename": "mined.jsonl"})
    assert saved["summary"]["pairs"] == len(with_pair) == len(saved["data"])
    file = client.files.retrieve(saved["file"]["id"])
    assert file.purpose == "fine-tune" and file.filename == "mined.jsonl"
    lines = [json.loads(line) for line in client.files.content(file.id).text.splitlines()]
    assert lines == [p["row"] for p in saved["data"]]

    # edited pairs from a reviewer: saved as they were sent
    edited = [dict(p["row"]) for p in mined["data"][:2]]
    edited[0] = {**edited[0], "preferred_output": [{"role": "assistant", "content": "Lisbon. What do you enjoy?"}]}
    made = client.post("/pairs/files", cast_to=object, body={"pairs": edited, "filename": "reviewed.jsonl"})
    assert made["object"] == "file" and made["purpose"] == "fine-tune"
    assert [json.loads(x) for x in client.files.content(made["id"]).text.splitlines()] == edited

    # the same through `tunelab pairs`: the file written, the summary printed, the upload on the service
    monkeypatch.setenv("TUNELAB_BASE_URL", split_service.base_url.removesuffix("/v1"))
    out = tmp_path / "pairs.jsonl"
    code, output = tunelab(capsys, "pairs", *[f["id"] for f in found], "--out", str(out), "--max-per-prompt", "1",
                           "--upload")
    assert code == 0, output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(with_pair)
    assert "Prompts with a pair" in output and "even_words" in output
    uploaded = next(f for f in client.files.list() if f.filename == "pairs.jsonl")
    assert [json.loads(x) for x in client.files.content(uploaded.id).text.splitlines()] == lines
    assert uploaded.id in output

    code, output = tunelab(capsys, "pairs", found[0]["id"], "--out", str(tmp_path / "x.jsonl"), "--checks", "length")
    assert code == 2 and output.strip().startswith("error: --checks: ") and "Traceback" not in output
    code, output = tunelab(capsys, "pairs", found[0]["id"], "--out", str(tmp_path / "x.jsonl"),
                           "--max-per-prompt", "0")
    assert code == 2 and "--max-per-prompt" in output
    code, output = tunelab(capsys, "pairs", "eval-missing", "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "eval-missing" in output
    assert not (tmp_path / "x.jsonl").exists()


def test_the_pairs_api_refuses_what_it_cannot_do_and_writes_no_file(split_service):
    client = split_service.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.post("/pairs", cast_to=object, body={"evaluations": ["eval-missing"]})
    assert "eval-missing" in unknown.value.body["message"]
    running = client.post("/evaluations", cast_to=object, body={
        "candidates": ["tiny"], "max_tokens": 16, "checks": ["even_words"],
        "prompts": [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Tell me about place {i}."}]}
                    for i in range(6)]})
    with pytest.raises(openai.BadRequestError) as busy:
        client.post("/pairs", cast_to=object, body={"evaluations": [running["id"]]})
    assert "still running" in busy.value.body["message"] and busy.value.body["param"] == "evaluations"
    wait_for_evaluation(client, running["id"])
    # one answer per prompt: nothing to pair with, and the reason is said
    with pytest.raises(openai.BadRequestError) as none:
        client.post("/pairs", cast_to=object, body={"evaluations": [running["id"]], "save": True})
    assert none.value.body["message"].startswith("no prompt had both a passing and a failing answer: 6 prompts, ")
    with pytest.raises(openai.BadRequestError) as check:
        client.post("/pairs", cast_to=object, body={"evaluations": [running["id"]], "checks": ["length"]})
    assert check.value.body["param"] == "checks"
    with pytest.raises(openai.BadRequestError) as line:
        client.post("/pairs/files", cast_to=object, body={"pairs": [
            {"input": {"messages": [{"role": "user", "content": "Hi"}]},
             "preferred_output": [{"role": "assistant", "content": "Hello?"}],
             "non_preferred_output": [{"role": "user", "content": "Hi"}]}]})
    assert line.value.body["message"].startswith("line 1: `non_preferred_output` [0].role is 'user'")
    assert line.value.body["param"] == "pairs[0]"
    with pytest.raises(openai.BadRequestError) as name:
        client.post("/pairs/files", cast_to=object, body={"pairs": [], "filename": "x.txt"})
    assert name.value.body["param"] in ("pairs", "filename")
    assert list(client.files.list()) == []  # nothing half-made
