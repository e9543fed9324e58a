"""The evals graders without a server: the text similarity metrics against published or hand-computed values,
templates, the parsing of a grader model's answer, each grader's verdicts, and errors that name the field."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from tunelab.errors import InvalidRequest
from tunelab.evaluate import graders
from tunelab.evaluate.compare import Answer
from tunelab.evaluate.similarity import bleu, fuzzy_match, gleu, lcs_length, rouge
from tunelab.evaluate.stats import wilson


def grade(spec: dict, item: dict | None = None, output: str = "", ask=None, **options):
    grader = graders.parse([spec], **options)[0]
    return asyncio.run(grader.grade({"item": item or {}, "sample": {"output_text": output}}, ask))


# ---------------------------------------------------------------------------------------------------- metrics

def test_fuzzy_match_is_rapidfuzz_ratio():
    assert fuzzy_match("kitten", "sitting") == pytest.approx(0.6153846, abs=1e-6)  # fuzz.ratio = 61.538…
    assert fuzzy_match("same", "same") == 1.0 and fuzzy_match("abc", "xyz") == 0.0 and fuzzy_match("", "") == 1.0


def test_the_bit_parallel_lcs_equals_the_table():
    rng = random.Random(7)
    for _ in range(300):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abcde") for _ in range(rng.randint(0, 40)))
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        assert lcs_length(a, b) == table[-1][-1]


def test_rouge_matches_the_rouge_score_readme():
    """google-research/rouge README: score(target='The quick brown fox jumps over the lazy dog',
    prediction='The quick brown dog jumps on the log.') gives rouge1 F 0.70588 and rougeL F 0.58824."""
    target, prediction = "The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."
    assert rouge(prediction, target, "rouge_1") == pytest.approx(0.70588235, abs=1e-7)
    assert rouge(prediction, target, "rouge_l") == pytest.approx(0.58823529, abs=1e-7)
    # rouge_2: bigrams in common "the quick", "quick brown" → P 2/7, R 2/8
    assert rouge(prediction, target, "rouge_2") == pytest.approx(2 * (2 / 7) * (2 / 8) / (2 / 7 + 2 / 8))
    assert rouge("x y", "a b", "rouge_1") == 0.0


def test_bleu_is_sentence_bleu_with_smoothing_method_1():
    # hypothesis 6 words, reference 6 words: 1-gram 5/6, 2-gram 3/5, 3-gram 1/4, 4-gram 0/3 → 0.1/3 (method 1)
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)) / 4)
    assert bleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(expected)
    assert bleu("the cat is on the mat", "The cat is on the mat.") == pytest.approx(1.0)
    assert bleu("nothing shared", "the cat is on the mat") == 0.0
    # brevity penalty: 3 words against 6, every n-gram present → exp(1 - 6/3) times the smoothed 4-gram share
    short = math.exp((0 + 0 + 0 + math.log(0.1 / 1)) / 4) * math.exp(1 - 6 / 3)
    assert bleu("the cat is", "the cat is on the mat") == pytest.approx(short)


def test_gleu_is_the_smaller_of_n_gram_precision_and_recall():
    # all 1–4-grams: hypothesis 6+5+4+3 = 18, reference 18, in common 5+3+1+0 = 9
    assert gleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(9 / 18)
    assert gleu("the cat", "the cat is on the mat") == pytest.approx(3 / 18)  # precision 3/3, recall 3/18


# ---------------------------------------------------------------------------------------------------- templates

def test_templates_read_nested_values_and_insert_json():
    context = {"item": {"a": {"b": "deep"}, "n": 3, "list": [1, 2]}, "sample": {"output_text": "hi"}}
    assert graders.render("{{item.a.b}} {{ item.n }} {{item.list}} {{sample.output_text}}", context) == \
        "deep 3 [1, 2] hi"
    with pytest.raises(graders.MissingValue, match="the item has no 'missing'"):
        graders.render("{{item.missing}}", context)


@pytest.mark.parametrize("template", ["{{answer}}", "{{item.}}", "{{ item.x + 1 }}", "{{item.x"])
def test_a_bad_template_is_refused_naming_the_field(template):
    with pytest.raises(InvalidRequest) as refused:
        graders.parse([{"type": "string_check", "name": "x", "input": template, "reference": "a", "operation": "eq"}])
    assert refused.value.param == "testing_criteria[0].input"


# ---------------------------------------------------------------------------------------------------- graders

@pytest.mark.parametrize("operation,output,passed", [
    ("eq", "Lisbon", True), ("eq", "lisbon", False), ("ne", "Porto", True), ("like", "I love Lisbon!", True),
    ("like", "I love LISBON", False), ("ilike", "I love LISBON", True)])
def test_string_check(operation, output, passed):
    result = grade({"type": "string_check", "name": "city", "input": "{{sample.output_text}}",
                    "reference": "{{item.city}}", "operation": operation}, {"city": "Lisbon"}, output)
    assert (result.passed, result.score, result.error) == (passed, 1.0 if passed else 0.0, None)


def test_text_similarity_passes_at_its_threshold():
    spec = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}", "reference": "{{item.r}}",
            "evaluation_metric": "fuzzy_match", "pass_threshold": 0.6}
    result = grade(spec, {"r": "sitting"}, "kitten")
    assert result.passed and result.score == pytest.approx(0.6153846, abs=1e-6)
    assert not grade({**spec, "pass_threshold": 0.62}, {"r": "sitting"}, "kitten").passed
    missing = grade(spec, {}, "kitten")  # the item lacks the field the reference names: an errored result
    assert missing.error and missing.passed is False


CHECKS = """
from tunelab.evaluate.checks import check

