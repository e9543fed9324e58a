"""The comparison's verdict names a winner only where a difference holds beyond the noise (95% intervals of
evaluate/stats.py), with every rate shown beside its n and interval: five prompts cannot make "wins 3 of 3"; 36
prompts with 35 against 3 question endings do; three candidates read as a ranking with ties within noise."""

from __future__ import annotations

import re

from tunelab.evaluate.compare import _interval, verdict
from tunelab.evaluate.render import markdown, rows

CHECKS = {"engagement": ("Ends with a question", True), "policy": ("Breaks the policy", False),
          "redirect": ("Steers back on topic", True), "style": ("Style similarity", True),
          "length": ("Words in the answer", None)}


def candidate(name: str, **values) -> tuple[dict, dict]:
    """A report's candidate entry built the way `compare.report` builds it, from per-answer values."""
    checks = {}
    for check, found in values.items():
        title, better = CHECKS[check]
        checks[check] = {"check": check, "title": title, "higher_is_better": better,
                         "mean": sum(found) / len(found), "count": len(found), **_interval(found)}
    return {"name": name, "checks": checks, "validation": None}, values


def judged(*entries, prompts):
    return verdict([e[0] for e in entries], prompts=prompts, values={e[0]["name"]: e[1] for e in entries})


def shares(yes: int, n: int) -> list[bool]:
    return [True] * yes + [False] * (n - yes)


def test_five_prompts_never_make_a_winner():
    base = candidate("base", engagement=shares(1, 5), policy=shares(2, 5), redirect=shares(0, 1))
    tuned = candidate("ft", engagement=shares(4, 5), policy=shares(0, 5), redirect=shares(1, 1))
    found = judged(base, tuned, prompts=5)
    # ft is ahead on all three checks as measured, and not one of the differences is settled by 5 answers
    assert found["winner"] is None and found["wins"] == {"base": [], "ft": []}
    assert found["summary"] == "no clear winner on 5 prompts (every difference is within the noise)"
    engagement = found["checks"]["engagement"]
    assert engagement["winner"] is None and engagement["n"] == 5 and engagement["prompts_to_settle"] > 5
    line = next(d for d in found["details"] if d.startswith("Ends with a question"))
    assert "no clear winner on 5 prompts" in line and "base 20% (4%–62%, n=5)" in line and "ft 80% (38%–96%, n=5)" in line
    assert f"about {engagement['prompts_to_settle']} prompts per candidate would settle ft against base" in line
    assert "redirect" in found["checks"] and found["checks"]["redirect"]["n"] == 1

    # Only a difference as stark as 0 of 5 against 5 of 5 holds on five prompts, and only that check is won.
    base = candidate("base", engagement=shares(0, 5), policy=shares(2, 5), redirect=shares(0, 1))
    tuned = candidate("ft", engagement=shares(5, 5), policy=shares(0, 5), redirect=shares(1, 1))
    found = judged(base, tuned, prompts=5)
    assert found["wins"]["ft"] == ["engagement"] and "on 1 of 3 checks" in found["summary"]


def test_thirty_six_prompts_with_35_against_3_name_the_winner():
    base = candidate("base", engagement=shares(3, 36), policy=shares(4, 36))
    tuned = candidate("ft", engagement=shares(35, 36), policy=shares(3, 36))
    found = judged(base, tuned, prompts=36)
    assert found["winner"] == "ft" and found["wins"]["ft"] == ["engagement"] and found["wins"]["base"] == []
    assert found["summary"] == ("ft is the clear winner on 36 prompts: ahead of every other candidate beyond the "
                                "noise on 1 of 2 checks (Ends with a question) and behind on none")
    assert found["checks"]["engagement"] == {"winner": "ft", "tied": ["ft"], "n": 36, "prompts_to_settle": None}
    # 4 against 3 policy breaks on 36 prompts is noise: that check has no winner, and says how many would settle it
    assert found["checks"]["policy"]["winner"] is None and found["checks"]["policy"]["prompts_to_settle"] > 36
    assert any(line.startswith("Breaks the policy: no clear winner on 36 prompts") for line in found["details"])


def test_a_candidate_behind_on_one_settled_check_is_not_the_winner():
    base = candidate("base", engagement=shares(3, 36), policy=shares(1, 36))
    tuned = candidate("ft", engagement=shares(35, 36), policy=shares(20, 36))
    found = judged(base, tuned, prompts=36)
    assert found["winner"] is None
    assert found["summary"].startswith("no clear winner on 36 prompts (ft ahead on Ends with a question; base "
                                       "ahead on Breaks the policy")


