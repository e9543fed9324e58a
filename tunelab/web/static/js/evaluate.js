// Evaluate: the comparison reports (/v1/evaluations): list them, open one (verdict, the measured figures per
// candidate with charts, answers side by side, downloads), and start one on deployments or models.

import { del, download, get, post } from "./api.js";
import { shares } from "./charts.js";
import { QUESTIONS, TRAVEL_SYSTEM } from "./lab.js";
import { review } from "./pairs.js";
import { badge, busy, confirmDialog, errorBox, field, go, h, notice, number, poll, progress, redraw, replace, table, when } from "./ui.js";

const SHARES = ["policy", "engagement", "redirect"];

export async function render(main, { id }) {
  if (id && id.endsWith("/pairs")) return review(main, id.slice(0, -"/pairs".length));
  return id === "new" ? create(main) : id ? open(main, id) : list(main);
}

async function list(main) {
  const body = h("div", {});
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Evaluate"),
      h("p", {}, "Compare deployments or models on the same prompts, with the same system message and seed: measured checks, validation loss, latency and tokens, and a verdict."),
      h("div", { class: "actions" }, h("a", { class: "button primary", href: "#/evaluate/new" }, "+ New comparison"))),
    h("section", { class: "card" }, h("h2", {}, "Comparisons"), body));
  return poll(async () => {
    const found = (await get("/evaluations", { limit: 100 })).data;
    redraw(body, JSON.stringify(found), () => replace(body, table([
      { title: "Comparison", cell: (e) => h("a", { href: `#/evaluate/${e.id}` }, e.id) },
      { title: "Candidates", cell: (e) => e.candidates.join(" vs ") },
      { title: "Status", cell: (e) => badge(e.status) },
      { title: "Progress", cell: (e) => `${e.progress.done} / ${e.progress.total}` },
      { title: "Created", cell: (e) => when(e.created_at) },
    ], found, { empty: "No comparisons yet. A job with a validation file gets one when it succeeds; or start one." })));
    return found.some((e) => e.status === "running");
  }, 2000);
}

async function create(main) {
  const [deployments, models] = await Promise.all([get("/deployments"), get("/models")]);
  const names = [...deployments.value.filter((d) => d.properties.provisioningState === "Succeeded").map((d) => [d.name, `${d.name} (deployment of ${d.properties.model.name})`]),
    ...models.data.filter((m) => m.kind !== "base" || m.installed).map((m) => [m.id, `${m.id} (model)`])];
  const boxes = names.map(([value, label], i) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "candidate", value, checked: i < 2 && deployments.value.length >= 2 }), ` ${label}`));
  const prompts = h("textarea", { name: "prompts", rows: 7 }, QUESTIONS.slice(1).join("\n"));
  const promptFile = h("input", { type: "file", accept: ".jsonl", name: "prompt_file" });
  const system = h("textarea", { name: "system", rows: 5 }, TRAVEL_SYSTEM);
  const seed = h("input", { name: "seed", type: "number", value: "42" });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0.7" });
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: 1, max: 4096, value: "256" });
  const problem = h("div", {});
  const start = h("button", { type: "submit", class: "primary" }, "Start comparison");
  let filePrompts = null;
  promptFile.addEventListener("change", async () => {
    filePrompts = null;
    replace(problem);
    if (!promptFile.files.length) return;
    try {
      filePrompts = readPrompts(await promptFile.files[0].text());
      notice(`${filePrompts.length} prompts read from ${promptFile.files[0].name}`);
    } catch (error) {
      replace(problem, errorBox(error));
    }
  });
  replace(main,
    h("a", { href: "#/evaluate", class: "back" }, "← Evaluate"),
    h("header", { class: "page" }, h("h1", {}, "New comparison")),
    h("form", { class: "card form", onsubmit: async (event) => {
      event.preventDefault();
      replace(problem);
      const candidates = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
      const items = filePrompts || prompts.value.split("\n").map((q) => q.trim()).filter(Boolean)
        .map((q, i) => ({ id: `q${i + 1}`, messages: [{ role: "user", content: q }] }));
      if (!candidates.length) return replace(problem, errorBox("Choose at least one candidate (two to compare)."));
      if (!items.length) return replace(problem, errorBox("Write at least one question, or choose a prompts file."));
      await busy(start, async () => {
        try {
          const created = await post("/evaluations", { candidates, prompts: items, system: system.value.trim() || null,
            seed: Number(seed.value), temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) });
          go(`#/evaluate/${created.id}`);
        } catch (error) {
          replace(problem, errorBox(error));
        }
      }, "Starting…");
    } },
    h("fieldset", {}, h("legend", {}, "Candidates (deployments or models, up to 4)"), boxes),
    field("Questions, one per line", prompts, "The lab's questions; or choose a prompts file below (JSONL with messages or prompt, as tunelab compare reads)."),
    field("Prompts file (optional)", promptFile),
    field("System message (for every prompt)", system),
    h("div", { class: "row" }, field("Seed", seed), field("Temperature", temperature), field("Max tokens", maxTokens)),
    problem,
    h("div", { class: "actions" }, start)));
  return undefined;
}

