// Models + endpoints: base models with what the catalog knows of them (architecture, parameters, context length,
// chat template, fast paths) and fine-tuned models; "+ Deploy model" (a base model, a fine-tune or one of its
// checkpoints) with deployment name, type Standard, tokens-per-minute limit and content filter; deployments
// with their provisioning state, refreshed until Succeeded; "Export" on a model, and the exports with their files;
// delete.

import { del, get, put } from "./api.js";
import { exportDialog, exportsList } from "./export.js";
import { badge, busy, confirmDialog, dialog, errorBox, field, go, h, notice, poll, redraw, replace, select, table, when } from "./ui.js";

export async function render(main, { query }) {
  const models = h("div", {});
  const deployments = h("div", {});
  const exports = h("div", {});
  const menu = h("div", { class: "menu", hidden: true },
    h("button", { type: "button", onclick: () => deploy("base") }, "Deploy base model"),
    h("button", { type: "button", onclick: () => deploy("fine-tuned") }, "Deploy fine-tuned model"));
  const add = h("button", { type: "button", class: "primary", "aria-haspopup": "true", onclick: () => { menu.hidden = !menu.hidden; } }, "+ Deploy model");
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Models + endpoints"),
      h("p", {}, "Deploy a base model, a fine-tuned model or a checkpoint as a named endpoint, then chat with it in the playground."),
      h("div", { class: "actions dropdown" }, add, menu)),
    h("section", { class: "card" }, h("h2", {}, "Deployments"), deployments),
    h("section", { class: "card" }, h("h2", {}, "Models"), models),
    h("section", { class: "card", id: "exports" }, h("h2", {}, "Exports"),
      h("p", { class: "hint" }, "A fine-tuned model or a checkpoint as files to take elsewhere: a PEFT adapter, a merged model, or a GGUF file for llama.cpp and Ollama."), exports));

  let known = [];
  async function deploy(kind, model) {
    menu.hidden = true;
    const created = await deployDialog(kind, model, known);
    if (created) {
      notice(`Deploying ${created.name}…`);
      restart();
    }
  }

  async function showModels() {
    const list = (await get("/models")).data;
    known = list;
    replace(models, table([
      { title: "Model", cell: (m) => h("code", {}, m.id) },
      { title: "Kind", cell: (m) => m.kind },
      { title: "Details", cell: (m) => (m.kind === "base" ? baseDetails(m) : `from ${m.parent}`) },
      { title: "Created", cell: (m) => when(m.created) },
      { title: "", cell: (m) => (m.kind !== "base" || m.installed ? h("button", { type: "button", class: "small", onclick: () => deploy(m.kind, m.id) }, "Deploy") : "") },
      { title: "", cell: (m) => (m.kind !== "base" || m.installed ? h("button", { type: "button", class: "small", "aria-label": `Export ${m.id}`, onclick: () => startExport(m.id, m.kind === "base") }, "Export") : "") },
      { title: "", cell: (m) => (m.kind === "fine-tuned" ? h("button", { type: "button", class: "small danger", onclick: (event) => removeModel(event.target, m.id) }, "Delete") : "") },
    ], list, { rowAttrs: (m) => ({ dataset: { model: m.id } }) }));
  }

  async function startExport(id, base) {
    await exportDialog(id, { base, onStarted: () => listed.restart() });
    listed.restart();
  }

  async function removeModel(button, id) {
    if (!(await confirmDialog("Delete model", `Delete ${id} and its weights?`))) return;
    await busy(button, async () => {
      await del(`/models/${encodeURIComponent(id)}`);
      notice(`Deleted ${id}`);
      await showModels();
    }, "Deleting…");
  }

  async function showDeployments() {
    const list = (await get("/deployments")).value;
    redraw(deployments, JSON.stringify(list.map((d) => [d.name, d.properties])), () => replace(deployments, table([
      { title: "Name", cell: (d) => h("strong", {}, d.name) },
      { title: "Model", cell: (d) => h("code", {}, d.properties.model.name) },
      { title: "Type", cell: (d) => d.sku.name },
      { title: "Tokens per minute", cell: (d) => `${d.sku.capacity}K`, class: "num" },
      { title: "Content filter", cell: (d) => d.properties.raiPolicyName },
      { title: "Engine", cell: (d) => engineOf(d.properties.engine) },
      { title: "Provisioning state", cell: (d) => [badge(d.properties.provisioningState), d.properties.error ? h("small", { class: "bad" }, ` ${d.properties.error}`) : null] },
      { title: "", cell: (d) => h("button", { type: "button", class: "small", disabled: d.properties.provisioningState !== "Succeeded", onclick: () => go(`#/playground?deployment=${encodeURIComponent(d.name)}`) }, "Open in playground") },
      { title: "", cell: (d) => h("button", { type: "button", class: "small danger", onclick: (event) => removeDeployment(event.target, d.name) }, "Delete") },
    ], list, { empty: "No deployments yet: select “+ Deploy model”.", rowAttrs: (d) => ({ dataset: { deployment: d.name, state: d.properties.provisioningState } }) })));
    return list.some((d) => ["Creating", "Accepted"].includes(d.properties.provisioningState));
  }

  async function removeDeployment(button, name) {
    if (!(await confirmDialog("Delete deployment", `Delete the deployment ${name}? Its model stays.`))) return;
    await busy(button, async () => {
      await del(`/deployments/${encodeURIComponent(name)}`);
      notice(`Deleted ${name}`);
      restart();
    }, "Deleting…");
  }

  let stop = () => {};
  function restart() {
    stop();
    stop = poll(showDeployments, 1000);
  }
  await showModels();
  restart();
  const listed = exportsList(exports);
  const preset = query.get("deploy");
  if (preset) deploy(preset.startsWith("ft:") ? "fine-tuned" : "base", preset);
  return () => {
    stop();
    listed.stop();
  };
}

