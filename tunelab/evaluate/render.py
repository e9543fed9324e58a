"""A comparison's report as Markdown (for a terminal or a repository) and as one self-contained HTML page.

The HTML page draws its chart with Chart.js, the studio's charting library (`tunelab/web/static/vendor/`),
inlined into the page so the file opens anywhere, offline, on its own.
"""

from __future__ import annotations

import json
from functools import cache
from html import escape
from pathlib import Path

CHART_JS = Path(__file__).resolve().parent.parent / "web" / "static" / "vendor" / "chart.umd.min.js"
COLORS = ("#2f6fde", "#d9622b", "#2a9d6f", "#8e5ad6")

SHARES = ("policy", "engagement", "redirect")
INTERVALS = ("Each figure: value (95% interval, n answers scored): Wilson's interval for a share, the normal interval "
             "for a mean. A check names a winner only where the difference holds beyond that noise.")


def figure(summary: dict, check: str = "") -> str:
    """A check's value for a reader: `97% (90–99%, n=36)` for a rate, `0.62 (0.58–0.66, n=36)` for a mean; the
    interval is left out where there is none (a report from before intervals, or a single value)."""
    value = summary.get("mean")
    if value is None:
        return "–"
    rate = summary.get("kind") == "rate" or (summary.get("kind") is None and check in SHARES)
    shown = (lambda v: f"{v:.0%}") if rate else (lambda v: f"{v:.2f}")
    interval = summary.get("interval") or {}
    if interval.get("low") is None or interval.get("high") is None:
        return shown(value) + (f" (n={interval['n']})" if interval.get("n") else "")
    return f"{shown(value)} ({shown(interval['low'])}–{shown(interval['high'])}, n={interval['n']})"


def rows(evaluation: dict) -> list[tuple[str, str, list[str]]]:
    """(label, better direction, one figure per candidate) for every measured line of the summary table."""
    report = evaluation["report"]
    candidates = report["candidates"]
    lines = []
    for check, summary in candidates[0]["checks"].items():
        direction = {True: "higher is better", False: "lower is better", None: ""}[summary["higher_is_better"]]
        lines.append((summary["title"], direction, [figure(c["checks"][check], check) for c in candidates]))
    loss = [c["validation"] for c in candidates]
    if any(loss):
        lines.append(("Validation loss (perplexity), token-weighted: no interval", "lower is better",
                      [f"{v['loss']:.3f} ({v['perplexity']:.1f})" if v and v["loss"] is not None else "–"
                       for v in loss]))
    lines += [
        ("Time to first token, median (s)", "lower is better",
         [_plain(c["latency"]["ttft_s_median"]) for c in candidates]),
        ("Decode tokens/s, median", "higher is better", [_plain(c["latency"]["tokens_per_s_median"]) for c in candidates]),
        ("Tokens per request (prompt + completion)", "lower is cheaper",
         [f"{_plain(c['tokens']['total_per_request'])} ({_plain(c['tokens']['prompt_per_request'])} + "
          f"{_plain(c['tokens']['completion_per_request'])})" for c in candidates]),
        ("Errors / filtered answers", "", [f"{c['errors']} / {c['filtered']}" for c in candidates]),
    ]
    return lines


def _plain(value) -> str:
    return "–" if value is None else f"{value:g}"


def markdown(evaluation: dict) -> str:
    report = evaluation["report"]
    names = [c["name"] for c in report["candidates"]]
    out = [f"# Comparison {evaluation['id']}", "",
           f"**Verdict:** {report['verdict']['summary']}.", ""]
    out += [f"- {line}" for line in report["verdict"]["details"]] + [""]
    settings = report["settings"]
    out += [f"{settings['prompts']} prompts, seed {settings['seed']}, temperature {settings['temperature']}, "
            f"max_tokens {settings['max_tokens']}. System message: {settings['system'] or '(none)'}", "",
            INTERVALS, ""]
    out += ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    out += [f"| {label} ({direction}) | " + " | ".join(values) + " |" if direction else
            f"| {label} | " + " | ".join(values) + " |" for label, direction, values in rows(evaluation)]
    out += ["", "## Answers side by side", ""]
    for prompt in report["prompts"]:
        out += [f"### {prompt['id']} ({prompt['kind']}): {prompt['question']}", ""]
        for name in names:
            answer = prompt["answers"][name]
            flags = _flags(answer)
            out += [f"**{name}**{' — ' + flags if flags else ''}", "", "> " + (answer["text"] or "(no answer)")
                    .replace("\n", "\n> "), ""]
    return "\n".join(out)


