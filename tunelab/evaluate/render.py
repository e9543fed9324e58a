"""A comparison's report as Markdown (for a terminal or a repository) and as one self-contained HTML page."""

from __future__ import annotations

from html import escape

SHARES = ("policy", "engagement", "redirect")


def _value(check: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if check in SHARES else f"{value:.2f}"


def rows(evaluation: dict) -> list[tuple[str, str, list[str]]]:
    """(label, better direction, one figure per candidate) for every measured line of the summary table."""
    report = evaluation["report"]
    candidates = report["candidates"]
    lines = []
    for check, summary in candidates[0]["checks"].items():
        direction = {True: "higher is better", False: "lower is better", None: ""}[summary["higher_is_better"]]
        lines.append((summary["title"], direction, [_value(check, c["checks"][check]["mean"]) for c in candidates]))
    loss = [c["validation"] for c in candidates]
    if any(loss):
        lines.append(("Validation loss (perplexity)", "lower is better",
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
            f"max_tokens {settings['max_tokens']}. System message: {settings['system'] or '(none)'}", ""]
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
    bars = "".join(_bars(check, report) for check in SHARES if check in report["candidates"][0]["checks"])
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
.bar{{display:flex;align-items:center;gap:.5rem;margin:.2rem 0}} .bar span{{width:12rem}}
.bar i{{display:block;height:1rem;background:#3b6fd8}} .verdict{{font-size:1.2rem}}
</style></head><body><h1>Comparison {escape(evaluation['id'])}</h1>
<p class="verdict"><strong>{escape(report['verdict']['summary'])}</strong></p><ul>{details}</ul>
<p>{report['settings']['prompts']} prompts · seed {report['settings']['seed']} · temperature
{report['settings']['temperature']} · system message: {escape(report['settings']['system'] or '(none)')}</p>
{bars}<table><tr><th></th>{head}</tr>{summary}</table>
<h2>Answers side by side</h2><table><tr><th>prompt</th>{head}</tr>{answers}</table></body></html>"""


def _bars(check: str, report: dict) -> str:
    title = report["candidates"][0]["checks"][check]["title"]
    lines = "".join(
        f"<div class=bar><span>{escape(c['name'])}</span><i style='width:{(c['checks'][check]['mean'] or 0) * 30}rem'>"
        f"</i>{_value(check, c['checks'][check]['mean'])}</div>" for c in report["candidates"])
    return f"<h3>{escape(title)}</h3>{lines}"