def test_three_candidates_rank_with_ties_within_noise():
    base = candidate("base", engagement=shares(3, 36), policy=shares(9, 36))
    sft = candidate("sft", engagement=shares(34, 36), policy=shares(6, 36))
    dpo = candidate("dpo", engagement=shares(35, 36), policy=shares(0, 36))
    found = judged(base, sft, dpo, prompts=36)
    # engagement: sft and dpo cannot be told apart, both ahead of base; policy: dpo ahead of both
    assert found["checks"]["engagement"]["winner"] is None
    assert found["checks"]["engagement"]["tied"] == ["dpo", "sft"]
    assert any(line.startswith("Ends with a question: dpo and sft tied within noise, ahead of base") for line in
               found["details"])
    assert found["checks"]["policy"]["winner"] == "dpo"
    assert found["winner"] == "dpo" and "behind on none" in found["summary"]

    sft = candidate("sft", engagement=shares(34, 36), policy=shares(1, 36))
    found = judged(base, sft, dpo, prompts=36)
    assert found["winner"] is None  # dpo and sft tie on both checks: neither is ahead of the other
    assert found["summary"] == ("no clear winner on 36 prompts (dpo and sft ahead of base on Ends with a question; "
                                "dpo and sft ahead of base on Breaks the policy; the rest within the noise)")


def test_means_use_their_interval_and_the_values():
    close = candidate("a", style=[0.50, 0.52, 0.49, 0.51, 0.50, 0.53])
    other = candidate("b", style=[0.51, 0.50, 0.52, 0.49, 0.52, 0.50])
    apart = candidate("c", style=[0.81, 0.80, 0.83, 0.79, 0.82, 0.80])
    found = judged(close, other, prompts=6)
    assert found["winner"] is None and found["checks"]["style"]["prompts_to_settle"] > 6
    assert close[0]["checks"]["style"]["kind"] == "mean" and close[0]["checks"]["style"]["interval"]["n"] == 6
    found = judged(close, apart, prompts=6)
    assert found["winner"] == "c" and found["checks"]["style"]["winner"] == "c"
    # an informational check (no better direction) is shown, never judged
    words = candidate("a", length=[3, 5]), candidate("b", length=[30, 50])
    assert judged(*words, prompts=2)["checks"] == {}


def test_the_markdown_report_shows_every_figure_with_its_interval_and_n():
    base = candidate("base", engagement=shares(3, 36), style=[0.2, 0.3, 0.25, 0.35])
    tuned = candidate("ft", engagement=shares(35, 36), style=[0.6, 0.7, 0.65, 0.75])
    entries = [base[0], tuned[0]]
    entries[0]["validation"] = {"loss": 2.5, "perplexity": 12.2, "tokens": 900}
    entries[1]["validation"] = {"loss": 1.9, "perplexity": 6.7, "tokens": 900}
    for entry in entries:
        entry.update(latency={"ttft_s_median": 0.1, "tokens_per_s_median": 50}, errors=0, filtered=0,
                     tokens={"total_per_request": 80, "prompt_per_request": 60, "completion_per_request": 20})
    report = {"settings": {"system": None, "seed": 42, "temperature": 0.7, "max_tokens": 64, "prompts": 36,
                           "parallel": 1},
              "candidates": entries, "prompts": [],
              "verdict": verdict(entries, prompts=36, values={"base": base[1], "ft": tuned[1]})}
    text = markdown({"id": "eval-1", "report": report})
    assert "| Ends with a question (higher is better) | 8% (3%–22%, n=36) | 97% (86%–100%, n=36) |" in text
    assert re.search(r"\| Style similarity \(higher is better\) \| 0\.28 \(0\.\d\d–0\.\d\d, n=4\) \| 0\.6\d \(", text)
    assert "**Verdict:** ft is the clear winner on 36 prompts" in text
    assert "Validation loss (token-weighted over 900 tokens, no interval; not part of the verdict)" in text
    assert "95% interval" in text
    # a report stored before intervals existed still renders, its figures without them
    for entry in entries:
        for summary in entry["checks"].values():
            del summary["kind"], summary["interval"]
    old = rows({"id": "eval-0", "report": report})
    assert old[0][2] == ["8%", "97%"]
