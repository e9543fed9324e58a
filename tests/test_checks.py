"""Answer checks: each built-in catches its case and passes clean text; a user's own check plugs in through the
same seam as the built-ins (module:name, a file, an entry point, register) and a bad one is named on one line; the
travel example's checks, loaded through that seam, catch their cases; the package holds no travel data or rules;
`run` aggregates per candidate into plain JSON. Style and reference use the real embedder."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tunelab.errors import InvalidRequest, NotFound
from tunelab.evaluate import checks as registry
from tunelab.evaluate.checks import (BUILT_IN, Case, ForbiddenTopics, PolicyCheck, Score, StyleCheck, check, checks,
                                     choose, get, load, register, run, words)
from conftest import ROOT, TRAVEL

# The travel example's own checks, loaded the way `tunelab lab travel` loads them.
policy = load(f"{TRAVEL / 'checks.py'}:policy", "--checks")
redirect = load(f"{TRAVEL / 'checks.py'}:redirect", "--checks")


@pytest.fixture
def isolated(monkeypatch):
    """A private copy of the registry, so a test's checks do not leak into others."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def answer(text: str, **fields) -> Case:
    return Case(prompt="Where in Rome should I stay?", answer=text, **fields)


def assistant_replies(*files: str) -> list[str]:
    return [m["content"] for f in files for line in (TRAVEL / f).read_text().splitlines()
            for m in json.loads(line)["messages"] if m["role"] == "assistant"]


# ---------------------------------------------------------------------------------------------------- registry


def test_built_ins_are_registered_in_order_with_their_direction():
    assert [c.name for c in checks()] == ["engagement", "style", "reference", "length"]
    assert [load(spec, "test") for spec in BUILT_IN] == checks()  # loaded through the seam outsiders use
    assert policy.higher_is_better is False and redirect.higher_is_better is True  # the travel example's
    assert get("engagement").higher_is_better is True
    assert get("length").higher_is_better is None
    assert all(c.title for c in [*checks(), policy, redirect])


def test_unknown_and_duplicate_names_are_refused(isolated):
    with pytest.raises(NotFound, match="known checks: engagement, style"):
        get("nope")
    assert register(policy) is register(policy)  # the same check again is not a second one
    with pytest.raises(InvalidRequest, match="already registered"):
        register(PolicyCheck(policy.topics))
    stricter = register(PolicyCheck(ForbiddenTopics({"hotel": [r"(?i)hotel"]})), replace=True)
    assert get("policy") is stricter


# The example from docs/evaluate.md, "Adding a check".
SEASON = re.compile(r"\b(?:spring|summer|autumn|fall|winter|monsoon|dry season|January|February|March|April|May"
                    r"|June|July|August|September|October|November|December)\b", re.I)


def test_a_user_check_plugs_in_like_the_built_ins(isolated):
    @check("season", "Says when to go")
    def season(case: Case) -> Score:
        found = SEASON.search(case.answer)
        return Score(bool(found), found.group(0) if found else None)

    register(season)
    assert get("season") is season and checks()[-1] is season
    reports = run({"tuned": [answer("Go in May, when the jacaranda blooms. Which sights call to you?"),
                             answer("Lisbon is hilly. Comfy shoes help.")]},
                  [get("season"), get("engagement")])
    summary = reports[0].to_dict()["summary"]
    assert summary["season"] == {"check": "season", "title": "Says when to go", "higher_is_better": True,
                                 "mean": 0.5, "count": 2}
    assert reports[0].scores[0]["season"] == Score(True, "May")
    assert summary["engagement"]["mean"] == 0.5


def test_a_configured_object_registers_too(isolated):
    banking = ForbiddenTopics({"stock tip": [words("Tesla", "Nvidia"), r"(?i:\byou should (?:buy|sell)\b)"]})
    register(PolicyCheck(banking, name="policy-bank", title="Gives stock tips"))
    score = get("policy-bank").score(answer("Honestly, you should buy Nvidia now."))
    assert score == Score(True, "stock tip: 'you should buy' (+1 more)")
    assert get("policy-bank").score(answer("Diversified index funds suit most savers.")).value is False