def _flags(answer: dict) -> str:
    scores = answer["scores"]
    flags = []
    if scores.get("policy", {}).get("value"):
        flags.append(f"policy: {scores['policy']['reason']}")
    if "engagement" in scores:
        flags.append("ends with a question" if scores["engagement"]["value"] else "no closing question")
    if answer.get("error"):
        flags.append(f"error: {answer['error']}")
    if answer.get("finish_reason") == "content_filter":
        flags.append("filtered")
    return "; ".join(flags)


def html(evaluation: dict) -> str:
    report = evaluation["report"]
    names = [c["name"] for c in report["candidates"]]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    summary = "".join(
        f"<tr><th>{escape(label)}<small>{escape(direction)}</small></th>"
        + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>" for label, direction, values in rows(evaluation))
    chart = _chart(report)
    answers = "".join(
        f"<tr><th>{escape(p['id'])}<small>{escape(p['kind'])}</small><p>{escape(p['question'])}</p></th>"
        + "".join(f"<td>{escape(p['answers'][n]['text'] or '(no answer)')}<small>{escape(_flags(p['answers'][n]))}"
                  "</small></td>" for n in names) + "</tr>" for p in report["prompts"])
    details = "".join(f"<li>{escape(line)}</li>" for line in report["verdict"]["details"])
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tunelab comparison {escape(evaluation['id'])}</title><style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2330}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}} th,td{{border:1px solid #d5d9e2;padding:.5rem;
vertical-align:top;text-align:left}} th small,td small{{display:block;color:#667;font-weight:normal}}
.chart{{position:relative;height:260px;max-width:760px}} .verdict{{font-size:1.2rem}}
</style></head><body><h1>Comparison {escape(evaluation['id'])}</h1>
<p class="verdict"><strong>{escape(report['verdict']['summary'])}</strong></p><ul>{details}</ul>
<p>{report['settings']['prompts']} prompts · seed {report['settings']['seed']} · temperature
{report['settings']['temperature']} · system message: {escape(report['settings']['system'] or '(none)')}</p>
<p>{escape(INTERVALS)}</p>
{chart}<table><tr><th></th>{head}</tr>{summary}</table>
<h2>Answers side by side</h2><table><tr><th>prompt</th>{head}</tr>{answers}</table></body></html>"""


def _chart(report: dict) -> str:
    """A grouped bar chart of the share checks (policy, engagement, redirect), one bar per candidate; the same
    figures are in the table below it."""
    candidates = report["candidates"]
    first = candidates[0]["checks"]
    rates = [check for check, summary in first.items()
             if summary.get("kind") == "rate" or (summary.get("kind") is None and check in SHARES)]
    shown = [c for c in SHARES if c in rates] + [c for c in rates if c not in SHARES]
    if not shown:
        return ""
    config = {
        "type": "bar",
        "data": {"labels": [candidates[0]["checks"][c]["title"] for c in shown],
                 "datasets": [{"label": c["name"], "backgroundColor": COLORS[i % len(COLORS)],
                               "data": [None if c["checks"][k]["mean"] is None else round(100 * c["checks"][k]["mean"], 1)
                                        for k in shown]} for i, c in enumerate(candidates)]},
        "options": {"responsive": True, "maintainAspectRatio": False, "animation": False,
                    "plugins": {"title": {"display": True, "text": "Share of answers (%)"}},
                    "scales": {"y": {"min": 0, "max": 100}}},
    }
    data = json.dumps(config).replace("</", "<\\/")  # nothing in the data can close the script element
    return (f"<div class=chart><canvas id=shares aria-label='share of answers per check'></canvas></div>"
            f"<script>{_chart_js()}</script>"
            f"<script>new Chart(document.getElementById('shares'), {data});</script>")


@cache
def _chart_js() -> str:
    return CHART_JS.read_text(encoding="utf-8")
