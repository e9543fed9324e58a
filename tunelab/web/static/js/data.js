// Data: upload chat-format JSONL (drop or pick), list the files, and open one to review its examples as chat
// bubbles beside its pre-flight report (GET /v1/files/{id}/report): errors by line, warnings, token histogram.

import { all, del, fileText, get, upload } from "./api.js";
import { histogram } from "./charts.js";
import { badge, busy, bytes, confirmDialog, dropZone, duration, errorBox, errorText, field, go, h, notice, progress, replace, select, table, when } from "./ui.js";

const PREVIEW_BYTES = 2 * 1024 * 1024; // examples are shown from the first 2 MB of a file
const SHOWN = 50; // examples rendered at a time

export async function render(main, { id, query }) {
  return id ? fileView(main, id, query) : listView(main);
}

// Upload files one after another, each with its progress; resolves with the uploaded file objects.
export async function uploadFiles(files, into) {
  const done = [];
  for (const file of files) {
    const bar = progress(0, file.size, `${file.name}: uploading…`);
    const line = h("div", { class: "upload" }, bar);
    into.append(line);
    try {
      const uploaded = await upload(file, (sent, total) => replace(line, progress(sent, total, `${file.name}: ${bytes(sent)} of ${bytes(total)}`)));
      replace(line, h("span", { class: "ok" }, `${file.name} uploaded as ${uploaded.id}`));
      done.push(uploaded);
    } catch (error) {
      replace(line, errorBox(`${file.name}: ${errorText(error)}`));
    }
  }
  return done;
}

async function listView(main) {
  const uploads = h("div", { class: "uploads" });
  const list = h("div", {});
  const zone = dropZone(async (files) => {
    const done = await uploadFiles(files, uploads);
    await refresh();
    if (done.length === 1) go(`#/data/${done[0].id}`);
  });
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Data"),
      h("p", {}, "Upload training and validation data (chat-format JSONL, one conversation per line), then open a file to review it before fine-tuning.")),
    h("section", { class: "card" }, zone, uploads),
    h("section", { class: "card" }, h("h2", {}, "Files"), list));

  async function refresh() {
    const files = await all("/files");
    replace(list, table([
      { title: "Name", cell: (f) => f.purpose === "fine-tune" ? h("a", { href: `#/data/${f.id}` }, f.filename) : f.filename },
      { title: "ID", cell: (f) => h("code", {}, f.id) },
      { title: "Purpose", cell: (f) => f.purpose },
      { title: "Size", cell: (f) => bytes(f.bytes), class: "num" },
      { title: "Uploaded", cell: (f) => when(f.created_at) },
      { title: "Status", cell: (f) => badge(f.status) },
      { title: "", cell: (f) => h("button", { type: "button", class: "danger small", onclick: (event) => remove(event.target, f) }, "Delete") },
    ], files, { empty: "No files yet: drop a .jsonl file above.", rowAttrs: (f) => ({ dataset: { file: f.id } }) }));
  }

  async function remove(button, file) {
    if (!(await confirmDialog("Delete file", `Delete ${file.filename} (${file.id})? Its bytes are removed.`))) return;
    await busy(button, async () => {
      await del(`/files/${file.id}`);
      notice(`Deleted ${file.filename}`);
      await refresh();
    }, "Deleting…");
  }

  await refresh();
}