// A prompts JSONL as `tunelab compare` reads it: {"messages": [...]} or {"prompt": "..."}, with id, kind, reference.
function readPrompts(text) {
  const found = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    let row;
    try {
      row = JSON.parse(line);
    } catch {
      throw new Error(`line ${i + 1} of the prompts file is not valid JSON`);
    }
    const messages = Array.isArray(row.messages) ? row.messages : typeof row.prompt === "string" ? [{ role: "user", content: row.prompt }] : null;
    if (!messages) throw new Error(`line ${i + 1} of the prompts file has no "messages" or "prompt"`);
    found.push({ id: row.id ? String(row.id) : `line-${i + 1}`, kind: row.kind ?? null, reference: row.reference ?? null,
                 messages: messages.filter((m) => m.role !== "system") });
  });
  if (!found.length) throw new Error("the prompts file holds no prompts");
  return found;
}

async function open(main, id) {
  const head = h("header", { class: "page" });
  const body = h("div", {});
  replace(main, h("a", { href: "#/evaluate", class: "back" }, "← Evaluate"), head, body);
  const charts = [];
  const stop = poll(async () => {
    const found = await get(`/evaluations/${id}`);
    redraw(head, JSON.stringify([found.status, found.report !== null]), () => replace(head, h("h1", {}, `Comparison ${found.id} `, badge(found.status)), h("p", {}, found.candidates.join(" vs "), ` · ${when(found.created_at)}`),
      h("div", { class: "actions" },
        found.report ? ["html", "markdown", "json"].map((format) => h("button", { type: "button", onclick: (event) => busy(event.target,
          () => download(`/evaluations/${id}/report`, `${id}.${{ html: "html", markdown: "md", json: "json" }[format]}`, { format })) }, `Download ${format === "markdown" ? "Markdown" : format.toUpperCase()}`)) : null,
        found.report ? h("a", { class: "button", href: `#/evaluate/${id}/pairs` }, "Make preference pairs") : null,
        found.status !== "running" ? h("button", { type: "button", class: "danger", onclick: async (event) => {
          if (!(await confirmDialog("Delete comparison", `Delete ${id}?`))) return;
          await busy(event.target, async () => { await del(`/evaluations/${id}`); go("#/evaluate"); });
        } }, "Delete") : null)));
    if (found.status === "running") {
      replace(body, h("section", { class: "card" }, progress(found.progress.done, found.progress.total, `${found.progress.done} of ${found.progress.total} answers`)));
      return true;
    }
    if (found.status === "failed") {
      replace(body, errorBox({ message: found.error || "the comparison failed" }));
      return false;
    }
    charts.forEach((c) => c.destroy());
    charts.length = 0;
    showReport(body, found.report, charts);
    return false;
  }, 1500);
  return () => {
    stop();
    charts.forEach((c) => c.destroy());
  };
}

