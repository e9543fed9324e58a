// Exports: the dialog that writes a fine-tuned model, a checkpoint or (as GGUF) a base model as files other tools
// load — format, quantization, an Ollama Modelfile and its system message — then follows the export with a
// progress bar and lists the files with their sizes and download buttons; and the list of exports on the models
// page. Everything goes through /v1/exports.

import { del, download, get, post } from "./api.js";
import { badge, busy, bytes, confirmDialog, dialog, errorBox, field, h, notice, poll, progress, redraw, replace, select, table, when } from "./ui.js";

const FORMATS = [
  ["peft", "PEFT adapter — the LoRA weights with the tokenizer, for PeftModel.from_pretrained"],
  ["merged", "Merged model — safetensors with the adapter merged in, for AutoModelForCausalLM"],
  ["gguf", "GGUF — one file for llama.cpp and Ollama"],
];
const QUANTS = [
  ["f16", "f16 — 16-bit, closest to the fine-tune"],
  ["q8_0", "q8_0 — 8-bit, about half the size"],
  ["q4_0", "q4_0 — 4-bit, smallest"],
];
const FINISHED = ["succeeded", "failed"];

// The path of one of an export's files (names may hold directories: each part is encoded on its own).
export function filePath(exportId, name) {
  return `/exports/${encodeURIComponent(exportId)}/files/${name.split("/").map(encodeURIComponent).join("/")}`;
}

// The export dialog for `model` (base models export as GGUF only); resolves once it is closed.
export function exportDialog(model, { base = false, onStarted } = {}) {
  return dialog(`Export ${model}`, (close) => {
    const format = select(base ? FORMATS.filter(([value]) => value === "gguf") : FORMATS, base ? "gguf" : "peft", { name: "format" });
    const quant = select(QUANTS, "f16", { name: "quantization" });
    const ollama = h("input", { type: "checkbox", name: "ollama" });
    const system = h("textarea", { name: "system", rows: 3, maxlength: 20000, placeholder: "the training data's system message, when all its conversations share one" });
    const ggufOnly = h("div", {},
      field("Quantization", quant, "The precision of the GGUF file's weights."),
      h("label", { class: "check" }, ollama, " Also write an Ollama Modelfile (FROM the GGUF, the chat template, the stop tokens)"));
    const systemField = field("System message for Ollama (optional)", system, "Written as the Modelfile's SYSTEM line.");
    const sync = () => {
      const gguf = format.value === "gguf";
      ggufOnly.hidden = !gguf;
      quant.disabled = !gguf;
      ollama.disabled = !gguf;
      systemField.hidden = !(gguf && ollama.checked);
    };
    format.addEventListener("change", sync);
    ollama.addEventListener("change", sync);
    sync();
    const problem = h("div", {});
    const submit = h("button", { type: "submit", class: "primary" }, "Export");
    const body = h("div", { class: "body" });
    const form = h("form", { onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      const request = { model, format: format.value };
      if (format.value === "gguf") {
        request.quantization = quant.value;
        request.ollama = ollama.checked;
        if (ollama.checked && system.value.trim()) request.system = system.value.trim();
      }
      let started;
      try {
        started = await post("/exports", request);
      } catch (error) {
        replace(problem, errorBox(error));
        submit.disabled = false;
        return;
      }
      if (onStarted) onStarted(started);
      follow(body, started, close);
    } },
    field("Format", format, "Every format keeps the chat template and the end-of-turn token training used."),
    ggufOnly, systemField, problem,
    h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close(undefined) }, "Cancel"), submit));
    replace(body, form);
    setTimeout(() => format.focus(), 0);
    return body;
  });
}

// Follow an export in `body`: the progress bar while it runs, then its files (or its error).
function follow(body, started, close) {
  const status = h("div", { role: "status", "aria-live": "polite" });
  const files = h("div", {});
  const done = h("button", { type: "button", onclick: () => { stop(); close(undefined); } }, "Close");
  replace(body, status, files, h("div", { class: "actions" }, done));
  const stop = poll(async () => {
    const found = await get(`/exports/${encodeURIComponent(started.id)}`);
    showStatus(status, found);
    if (found.status === "succeeded") {
      redraw(files, found.id, () => replace(files, fileTable(found)));
      done.focus();
    }
    if (found.status === "failed") done.focus();
    return !FINISHED.includes(found.status);
  }, 500);
  showStatus(status, started);
}