async function fileView(main, fileId, query) {
  const [meta, models, files] = await Promise.all([get(`/files/${fileId}`), get("/models"), all("/files", { purpose: "fine-tune" })]);
  const bases = models.data.filter((m) => m.kind === "base" && m.installed).map((m) => m.id);
  const defaults = await get("/fine_tuning/defaults");
  const model = select(bases, query.get("model") || (bases.includes(defaults.model) ? defaults.model : bases[0]), { name: "model" });
  const validation = select([["", "none"], ...files.filter((f) => f.id !== fileId).map((f) => [f.id, `${f.filename} (${f.id})`])],
    query.get("validation") || "", { name: "validation" });
  const examples = h("div", { class: "examples" });
  const report = h("div", { class: "report", "aria-live": "polite" });
  let chart = null;

  replace(main,
    h("header", { class: "page" }, h("a", { href: "#/data", class: "back" }, "← Data"),
      h("h1", {}, meta.filename), h("p", {}, h("code", {}, meta.id), ` · ${bytes(meta.bytes)} · uploaded ${when(meta.created_at)}`),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "primary", onclick: () => go(`#/fine-tuning?new=1&training_file=${fileId}&model=${encodeURIComponent(model.value)}`) }, "Fine-tune with this file"))),
    h("div", { class: "split" },
      h("section", { class: "card" }, h("h2", {}, "Examples"), examples),
      h("section", { class: "card" }, h("h2", {}, "Pre-flight report"),
        h("div", { class: "row" }, field("Count tokens with", model), field("Validation file", validation)), report)));

  const lines = await showExamples(examples, fileId);

  async function check() {
    replace(report, h("p", { class: "hint busy-text" }, "Checking the file… (the first use of a model converts it, about 25 s)"));
    if (chart) chart.destroy();
    chart = null;
    let found;
    try {
      found = await get(`/files/${fileId}/report`, { model: model.value, validation_file: validation.value });
    } catch (error) {
      replace(report, errorBox(error));
      return;
    }
    chart = showReport(report, found, lines);
  }
  model.addEventListener("change", check);
  validation.addEventListener("change", check);
  await check();
  return () => chart && chart.destroy();
}

// The file's first examples as chat bubbles, by line number; returns the rendered lines (line → element).
async function showExamples(into, fileId) {
  const { text, partial, total } = await fileText(fileId, PREVIEW_BYTES);
  const rows = text.split(/\r?\n/);
  if (partial) rows.pop(); // the last line may be cut off by the range
  const lines = new Map();
  const list = h("div", { class: "chats" });
  let next = 0;
  const more = h("button", { type: "button", onclick: () => showMore() }, "Show more");

  function showMore() {
    const end = Math.min(rows.length, next + SHOWN);
    for (; next < end; next++) {
      const raw = rows[next].replace(/^\uFEFF/, "");
      if (!raw.trim()) continue;
      const item = example(next + 1, raw);
      lines.set(next + 1, item);
      list.append(item);
    }
    more.hidden = next >= rows.length;
  }
  replace(into, partial ? h("p", { class: "hint" }, `Showing examples from the first ${bytes(PREVIEW_BYTES)} of ${bytes(total)}.`) : null, list, more);
  showMore();
  return { lines, list, showUntil: (line) => { while (next < Math.min(line, rows.length)) showMore(); return lines.get(line); } };
}

function example(line, raw) {
  let parsed;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return h("article", { class: "chat broken", id: `line-${line}`, dataset: { line } }, h("h3", {}, `Line ${line}`), h("pre", {}, raw.slice(0, 2000)));
  }
  const messages = Array.isArray(parsed?.messages) ? parsed.messages : preferencePair(parsed);
  return h("article", { class: "chat", id: `line-${line}`, dataset: { line } }, h("h3", {}, `Line ${line}`),
    messages.length ? messages.map(bubble) : h("pre", {}, raw.slice(0, 2000)));
}

// A preference pair (DPO) as bubbles: the prompt, then both answers, each labelled.
function preferencePair(parsed) {
  const prompt = Array.isArray(parsed?.input?.messages) ? parsed.input.messages : [];
  const answer = (names, label) => {
    const found = names.map((n) => parsed?.[n]).find(Array.isArray)?.[0];
    return found ? [{ ...found, role: `${found.role ?? "?"} · ${label}` }] : [];
  };
  const answers = [...answer(["preferred_output", "preferred_completion"], "preferred"),
    ...answer(["non_preferred_output", "non_preferred_completion"], "non-preferred")];
  return answers.length ? [...prompt, ...answers] : [];
}

