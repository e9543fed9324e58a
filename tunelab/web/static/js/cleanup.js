// Clean up: what the service holds (GET /v1/storage: deployments, exports, fine-tuned models, jobs with their
// checkpoints, files, comparisons, stored chat completions, evals, and the disk each takes), deleted all or by
// selection in dependency order — deployments → exports → models → jobs → result files → uploads → comparisons →
// stored completions → evals — as `tunelab clean` does (a running export reads its model, so exports go first). A deletion the
// service refuses (a running export or job, say) is shown with its reason; nothing is skipped silently.

import { del, get, post } from "./api.js";
import { bytes, confirmDialog, errorText, h, progress, replace } from "./ui.js";

const ROUTES = { deployment: (id) => `/deployments/${encodeURIComponent(id)}`, export: (id) => `/exports/${id}`, model: (id) => `/models/${encodeURIComponent(id)}`,
                 job: (id) => `/fine_tuning/jobs/${id}`, file: (id) => `/files/${id}`, evaluation: (id) => `/evaluations/${id}`,
                 stored: (id) => `/chat/completions/${id}`, eval: (id) => `/evals/${id}` };
const GROUPS = [["deployment", "Deployments"], ["export", "Exports with their files"], ["model", "Fine-tuned models"], ["job", "Fine-tuning jobs (checkpoints and run directories)"],
                ["file", "Files"], ["evaluation", "Comparisons"], ["stored", "Stored chat completions"],
                ["eval", "Evals with their runs"]];

// Everything to delete, in the order it must go: [{kind, id, what, bytes}].
function plan(storage) {
  const files = [...storage.files].sort((a, b) => (a.purpose !== "fine-tune-results") - (b.purpose !== "fine-tune-results"));
  return [
    ...storage.deployments.map((d) => ({ kind: "deployment", id: d.name, what: d.model, bytes: 0 })),
    ...storage.exports.map((e) => ({ kind: "export", id: e.id, what: described(e), bytes: e.bytes })),
    ...storage.models.map((m) => ({ kind: "model", id: m.id, what: "fine-tuned model", bytes: m.bytes })),
    ...storage.jobs.map((j) => ({ kind: "job", id: j.id, what: `${j.status}, ${j.checkpoints} checkpoints`, bytes: j.bytes })),
    ...files.map((f) => ({ kind: "file", id: f.id, what: `${f.filename} (${f.purpose})`, bytes: f.bytes })),
    ...storage.evaluations.map((e) => ({ kind: "evaluation", id: e.id, what: `comparison (${e.status})`, bytes: 0 })),
    ...(storage.stored_completions || []).map((c) => ({ kind: "stored", id: c.id, what: c.model, bytes: 0 })),
    ...(storage.evals || []).map((e) => ({ kind: "eval", id: e.id, what: `${e.name} (${e.runs} runs)`, bytes: 0 })),
  ];
}

// An export in a few words: "gguf q8_0 + Modelfile of ft:… (succeeded, 2 files)", as `tunelab clean` shows it.
function described(e) {
  const what = `${e.format}${e.quantization ? ` ${e.quantization}` : ""}${e.ollama ? " + Modelfile" : ""}`;
  return `${what} of ${e.model} (${e.status}, ${e.files} file${e.files === 1 ? "" : "s"})`;
}

export async function render(main) {
  const body = h("div", {});
  const outcome = h("div", { "aria-live": "polite" });
  replace(main, h("header", { class: "page" }, h("h1", {}, "Clean up"),
    h("p", {}, "Everything the service holds, with the disk it takes. Delete all of it or a selection; it goes in dependency order (deployments, exports, models, jobs, files, comparisons, stored chat completions, evals). Base models are kept.")),
  outcome, body);

  async function show() {
    const storage = await get("/storage");
    const items = plan(storage);
    const boxes = new Map();
    const total = h("strong", {});
    const update = () => {
      const chosen = items.filter((item) => boxes.get(item).checked);
      total.textContent = `${chosen.length} selected · ${bytes(chosen.reduce((sum, i) => sum + i.bytes, 0))}`;
      deleteSelected.disabled = !chosen.length;
    };
    const deleteSelected = h("button", { type: "button", class: "danger", onclick: () => run(items.filter((i) => boxes.get(i).checked)) }, "Delete selected");
    const deleteAll = h("button", { type: "button", class: "danger", disabled: !items.length, onclick: () => run(items) }, "Delete all");
    const groups = GROUPS.map(([kind, title]) => {
      const rows = items.filter((i) => i.kind === kind);
      const all = h("input", { type: "checkbox", "aria-label": `select all ${title.toLowerCase()}`, disabled: !rows.length, onchange: () => {
        rows.forEach((r) => { boxes.get(r).checked = all.checked; });
        update();
      } });
      return h("section", { class: "card", dataset: { kind } }, h("h2", {}, h("label", { class: "check" }, all, ` ${title}`), h("small", {}, ` ${rows.length}`)),
        rows.length ? h("table", {}, h("tbody", {}, rows.map((item) => {
          const box = h("input", { type: "checkbox", name: `${item.kind}:${item.id}`, onchange: update });
          boxes.set(item, box);
          return h("tr", { dataset: { item: `${item.kind}:${item.id}` } }, h("td", {}, box), h("td", {}, h("code", {}, item.id)), h("td", {}, item.what), h("td", { class: "num" }, item.bytes ? bytes(item.bytes) : ""));
        }))) : h("p", { class: "empty" }, "None."));
    });
    const kept = storage.base_models.map((m) => `${m.name} (${bytes(m.bytes)})`).join(", ") || "none";
    replace(body,
      h("section", { class: "card summary" }, h("p", {}, `Removable: ${bytes(storage.removable_bytes)} · base models kept: ${kept}`),
        h("div", { class: "actions" }, total, deleteSelected, deleteAll)),
      groups);
    update();
  }

  async function run(chosen) {
    if (!chosen.length) return;
    const size = bytes(chosen.reduce((sum, i) => sum + i.bytes, 0));
    if (!(await confirmDialog("Delete", `Delete these ${chosen.length} items (${size}), in dependency order? This cannot be undone.`))) return;
    const lines = h("ol", { class: "log" });
    const bar = h("div", {});
    replace(outcome, h("section", { class: "card" }, h("h2", {}, "Deleting"), bar, lines));
    let freed = 0;
    const refused = [];
    for (const [i, item] of chosen.entries()) {
      replace(bar, progress(i, chosen.length, `${i} of ${chosen.length}`));
      const line = h("li", {}, `${item.kind} ${item.id}: deleting…`);
      lines.append(line);
      try {
        await del(ROUTES[item.kind](item.id));
        line.textContent = `Deleted ${item.kind} ${item.id}`;
        line.className = "ok";
        freed += item.bytes;
      } catch (error) {
        refused.push(item);
        line.textContent = `Not deleted ${item.kind} ${item.id}: ${errorText(error)}`;
        line.className = "bad";
      }
    }
    // Deleted rows linger in the state database's free pages until it is rewritten.
    const compacted = await post("/storage/compact", {});
    freed += Math.max(0, compacted.database_bytes_before - compacted.database_bytes);
    replace(bar, progress(chosen.length, chosen.length, `Freed ${bytes(freed)}${refused.length ? ` · ${refused.length} of ${chosen.length} not deleted (see below)` : ""} · state database compacted to ${bytes(compacted.database_bytes)}`));
    await show();
  }

  await show();
  return undefined;
}