@check("mentions_hotel", "Names a hotel", higher_is_better=False)
def mentions_hotel(case):
    return "hotel" in case.answer.lower()

@check("words", "Words", higher_is_better=None)
def words(case):
    return None if case.off_topic else len(case.answer.split())
"""


def test_a_tunelab_check_passes_on_its_better_side(tmp_path):
    (tmp_path / "my_checks.py").write_text(CHECKS)
    configured = [f"{tmp_path / 'my_checks.py'}:mentions_hotel", f"{tmp_path / 'my_checks.py'}:words"]
    spec = {"type": "tunelab_check", "name": "mentions_hotel"}
    assert grade(spec, output="Stay at Hotel Roma.", configured_checks=configured).passed is False
    assert grade(spec, output="Stay near the river.", configured_checks=configured).passed is True
    numeric = {"type": "tunelab_check", "name": "long enough", "check": "words", "pass_threshold": 3}
    assert grade(numeric, output="one two three", configured_checks=configured).passed
    assert not grade(numeric, output="one two", configured_checks=configured).passed
    assert grade({**numeric, "pass_threshold": None}, output="one", configured_checks=configured).error
    absent = grade(numeric, {"kind": "off_topic"}, "one two three", configured_checks=configured)
    assert absent.passed is None and absent.error is None and absent.to_dict()["not_applicable"]
    engagement = grade({"type": "tunelab_check", "name": "asks back", "check": "engagement"},
                       output="Lisbon is lovely. What do you enjoy?")
    assert engagement.passed and engagement.score == 1.0


def answers(*texts):
    """A grader model that answers `texts` in turn, recording what it was asked."""
    asked = []

    async def ask(model, messages, spec):
        asked.append((model, messages, spec))
        return Answer(texts[len(asked) - 1], "stop", 0.0, 0.1, 10, 5)
    return ask, asked


def test_model_graders_parse_what_the_model_says_and_error_when_they_cannot():
    score = {"type": "score_model", "name": "judge", "model": "m", "range": [1, 5], "pass_threshold": 4,
             "input": [{"role": "system", "content": "Grade."}, {"role": "user", "content": "{{sample.output_text}}"}]}
    ask, asked = answers('Sure: {"result": 4.5}', "I'd say 3 out of 5", "no idea", '{"result": 9}')
    got = [grade(score, output="Lisbon", ask=ask) for _ in range(4)]
    assert [(r.score, r.passed, bool(r.error)) for r in got] == [(4.5, True, False), (3.0, False, False),
                                                                 (None, False, True), (None, False, True)]
    model, messages, spec = asked[0]
    assert model == "m" and messages[0] == {"role": "system", "content": "Grade."}
    assert messages[1]["content"].startswith("Lisbon\n\n") and '{"result"' in messages[1]["content"]
    assert (spec.temperature, spec.seed, spec.max_tokens) == (0.0, 42, 64)
    label = {"type": "label_model", "name": "tone", "model": "m", "labels": ["friendly", "rude"],
             "passing_labels": ["friendly"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    ask, _ = answers('{"label": "rude"}', "Rather Friendly, not rude.", "neither")
    got = [grade(label, output="hi", ask=ask) for _ in range(3)]
    assert [(r.score, r.passed, r.sample and r.sample.get("label")) for r in got[:2]] == [(0.0, False, "rude"),
                                                                                         (1.0, True, "friendly")]
    assert got[2].error and "names none of the labels" in got[2].error


def test_a_failed_grader_answer_is_an_errored_result():
    async def ask(model, messages, spec):
        return Answer("", "error", None, 0.1, 0, 0, error="the engine stopped")
    result = grade({"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "x"}]},
                   ask=ask)
    assert result.error == "the engine stopped" and result.passed is False


# ---------------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("spec,param", [
    ({"type": "nope", "name": "x"}, "testing_criteria[0].type"),
    ({"type": "python", "name": "x", "source": "def grade(s, i): return 1"}, "testing_criteria[0].type"),
    ({"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "regex"},
     "testing_criteria[0].operation"),
    ({"type": "text_similarity", "name": "x", "input": "a", "reference": "b", "evaluation_metric": "meteor",
      "pass_threshold": 0.5}, "testing_criteria[0].evaluation_metric"),
    ({"type": "text_similarity", "name": "x", "input": "a", "reference": "b", "evaluation_metric": "bleu"},
     "testing_criteria[0].pass_threshold"),
    ({"type": "tunelab_check", "name": "vibes"}, "testing_criteria[0].name"),
    ({"type": "score_model", "name": "x", "model": "m", "input": [], "range": [0, 1]}, "testing_criteria[0].input"),
    ({"type": "score_model", "name": "x", "model": "m", "input": [{"role": "user", "content": "a"}],
      "range": [1, 0]}, "testing_criteria[0].range"),
    ({"type": "label_model", "name": "x", "model": "m", "input": [{"role": "user", "content": "a"}],
      "labels": ["a"], "passing_labels": ["b"]}, "testing_criteria[0].passing_labels"),
    ({"type": "label_model", "name": "x", "model": "m", "labels": ["a"], "passing_labels": ["a"],
      "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "testing_criteria[0].input[0].content"),
])
def test_bad_graders_are_refused_naming_the_field(spec, param):
    with pytest.raises(InvalidRequest) as refused:
        graders.parse([spec])
    assert refused.value.param == param


def test_unknown_models_and_duplicate_names_are_refused():
    def known(name, param):
        if name != "tiny":
            raise InvalidRequest(f"no model {name}", param=param)
    spec = {"type": "score_model", "name": "j", "model": "other", "input": [{"role": "user", "content": "a"}]}
    with pytest.raises(InvalidRequest) as refused:
        graders.parse([{"type": "string_check", "name": "s", "input": "a", "reference": "a", "operation": "eq"}, spec],
                      known_model=known)
    assert refused.value.param == "testing_criteria[1].model"
    with pytest.raises(InvalidRequest) as twice:
        graders.parse([{**spec, "model": "tiny"}, {**spec, "model": "tiny"}], known_model=known)
    assert twice.value.param == "testing_criteria[1].name"


def test_a_tally_counts_items_and_gives_each_grader_its_interval():
    tally = graders.Tally(["a", "b"])
    outcomes = [(True, True), (True, False), (False, None), (True, True)]
    for a, b in outcomes:
        results = [graders.Result("a", "string_check", float(a), a),
                   graders.Result("b", "tunelab_check", None if b is None else float(b), b)]
        tally.add(graders.item_status(results, False), results, [("m", Answer("x", "stop", 0, 0, 3, 2))])
    summary = tally.to_dict()
    assert summary["result_counts"] == {"total": 4, "passed": 2, "failed": 2, "errored": 0}
    a, b = summary["per_testing_criteria_results"]
    assert (a["passed"], a["failed"], b["passed"], b["failed"], b["not_applicable"]) == (3, 1, 2, 1, 1)
    assert a["pass_rate"] == wilson(3, 4).to_dict() and b["pass_rate"] == wilson(2, 3).to_dict()
    assert summary["per_model_usage"] == [{"model_name": "m", "invocation_count": 4, "prompt_tokens": 12,
                                           "completion_tokens": 8, "total_tokens": 20, "cached_tokens": 0}]
