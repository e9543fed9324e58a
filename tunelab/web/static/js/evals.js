// Evals: the evals API's objects, read-only (/v1/evals): the evals, an eval's runs with each grader's pass rate
// and its 95% interval, and a run's output items with every grader's result. Runs are made through the API
// (`client.evals.runs.create`); a run's `report_url` opens it here.

import { all, get } from "./api.js";
import { badge, h, poll, redraw, replace, table, when } from "./ui.js";

export async function render(main, { id, query }) {
  if (!id) return list(main);
  return query.get("run") ? run(main, id, query.get("run")) : runs(main, id);
}

async function list(main) {
  const body = h("div", {});
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Evals"),
      h("p", {}, "Evals made through the API (client.evals): what each grades, its runs and every item's results.")),
    h("section", { class: "card" }, h("h2", {}, "Evals"), body));
  const found = await all("/evals", { order: "desc", limit: 100 });
  replace(body, table([
    { title: "Eval", cell: (e) => h("a", { href: `#/evals/${e.id}` }, e.name) },
    { title: "Data", cell: (e) => e.data_source_config.type },
    { title: "Graders", cell: (e) => e.testing_criteria.map((g) => `${g.name} (${g.type})`).join(", ") },
    { title: "Created", cell: (e) => when(e.created_at) },
  ], found, { empty: "No evals yet: create one with client.evals.create(...)." }));
}

// "3 / 4 · 75% [30–95%]": passes over the items the grader passed or failed, with the interval.
function rate(result) {
  const p = result.pass_rate;
  if (!p || p.value === null) return `${result.passed} / ${result.passed + result.failed}`;
  const pct = (x) => `${Math.round(100 * x)}%`;
  const interval = p.low === null ? "" : ` [${pct(p.low)}–${pct(p.high)}]`;
  const extra = [result.errored ? `${result.errored} errored` : "", result.not_applicable ? `${result.not_applicable} n/a` : ""]
    .filter(Boolean).join(", ");
  return `${result.passed} / ${p.n} · ${pct(p.value)}${interval}${extra ? ` (${extra})` : ""}`;
}

function counts(r) {
  const c = r.result_counts;
  return `${c.passed} passed, ${c.failed} failed, ${c.errored} errored of ${c.total}`;
}

async function runs(main, evalId) {
  const ev = await get(`/evals/${encodeURIComponent(evalId)}`);
  const body = h("div", {});
  replace(main,
    h("header", { class: "page" }, h("h1", {}, ev.name), h("p", {}, h("a", { href: "#/evals" }, "← Evals"), ` · ${ev.id}`)),
    h("section", { class: "card" }, h("h2", {}, "Runs"), body));
  return poll(async () => {
    const found = await all(`/evals/${encodeURIComponent(evalId)}/runs`, { order: "desc", limit: 100 });
    redraw(body, JSON.stringify(found), () => replace(body, table([
      { title: "Run", cell: (r) => h("a", { href: `#/evals/${evalId}?run=${r.id}` }, r.name) },
      { title: "Model", cell: (r) => r.model || r.data_source.type },
      { title: "Status", cell: (r) => badge(r.status) },
      { title: "Items", cell: counts },
      ...ev.testing_criteria.map((g) => ({
        title: g.name, cell: (r) => {
          const found = r.per_testing_criteria_results.find((x) => x.testing_criteria === g.name);
          return found ? rate(found) : "";
        },
      })),
      { title: "Created", cell: (r) => when(r.created_at) },
    ], found, { empty: "No runs yet: start one with client.evals.runs.create(...)." })));
    return found.some((r) => r.status === "queued" || r.status === "in_progress");
  }, 2000);
}

async function run(main, evalId, runId) {
  const head = h("div", {});
  const body = h("div", {});
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Eval run"),
      h("p", {}, h("a", { href: `#/evals/${evalId}` }, "← Runs"), ` · ${runId}`)),
    h("section", { class: "card" }, head), h("section", { class: "card" }, h("h2", {}, "Output items"), body));
  return poll(async () => {
    const found = await get(`/evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(runId)}`);
    const items = await all(`/evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(runId)}/output_items`, { limit: 100 });
    redraw(head, JSON.stringify(found), () => replace(head,
      h("h2", {}, found.name, " ", badge(found.status)),
      h("p", {}, `${found.model || found.data_source.type} · ${counts(found)}`),
      found.error ? h("div", { class: "error", role: "alert" }, found.error.message) : "",
      table([
        { title: "Grader", cell: (r) => r.testing_criteria },
        { title: "Passed", cell: rate },
      ], found.per_testing_criteria_results)));
    redraw(body, JSON.stringify(items), () => replace(body, table([
      { title: "#", cell: (i) => String(i.datasource_item_id) },
      { title: "Item", cell: (i) => h("code", {}, JSON.stringify(i.datasource_item).slice(0, 160)) },
      { title: "Answer", cell: (i) => (i.sample.output[0] || {}).content || (i.sample.error ? i.sample.error.message : "") },
      { title: "Results", cell: (i) => h("ul", {}, i.results.map((r) => h("li", {},
        `${r.name}: ${r.not_applicable ? "n/a" : r.error ? `error — ${r.error}` : `${r.passed ? "pass" : "fail"} (${r.score})`}`))) },
      { title: "Status", cell: (i) => badge(i.status) },
    ], items, { empty: "No items graded yet." })));
    return found.status === "queued" || found.status === "in_progress";
  }, 2000);
}