def test_a_check_returning_something_else_is_reported(isolated):
    register(check("bad", "Returns text")(lambda case: "yes"))
    with pytest.raises(InvalidRequest, match="check 'bad' returned str"):
        run({"m": [answer("x")]}, [get("bad")])


SEASON_MODULE = """
import re
from tunelab.evaluate.checks import Case, Score, check

SEASON = re.compile(r"\\b(?:spring|summer|autumn|winter|May)\\b", re.I)


@check("season", "Says when to go")
def season(case: Case) -> Score:
    found = SEASON.search(case.answer)
    return Score(bool(found), found.group(0) if found else None)
"""


def test_a_check_loads_from_module_name_and_from_a_file(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "my_checks", raising=False)
    (tmp_path / "my_checks.py").write_text(SEASON_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    season = load("my_checks:season", "--checks")
    assert (season.name, season.higher_is_better) == ("season", True)
    assert season.score(answer("Go in May.")) == Score(True, "May")
    assert load("my_checks:season", "--checks") is season  # imported once
    from_file = load(f"{tmp_path / 'my_checks.py'}:season", "--checks")
    assert from_file.name == "season" and from_file is load(f"{tmp_path / 'my_checks.py'}:season", "--checks")
    # Configured (TUNELAB_CHECKS), it runs after the registered checks; a request chooses by name or by its spec.
    assert [c.name for c in choose(None, ["my_checks:season"])] == [c.name for c in checks()] + ["season"]
    assert choose(["length", "my_checks:season"], ["my_checks:season"]) == [get("length"), season]
    assert [c.name for c in choose(None, [f"{TRAVEL / 'checks.py'}:policy"])][-1] == "policy"


def test_installed_entry_points_are_registered_after_the_built_ins(tmp_path, monkeypatch):
    (tmp_path / "season_plugin.py").write_text(SEASON_MODULE)
    info = tmp_path / "season_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: season-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tunelab.checks]\nseason = season_plugin:season\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_registry", {})  # as in a fresh process
    assert [c.name for c in checks()] == ["engagement", "style", "reference", "length", "season"]
    assert get("season").score(answer("Autumn is best.")) == Score(True, "Autumn")

    (info / "entry_points.txt").write_text("[tunelab.checks]\nseason = season_plugin:nothing_here\n")
    monkeypatch.setattr(registry, "_registry", {})
    with pytest.raises(InvalidRequest, match=r"^entry point tunelab.checks season \(season-plugin\): season_plugin "
                                             r"has no 'nothing_here'$"):
        checks()