function showReport(into, report, charts) {
  const names = report.candidates.map((c) => c.name);
  const first = report.candidates[0];
  const rows = Object.entries(first.checks).map(([check, summary]) => [
    summary.title, summary.higher_is_better === null ? "" : summary.higher_is_better ? "higher is better" : "lower is better",
    report.candidates.map((c) => format(check, c.checks[check]))]);
  if (report.candidates.some((c) => c.validation)) {
    rows.push(["Validation loss (perplexity), token-weighted: no interval", "lower is better", report.candidates.map((c) => (c.validation && c.validation.loss !== null ? `${number(c.validation.loss)} (${number(c.validation.perplexity, 1)})` : "–"))]);
  }
  rows.push(["Time to first token, median (s)", "lower is better", report.candidates.map((c) => plain(c.latency.ttft_s_median))]);
  rows.push(["Decode tokens/s, median", "higher is better", report.candidates.map((c) => plain(c.latency.tokens_per_s_median))]);
  rows.push(["Tokens per request", "lower is cheaper", report.candidates.map((c) => plain(c.tokens.total_per_request))]);
  rows.push(["Errors / filtered answers", "", report.candidates.map((c) => `${c.errors} / ${c.filtered}`)]);
  const canvases = SHARES.filter((check) => check in first.checks && report.candidates.some((c) => c.checks[check].mean !== null)).map((check) => [check, h("canvas", { "aria-label": first.checks[check].title })]);
  replace(into,
    h("section", { class: "card" }, h("p", { class: "verdict" }, h("strong", {}, report.verdict.summary)),
      h("ul", {}, report.verdict.details.map((d) => h("li", {}, d))),
      h("p", { class: "hint intervals" }, "Each figure: value (95% interval, n answers scored). A check names a winner only where the difference holds beyond that noise."),
      h("p", { class: "hint" }, `${report.settings.prompts} prompts · seed ${report.settings.seed} · temperature ${report.settings.temperature} · max tokens ${report.settings.max_tokens} · system message: ${report.settings.system || "(none)"}`)),
    h("section", { class: "card" }, h("h2", {}, "Measured"),
      h("div", { class: "charts three" }, canvases.map(([, canvas]) => h("div", { class: "chart short" }, canvas))),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}), names.map((n) => h("th", {}, n)))),
        h("tbody", {}, rows.map(([label, direction, values]) => h("tr", {}, h("th", {}, label, direction ? h("small", {}, direction) : null), values.map((v) => h("td", { class: "num" }, v))))))),
    h("section", { class: "card" }, h("h2", {}, "Answers side by side"),
      h("table", { class: "answers" }, h("thead", {}, h("tr", {}, h("th", {}, "Prompt"), names.map((n) => h("th", {}, n)))),
        h("tbody", {}, report.prompts.map((p) => h("tr", {}, h("th", {}, h("small", {}, `${p.id} · ${p.kind}`), p.question),
          names.map((n) => {
            const answer = p.answers[n];
            return h("td", {}, answer.text || "(no answer)", h("small", {}, flags(answer)));
          })))))));
  for (const [check, canvas] of canvases) charts.push(shares(canvas, first.checks[check].title, names, report.candidates.map((c) => c.checks[check].mean)));
}

function flags(answer) {
  const found = [];
  const scores = answer.scores || {};
  if (scores.policy && scores.policy.value) found.push(`policy: ${scores.policy.reason}`);
  if (scores.engagement) found.push(scores.engagement.value ? "ends with a question" : "no closing question");
  if (answer.error) found.push(`error: ${answer.error}`);
  if (answer.finish_reason === "content_filter") found.push("filtered");
  return found.join("; ");
}

// A check's figure with its 95% interval and n (render.py's `figure`): "97% (86%–100%, n=36)" or "0.62 (0.58–0.66, n=36)";
// a report from before intervals shows the value alone.
function format(check, summary) {
  const value = summary.mean;
  if (value === null || value === undefined) return "–";
  const rate = summary.kind ? summary.kind === "rate" : SHARES.includes(check);
  const shown = (v) => (rate ? `${Math.round(v * 100)}%` : Number(v).toFixed(2));
  const interval = summary.interval || {};
  if (interval.low === null || interval.low === undefined || interval.high === null || interval.high === undefined) {
    return shown(value) + (interval.n ? ` (n=${interval.n})` : "");
  }
  return `${shown(value)} (${shown(interval.low)}–${shown(interval.high)}, n=${interval.n})`;
}

function plain(value) {
  return value === null || value === undefined ? "–" : String(value);
}