export function bubble(message) {
  const content = typeof message?.content === "string" ? message.content
    : Array.isArray(message?.content) ? message.content.map((p) => p?.text ?? "").join("")
    : message?.tool_calls ? `tool call: ${JSON.stringify(message.tool_calls)}` : JSON.stringify(message?.content ?? null);
  const role = typeof message?.role === "string" ? message.role : "?";
  return h("div", { class: `bubble ${role}${message?.weight === 0 ? " unweighted" : ""}` },
    h("span", { class: "role" }, role + (message?.weight === 0 ? " · weight 0 (not trained)" : "")), h("div", { class: "text" }, content));
}

function showReport(into, report, lines) {
  const train = report.files[0];
  const problems = report.files.flatMap((f) => f.errors);
  const warnings = report.files.flatMap((f) => f.warnings);
  const lineLink = (problem) => problem.line > 0 && problem.file === train.file
    ? h("a", { href: `#line-${problem.line}`, onclick: (event) => {
      event.preventDefault();
      const target = lines.showUntil(problem.line);
      if (target) {
        target.scrollIntoView({ block: "center" });
        target.classList.add("flash");
        setTimeout(() => target.classList.remove("flash"), 1500);
      }
    } }, `line ${problem.line}`)
    : problem.line > 0 ? `line ${problem.line}` : "file";
  for (const problem of train.errors) lines.lines.get(problem.line)?.classList.add("has-error");

  const stats = train.tokens;
  const canvas = h("canvas", { id: "histogram", "aria-label": "token histogram" });
  replace(into,
    h("p", { class: report.ok ? "verdict ok" : "verdict bad" }, report.ok
      ? `Ready to train: ${train.examples} examples, no errors${warnings.length ? `, ${warnings.length} warning${warnings.length > 1 ? "s" : ""}` : ""}.`
      : `${problems.length} error${problems.length > 1 ? "s" : ""}: a job with this file would fail in validation.`),
    problems.length ? h("div", { class: "problems errors" }, h("h3", {}, "Errors"),
      h("ul", {}, problems.map((p) => h("li", { dataset: { rule: p.rule } }, lineLink(p), " · ", h("code", {}, p.rule), " · ", p.message)))) : null,
    warnings.length ? h("div", { class: "problems warnings" }, h("h3", {}, "Warnings"),
      h("ul", {}, warnings.map((p) => h("li", { dataset: { rule: p.rule } }, lineLink(p), " · ", h("code", {}, p.rule), " · ", p.message)))) : null,
    stats ? h("dl", { class: "facts" },
      fact("Examples", stats.examples),
      fact("Tokens (all examples)", stats.total.toLocaleString()),
      fact("Tokens per example", `min ${stats.min} · median ${stats.median} · p95 ${stats.p95} · max ${stats.max}`),
      fact("Trained tokens", `${stats.trained_total.toLocaleString()} (assistant turns)`),
      fact("Context limit", `${stats.context_limit}${stats.over_limit.length ? ` · ${stats.over_limit.length} examples over it are truncated` : ""}`),
      ...(train.pairs ? ["prompt", "preferred", "non_preferred"].map((side) => fact(
        `${side.replace("_", "-")} tokens (${train.pairs.pairs} pairs)`,
        `min ${train.pairs[side].min} · mean ${train.pairs[side].mean} · max ${train.pairs[side].max}`)) : []),
      report.n_epochs ? fact("auto epochs · batch size", `${report.n_epochs} · ${report.batch_size}`) : null,
      report.billed_tokens ? fact("Tokens trained in all", report.billed_tokens.toLocaleString()) : null,
      report.estimated_seconds ? fact("Estimated training time", `about ${duration(report.estimated_seconds)} on this machine`) : null) : null,
    stats ? h("div", { class: "chart short" }, canvas) : null,
    report.files[1] ? h("p", { class: "hint" }, `Validation file: ${report.files[1].examples} examples, ${report.files[1].errors.length} errors, ${report.files[1].warnings.length} warnings.`) : null);
  return stats ? histogram(canvas, stats.histogram, "Tokens per example") : null;
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, String(value))];
}