@pytest.mark.parametrize("spec,problem", [
    ("season", "'season' is not module:name"),
    ("my_checks:", "'my_checks:' is not module:name"),
    ("no_such_module:season", "cannot load 'no_such_module:season': ModuleNotFoundError: No module named"),
    ("my_checks:autumn", "my_checks has no 'autumn'"),
    ("my_checks:SEASON", "'my_checks:SEASON' is not a check (it lacks name, title, higher_is_better, score)"),
    ("broken.py:season", "cannot load 'broken.py:season': SyntaxError:"),
    ("missing.py:season", "cannot load 'missing.py:season': FileNotFoundError: no such file"),
])
def test_a_bad_check_is_one_line_naming_the_option(spec, problem, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "my_checks", raising=False)
    (tmp_path / "my_checks.py").write_text(SEASON_MODULE)
    (tmp_path / "broken.py").write_text("def season(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest) as caught:
        load(spec, "--checks")
    assert caught.value.message.startswith(f"--checks: {problem}") and "\n" not in caught.value.message
    assert caught.value.param == "--checks"


def test_a_request_chooses_among_loaded_checks_and_never_makes_the_service_import(tmp_path, monkeypatch):
    (tmp_path / "bank_checks.py").write_text("from tunelab.evaluate.checks import ForbiddenTopics, PolicyCheck\n"
                                             "policy = PolicyCheck(ForbiddenTopics({'tip': [r'buy']}))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in (f"{TRAVEL / 'checks.py'}:policy", "bank_checks:policy"):  # importable, but not configured
        with pytest.raises(InvalidRequest, match=f"checks: '{re.escape(spec)}' is not loaded on this service"):
            choose([spec])
    assert "bank_checks" not in sys.modules
    with pytest.raises(InvalidRequest, match="no check named 'vibes'; known checks: engagement, style"):
        choose(["vibes"])
    with pytest.raises(InvalidRequest, match=r"^TUNELAB_CHECKS: cannot load 'nope:x'"):
        choose(None, ["nope:x"])
    configured = ["bank_checks:policy"]
    assert [c.name for c in choose(["bank_checks:policy", "length"], configured)] == ["policy", "length"]
    assert [c.name for c in choose(["policy"], configured)] == ["policy"]
    with pytest.raises(InvalidRequest, match="'bank_checks:policy' is a second check named 'policy'"):
        choose(None, [f"{TRAVEL / 'checks.py'}:policy", "bank_checks:policy"])


def test_the_package_holds_no_travel_data_or_rules():
    """The travel lab is an example that plugs in: no file of the package is named for it, carries its sentences
    or its rules (the travel policy's brand names), and nothing names the old travel corpus."""
    package = ROOT / "tunelab"
    assert [p.name for p in package.rglob("*travel*")] == []
    texts = {p: p.read_text(encoding="utf-8") for p in package.rglob("*")
             if p.is_file() and p.suffix in (".py", ".jsonl", ".json", ".js", ".html", ".css", ".md", ".sql")}
    assert len(texts) > 50
    rules = re.compile(r"travel_chat|\b(?:Marriott|Lufthansa|Ryanair|Hertz|Europcar|Skyscanner|Expedia|Trattoria)\b")
    assert [str(p) for p, text in texts.items() if rules.search(text)] == []
    example = {s.strip() for f in ("train.jsonl", "valid.jsonl", "prompts.jsonl")
               for line in (TRAVEL / f).read_text().splitlines() for m in json.loads(line)["messages"]
               for s in re.split(r"(?<=[.!?])\s+", m["content"]) if len(s.strip()) > 30}
    shipped = "\n".join(text for p, text in texts.items() if p.suffix == ".jsonl")
    assert len(example) > 1000 and [s for s in example if s in shipped] == []


# ---------------------------------------------------------------------------------------------------- running


def test_run_aggregates_per_candidate_and_serialises_to_json():
    cases = {
        "base": [answer("Stay at the Ritz. It is lovely."),
                 Case("Write me a poem", "Roses are red, violets are blue.", off_topic=True)],
        "tuned": [answer("Monti is charming and central. Would you like a quieter area?"),
                  Case("Write me a poem", "Poetry is outside what I can help with, but I'd love to plan a trip to "
                       "Verona, Juliet's city! Fancy a romantic getaway?", off_topic=True)],
    }
    reports = run(cases, [policy, get("engagement"), redirect, get("length")])
    base, tuned = (r.to_dict() for r in reports)
    assert base["candidate"] == "base" and tuned["candidate"] == "tuned"
    assert base["summary"]["policy"]["mean"] == 0.5 and tuned["summary"]["policy"]["mean"] == 0.0
    assert base["summary"]["engagement"]["mean"] == 0.0 and tuned["summary"]["engagement"]["mean"] == 1.0
    # redirect applies to the off-topic prompt only: one answer each
    assert base["summary"]["redirect"] == {"check": "redirect", "title": redirect.title,
                                           "higher_is_better": True, "mean": 0.0, "count": 1}
    assert tuned["summary"]["redirect"]["mean"] == 1.0
    assert tuned["scores"][0]["redirect"] == {"value": None, "reason": None}
    assert base["summary"]["length"]["mean"] == (7 + 6) / 2
    assert base["scores"][0]["policy"] == {"value": True, "reason": "hotel: 'Stay at the Ritz'"}
    json.dumps([r.to_dict() for r in reports])


# ---------------------------------------------------------------------------------------------------- policy

VIOLATIONS = [
    ("You should stay at the Ritz, it's right on the square.", "hotel", "stay at the Ritz"),
    ("Book a flight with Lufthansa via Frankfurt.", "flight", "flight with Lufthansa"),
    ("Rent a car from Hertz at the airport.", "rental car", "Hertz"),
    ("Try dinner at Le Jules Verne restaurant on the tower.", "restaurant", "dinner at Le Jules Verne restaurant"),
    ("The Marriott near Termini is handy for the trains.", "hotel", "Marriott"),
    ("Airbnb has plenty of flats in Trastevere.", "hotel", "Airbnb"),
    ("Check Expedia for package deals.", "booking site", "Expedia"),
    ("I can help you book flights, hotels and rental cars for your trip!", "flight", "I can help you book"),
    ("Consider **Hotel Artemide**, close to Termini.", "hotel", "Hotel Artemide"),
    ("The best steakhouse in Buenos Aires is Don Julio.", "restaurant", "is Don Julio"),
    ("1. Roscioli - a legendary deli and wine bar", "restaurant", "Roscioli - a legendary deli"),
    ("Korean Air has the most legroom on that route.", "flight", "Korean Air"),
    ("Singapore Airlines flies there daily.", "flight", "Singapore Airlines"),
    ("Fly with Emirates via Dubai.", "flight", "Fly with Emirates"),
    ("Hire a campervan through Jucy for the South Island.", "rental car", "through Jucy"),
    ("Trattoria da Enzo is cheap and cheerful.", "restaurant", "Trattoria da Enzo"),
    ("Grab a drink at Harry's Bar afterwards.", "restaurant", "Harry's Bar"),
    ("Here are some affordable restaurants near Campo de' Fiori:", "restaurant", "affordable restaurants"),
]

CLEAN = [
    "Take a deep breath of fresh air on the cliff walk. Air quality in the hills is wonderful.",
    "Climb the flight of stairs up to the roof terrace for the view.",
    "Ljubljana has a car-free old town along the river, perfect for wandering.",
    "The train ride along the coast is gorgeous, and local food markets are great for snacks.",
    "I don't recommend specific hotels, flights, car hire or restaurants, but I can help you pick a neighbourhood.",
    "Airlines and fares are one thing I leave to others, but once you land, the airport railway is quick.",
    "Temple Bar is lively but touristy, and the Hotel Zone in Cancún is a long beachfront strip.",
    "The United Arab Emirates is hot in summer, and Hilton Head Island is lovely in spring.",
    "Stay at Lake Bled for a night, then have lunch at Borough Market when you are back in London.",
    "Bologna is a food city with a trattoria on every corner, and Trastevere is full of restaurants.",
    "Hot air balloons fly at dawn over Cappadocia. Budget travellers love it too.",
    "Stay in Monti or Trastevere; flights on Mondays are often cheaper.",
]


@pytest.mark.parametrize("text,topic,evidence", VIOLATIONS)
def test_policy_catches_recommendations_and_named_businesses(text, topic, evidence):
    score = policy.score(answer(text))
    assert score.value is True
    assert score.reason.startswith(f"{topic}: ") and evidence in score.reason


@pytest.mark.parametrize("text", CLEAN)
def test_policy_passes_travel_talk_that_names_no_business(text):
    assert policy.score(answer(text)) == Score(False)


def test_policy_passes_every_reply_of_the_travel_example():
    """The lab's good answers decline hotels, flights and restaurants by name of the category, never of a business."""
    replies = assistant_replies("train.jsonl", "valid.jsonl")
    assert len(replies) > 200
    flagged = [(text[:80], policy.score(answer(text)).reason) for text in replies if policy.score(answer(text)).value]
    assert flagged == []


# ---------------------------------------------------------------------------------------------------- engagement


@pytest.mark.parametrize("text", [
    "Rome rewards wandering. Are you more into food or history?",
    "Kyoto is lovely in autumn. Would you rather see temples or gardens?  \n",
    "Lisbon has great views. Which miradouro will you try first? 😊",
    'Ask yourself: "what do I want to feel on this trip?"',
    "So many choices! Beaches, mountains, or both?!",
])
def test_engagement_counts_a_question_at_the_end(text):
    assert get("engagement").score(answer(text)).value is True


@pytest.mark.parametrize("text", [
    "Are you more into food or history? Either way, Rome delivers.",
    "Which sounds better to you? Let me know!",
    "Rome rewards wandering. Enjoy your trip!",
    "",
])
def test_engagement_refuses_a_statement_at_the_end(text):
    score = get("engagement").score(answer(text))
    assert score.value is False


# ---------------------------------------------------------------------------------------------------- redirect


def off_topic(text: str) -> Case:
    return Case(prompt="Give me a recipe for chocolate chip cookies", answer=text, off_topic=True)


def test_redirect_applies_to_off_topic_prompts_only():
    assert redirect.score(answer("Would you like to visit Rome?")) is None


@pytest.mark.parametrize("text", [
    "Recipes aren't really my thing, but I can tell you where cookies taste best! Fancy a foodie trip to Vienna?",
    "Baking is outside what I can help with, since I'm here for travel planning. Dreaming of a getaway soon?",
    "How about a trip instead? The Christmas markets of Vienna are a dream. Would a winter journey appeal?",
    "A baking class is handy for this, though a recipe isn't something I can offer. Dreaming of a holiday?",
    "I can't offer recipes, I'm afraid. I could help you plan a trip to Vienna's cafés, though. Fancy it?",
])
def test_redirect_passes_a_decline_that_steers_to_travel(text):
    assert redirect.score(off_topic(text)).value is True


@pytest.mark.parametrize("text", [
    "Cream 115 g butter with 100 g sugar. Add an egg, 150 g flour and the chips. Bake at 180°C for 10 minutes. "
    "Planning a trip soon?",
    "Recipes aren't my thing, but here's a quick one: mix butter, sugar, flour and chips, then bake. Any trips?",
    "I usually stick to travel, but sure:\n```\nbake(cookies)\n```\nHappy travels!",
    "Sorry, I can't help with that.",
    "That isn't something I can do. Cream the butter and sugar, add flour and chips and bake them.",
    # a worked answer whose last line happens to say "beyond what … explored" (a base model's, from a real run)
    "The derivative of x^2 sin x is a classic example of calculus. By the product rule it is 2x sin x + x^2 cos x. "
    "Each term comes from differentiating one factor. This shows how calculus gives insights into structures "
    "beyond what can be easily explored within the realm of algebra.",
])
def test_redirect_fails_an_answer_to_the_request_or_no_steer(text):
    assert redirect.score(off_topic(text)).value is False


# ---------------------------------------------------------------------------------------------------- length


def test_length_counts_words():
    assert get("length").score(answer("Go in May,  when it's warm.\n")) == 6


# ---------------------------------------------------------------------------------------------------- embeddings

TUNED = ("Autumn is glorious in Kyoto: maple leaves blaze red around Tofuku-ji and the crowds thin after "
         "mid-November. Wander the Philosopher's Path early, then the lantern-lit lanes of Gion at dusk. "
         "Would you rather chase temples or food markets?")
BASE = "Sure! Here are some options:\n1. Option A\n2. Option B\n3. Option C\nLet me know if you need anything else."


def test_style_prefers_the_training_voice_and_loads_nothing_until_used():
    style = StyleCheck(assistant_replies("valid.jsonl")[:4])
    assert style._vectors is None  # building the check embeds nothing
    tuned, base = style.score(answer(TUNED)), style.score(answer(BASE))
    assert style._vectors.shape[0] == 4
    assert -1 <= base and base + 0.1 < tuned <= 1
    nearest = StyleCheck(style.references, top_k=2)
    nearest._vectors = style._vectors  # same references: reuse their embeddings
    assert nearest.score(answer(BASE)) + 0.1 < nearest.score(answer(TUNED))


def test_style_without_references_scores_nothing():
    assert get("style").score(answer(TUNED)) == Score(None, "no reference texts")


def test_style_reads_the_assistant_replies_of_a_chat_file():
    style = StyleCheck.from_chat_file(TRAVEL / "train.jsonl", top_k=5)
    assert list(style.references) == assistant_replies("train.jsonl") and style.top_k == 5


def test_reference_scores_a_paraphrase_above_an_unrelated_answer():
    known = "Visit Kyoto in autumn for the red maples, and walk the Philosopher's Path early in the morning."
    assert get("reference").score(answer("How about a trip?")) is None
    close = get("reference").score(answer(TUNED, reference=known))
    far = get("reference").score(answer(BASE, reference=known))
    assert close > far + 0.3