function showStatus(node, found) {
  const percent = Math.round(100 * found.progress);
  const label = found.status === "succeeded" ? `done · ${bytes(found.bytes)} in ${found.files.length} files`
    : found.status === "failed" ? "failed" : `${percent}% · ${found.stage || found.status}`;
  const bar = progress(percent, 100, label);
  bar.setAttribute("aria-label", `export ${found.id}`);
  replace(node, h("p", {}, badge(found.status), " ", h("code", {}, found.id), ` · ${found.format}${found.quantization ? ` ${found.quantization}` : ""}${found.ollama ? " + Ollama Modelfile" : ""}`),
    bar, found.error ? errorBox({ message: `${found.error.code}: ${found.error.message}` }) : null);
  node.dataset.status = found.status;
}

// The files of a succeeded export, each with its size and a download button.
export function fileTable(found) {
  return h("div", { class: "export-files" }, table([
    { title: "File", cell: (f) => h("code", {}, f.name) },
    { title: "Size", cell: (f) => bytes(f.bytes), class: "num" },
    { title: "", cell: (f) => h("button", { type: "button", class: "small", "aria-label": `Download ${f.name}`, onclick: (event) => busy(event.target, () => download(filePath(found.id, f.name), f.name.split("/").pop()), "Downloading…") }, "Download") },
  ], found.files, { rowAttrs: (f) => ({ dataset: { file: f.name } }) }));
}

// The exports on the service, newest first, refreshed while one runs; returns a function that stops it.
export function exportsList(container) {
  async function tick() {
    const list = (await get("/exports", { limit: 100 })).data;
    redraw(container, JSON.stringify(list.map((e) => [e.id, e.status, Math.round(100 * e.progress)])), () => replace(container, table([
      { title: "Export", cell: (e) => h("code", {}, e.id) },
      { title: "Model", cell: (e) => h("code", {}, e.model) },
      { title: "Format", cell: (e) => `${e.format}${e.quantization ? ` ${e.quantization}` : ""}${e.ollama ? " + Modelfile" : ""}` },
      { title: "Status", cell: (e) => (FINISHED.includes(e.status) ? [badge(e.status), e.error ? h("small", { class: "bad" }, ` ${e.error.message}`) : null] : progress(Math.round(100 * e.progress), 100, e.stage || e.status)) },
      { title: "Size", cell: (e) => (e.status === "succeeded" ? bytes(e.bytes) : ""), class: "num" },
      { title: "Created", cell: (e) => when(e.created_at) },
      { title: "", cell: (e) => (e.status === "succeeded" ? h("button", { type: "button", class: "small", onclick: () => showFiles(e) }, "Files") : "") },
      { title: "", cell: (e) => (FINISHED.includes(e.status) ? h("button", { type: "button", class: "small danger", onclick: (event) => remove(event.target, e.id) }, "Delete") : "") },
    ], list, { empty: "No exports yet: select “Export” on a fine-tuned model.", rowAttrs: (e) => ({ dataset: { export: e.id, status: e.status } }) })));
    return list.some((e) => !FINISHED.includes(e.status));
  }
  async function remove(button, id) {
    if (!(await confirmDialog("Delete export", `Delete ${id} and its files?`))) return;
    await busy(button, async () => {
      await del(`/exports/${encodeURIComponent(id)}`);
      notice(`Deleted ${id}`);
      restart();
    }, "Deleting…");
  }
  let stop = () => {};
  function restart() {
    stop();
    stop = poll(tick, 1000);
  }
  restart();
  return { restart, stop: () => stop() };
}

function showFiles(found) {
  return dialog(`Files of ${found.id}`, (close) => h("div", { class: "body" },
    h("p", { class: "hint" }, `${found.model} · ${found.format}${found.quantization ? ` ${found.quantization}` : ""} · ${bytes(found.bytes)}`),
    fileTable(found),
    h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close(undefined) }, "Close"))));
}