// What the catalog knows of a base model; the fields it does not report are left out.
function baseDetails(m) {
  const facts = [
    m.architecture ? ["Architecture", m.architecture] : null,
    ["Parameters", m.parameters],
    m.context_length ? ["Context", `${Number(m.context_length).toLocaleString()} tokens`] : null,
    ["Chat template", m.chat_template],
    ["Installed", m.installed ? "yes" : "no"],
  ].filter(Boolean);
  const fast = m.fast_paths;
  if (fast) {
    const yes = (on) => (on ? "yes" : "no");
    facts.push(["Fast paths", `training ${yes(fast.training)} · decoding ${yes(fast.decoding)}`]);
    if (fast.note) facts.push(["Note", fast.note]);
  }
  return h("dl", { class: "facts compact", dataset: { model: m.id } }, facts.map(([label, value]) => [h("dt", {}, label), h("dd", {}, String(value ?? "–"))]));
}

// The engines a deployment can run on (docs/scaling.md); an engine URL is set through the API or the CLI.
const ENGINES = [
  ["local", "tunelab's engine, in the service"],
  ["llama.cpp", "llama.cpp: a llama-server the service starts"],
  ["vllm", "vLLM: a vLLM server the service starts (GPU)"],
];

function engineOf(engine) {
  if (!engine) return "local";
  const where = engine.url || engine.type;
  return engine.state && engine.type !== "local" ? `${where} (${engine.state.toLowerCase()})` : where;
}

// The deploy dialog; resolves with the created deployment, or undefined.
async function deployDialog(kind, preset, models) {
  const [filters, existing] = await Promise.all([get("/content_filters"), get("/deployments")]);
  const taken = new Set(existing.value.map((d) => d.name));
  const candidates = models.filter((m) => (kind === "base" ? m.kind === "base" && m.installed : m.kind === "fine-tuned"));
  if (preset && !candidates.some((m) => m.id === preset) && preset.includes(":ckpt-step-")) {
    candidates.push({ id: preset.split(":ckpt-step-")[0], kind: "fine-tuned", fine_tuning_job_id: null });
  }
  if (!candidates.length) {
    notice(kind === "base" ? "No base model is installed." : "No fine-tuned model yet: fine-tune one first.", "error");
    return undefined;
  }
  const modelOf = (id) => (id || "").split(":ckpt-step-")[0];
  return dialog(kind === "base" ? "Deploy base model" : "Deploy fine-tuned model", (close) => {
    const model = select(candidates.map((m) => m.id), modelOf(preset) || candidates[0].id, { name: "model" });
    const checkpoint = select([["", "the final model"]], "", { name: "checkpoint" });
    const name = h("input", { name: "name", required: true, maxlength: 64 });
    const type = select(["Standard"], "Standard", { name: "type" });
    const tpm = h("input", { name: "tpm", type: "number", min: 1, max: 1000, step: 1, value: "5" });
    const filter = select([...filters.value.map((f) => f.name), "None"], "Default", { name: "content_filter" });
    const engine = select(ENGINES, "local", { name: "engine" });
    const problem = h("div", {});
    const suggest = () => {
      const id = model.value;
      const base = id.startsWith("ft:") ? (id.split(":")[3] || "ft") : id.toLowerCase();
      let candidate = (base.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 60) || "model").replace(/^[^A-Za-z0-9]+/, "m");
      for (let i = 2; taken.has(candidate); i++) candidate = `${base.slice(0, 58)}-${i}`;
      name.value = candidate;
    };
    async function loadCheckpoints() {
      const found = models.find((m) => m.id === model.value);
      const job = found && found.fine_tuning_job_id;
      replace(checkpoint, h("option", { value: "" }, "the final model"));
      if (!job) return;
      const list = await get(`/fine_tuning/jobs/${job}/checkpoints`, { limit: 100 });
      for (const c of list.data) checkpoint.append(h("option", { value: c.fine_tuned_model_checkpoint }, `checkpoint at step ${c.step_number}`));
      if (preset && preset.includes(":ckpt-step-")) checkpoint.value = preset;
    }
    model.addEventListener("change", () => { suggest(); if (kind !== "base") loadCheckpoints(); });
    suggest();
    if (kind !== "base") loadCheckpoints();
    const submit = h("button", { type: "submit", class: "primary" }, "Deploy");
    const form = h("form", { class: "body", onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      const chosen = checkpoint.value || model.value;
      try {
        const created = await put(`/deployments/${encodeURIComponent(name.value.trim())}`, {
          sku: { name: type.value, capacity: Number(tpm.value) },
          properties: { model: { format: "OpenAI", name: chosen }, raiPolicyName: filter.value, engine: { type: engine.value } },
        });
        close(created);
      } catch (error) {
        replace(problem, errorBox(error));
        submit.disabled = false;
      }
    } },
    field("Model", model),
    kind !== "base" ? field("Checkpoint", checkpoint, "Deploy the final model, or the model as it was at a checkpoint.") : null,
    field("Deployment name", name, "2–64 letters, digits, '.', '_' or '-'; chat with it by this name."),
    field("Deployment type", type),
    field("Tokens per minute rate limit (thousands)", tpm, "5 = 5,000 tokens and 30 requests per minute."),
    field("Content filter", filter, "Default blocks medium and high severity hate, sexual, violence and self-harm, in prompts and answers."),
    field("Engine", engine, "What decodes the answers; limits, filter and usage stay the same on each."),
    problem,
    h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close(undefined) }, "Cancel"), submit));
    return form;
  });
}
