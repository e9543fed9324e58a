// Fine-tuning: the jobs with their status, and the "+ Fine-tune model" wizard — base model, method (supervised, or
// DPO on preference pairs) and suffix, training and validation data (upload or pick), task parameters with their
// defaults (`auto` and what it resolves to), seed, review and Confirm (POST /v1/fine_tuning/jobs).

import { all, get, post, randomId } from "./api.js";
import { uploadFiles } from "./data.js";
import { badge, dialog, dropZone, duration, errorBox, errorText, field, go, h, poll, redraw, replace, select, table, when } from "./ui.js";

const UNFINISHED = ["validating_files", "queued", "running", "paused"];
const PARAMS = [["n_epochs", "Epochs"], ["batch_size", "Batch size"], ["learning_rate_multiplier", "Learning rate multiplier"]];
const METHODS = [["supervised", "Supervised (examples of good answers)"], ["dpo", "DPO preference (pairs of a preferred and a non-preferred answer)"]];
const BETA_AUTO = 0.1; // what "auto" resolves to for DPO's beta

export async function render(main, { query }) {
  const list = h("div", {});
  const add = h("button", { type: "button", class: "primary", onclick: () => wizard({}) }, "+ Fine-tune model");
  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Fine-tuning"),
      h("p", {}, "Fine-tune a base model on your examples. Jobs run in the background; open one to follow its metrics."),
      h("div", { class: "actions" }, add)),
    h("section", { class: "card" }, h("h2", {}, "Jobs"), list));
  const stop = poll(async () => {
    const jobs = await all("/fine_tuning/jobs", { limit: 100 });
    redraw(list, JSON.stringify(jobs), () => replace(list, table([
      { title: "Job", cell: (j) => h("a", { href: `#/fine-tuning/${j.id}` }, j.id) },
      { title: "Base model", cell: (j) => j.model },
      { title: "Suffix", cell: (j) => j.user_provided_suffix || "" },
      { title: "Status", cell: (j) => badge(j.status) },
      { title: "Created", cell: (j) => when(j.created_at) },
      { title: "Fine-tuned model", cell: (j) => (j.fine_tuned_model ? h("code", {}, j.fine_tuned_model) : "") },
    ], jobs, { empty: "No fine-tuning jobs yet: select “+ Fine-tune model”.", rowAttrs: (j) => ({ dataset: { job: j.id } }) })));
    return jobs.some((j) => UNFINISHED.includes(j.status));
  }, 3000);
  if (query.get("new")) {
    history.replaceState(null, "", "#/fine-tuning"); // a reload shows the list, not the wizard again
    wizard({ training_file: query.get("training_file"), model: query.get("model"), method: query.get("method") });
  }
  return stop;
}

// The wizard's steps, in a dialog; resolves when the job is created (and opens its page) or the dialog closes.
export async function wizard(preset) {
  const [models, defaults, files] = await Promise.all([get("/models"), get("/fine_tuning/defaults"), all("/files", { purpose: "fine-tune" })]);
  const choices = models.data.filter((m) => (m.kind === "base" && m.installed) || m.kind === "fine-tuned")
    .map((m) => [m.id, m.kind === "base" ? `${m.id} (base, ${m.parameters} parameters)` : `${m.id} (continue fine-tuning)`]);
  const state = { model: preset.model && choices.some(([id]) => id === preset.model) ? preset.model : defaults.model,
                  suffix: "", training_file: preset.training_file || "", validation_file: "", seed: "",
                  n_epochs: "auto", batch_size: "auto", learning_rate_multiplier: "auto", files,
                  method: preset.method === "dpo" ? "dpo" : "supervised", beta: "auto" };
  await dialog("Fine-tune a model", (close) => {
    const body = h("div", { class: "body wizard" });
    const steps = [basics, data, parameters, review];
    let at = 0;
    const show = () => replace(body, h("ol", { class: "steps" }, ["Base model", "Training data", "Task parameters", "Review"]
      .map((title, i) => h("li", { class: i === at ? "current" : i < at ? "done" : "" }, title))), steps[at](state, {
      next: () => { at += 1; show(); }, back: () => { at -= 1; show(); }, close, choices, defaults,
    }));
    show();
    return body;
  }, { wide: true });
}

function nav({ back, next }, nextLabel = "Next", check = () => true) {
  const problem = h("p", { class: "error", hidden: true, role: "alert" });
  const button = h("button", { type: "button", class: "primary", onclick: async () => {
    problem.hidden = true;
    button.disabled = true;
    let ok;
    try {
      ok = await check();
    } catch (error) {
      ok = errorText(error);
    } finally {
      button.disabled = false;
    }
    if (ok === true) next();
    else if (ok) {
      problem.textContent = ok;
      problem.hidden = false;
    }
  } }, nextLabel);
  return [problem, h("div", { class: "actions" }, back ? h("button", { type: "button", onclick: back }, "Back") : null, button)];
}

function basics(state, steps) {
  const model = select(steps.choices, state.model, { name: "model" });
  const suffix = h("input", { name: "suffix", value: state.suffix, placeholder: "ft-travel", maxlength: 64, pattern: "[A-Za-z0-9._\\-]+" });
  const method = select(METHODS, state.method, { name: "method" });
  return [
    field("Base model", model, `Default: ${steps.defaults.model}. A fine-tuned model continues from its weights.`),
    field("Method", method, "DPO trains on preference pairs (a file of input, preferred_output, non_preferred_output lines), best on top of a supervised fine-tune."),
    field("Model suffix", suffix, "Names the fine-tuned model ft:<base>:local:<suffix>:<id>; letters, digits, . _ -"),
    nav(steps, "Next", () => {
      state.model = model.value;
      state.method = method.value;
      state.suffix = suffix.value.trim();
      if (state.suffix && !/^[A-Za-z0-9._-]{1,64}$/.test(state.suffix)) return "The suffix is 1–64 letters, digits, '.', '_' or '-'.";
      return true;
    }),
  ];
}

function data(state, steps) {
  const summary = { training_file: h("div", { class: "check" }), validation_file: h("div", { class: "check" }) };
  const pickers = {};
  const report = {};

  function picker(key, optional) {
    const options = [...(optional ? [["", "None"]] : [["", "Choose a file…"]]), ...state.files.map((f) => [f.id, `${f.filename} (${f.id})`])];
    const chosen = select(options, state[key], { name: key, onchange: () => { state[key] = chosen.value; checkFile(key); } });
    const uploads = h("div", { class: "uploads" });
    const zone = dropZone(async ([file]) => {
      const [uploaded] = await uploadFiles([file], uploads);
      if (!uploaded) return;
      state.files.unshift(uploaded);
      chosen.prepend(h("option", { value: uploaded.id }, `${uploaded.filename} (${uploaded.id})`));
      if (optional) chosen.prepend(chosen.querySelector('option[value=""]'));
      chosen.value = uploaded.id;
      state[key] = uploaded.id;
      checkFile(key);
    }, { multiple: false, text: "Upload a file: drop it here, or" });
    pickers[key] = chosen;
    return h("div", { class: "picker" }, field(optional ? "Validation data (optional)" : "Training data", chosen, optional ? "Adds validation loss and accuracy to the metrics." : "Pick an uploaded file, or upload one."), zone, uploads, summary[key]);
  }

  async function checkFile(key) {
    report[key] = null;
    const id = state[key];
    if (!id) return replace(summary[key]);
    replace(summary[key], h("span", { class: "hint busy-text" }, "Checking the file…"));
    try {
      const found = await get(`/files/${id}/report`, { model: state.model.startsWith("ft:") ? undefined : state.model });
      report[key] = found;
      const file = found.files[0];
      replace(summary[key], h("span", { class: found.ok ? "ok" : "bad" },
        `${plural(file.examples, "example")} · ${plural(file.errors.length, "error")} · ${plural(file.warnings.length, "warning")}`,
        found.estimated_seconds && key === "training_file" ? ` · about ${duration(found.estimated_seconds)} of training with the defaults` : ""),
        " ", h("a", { href: `#/data/${id}`, target: "_blank" }, "open the report"));
    } catch (error) {
      report[key] = { error };
      replace(summary[key], errorBox(error));
    }
  }

  const body = [picker("training_file", false), picker("validation_file", true)];
  if (state.training_file) checkFile("training_file");
  if (state.validation_file) checkFile("validation_file");
  return [...body, nav(steps, "Next", async () => {
    if (!state.training_file) return "Choose or upload a training file.";
    if (state.validation_file === state.training_file) return "The validation file must be different from the training file.";
    for (const key of ["training_file", "validation_file"]) {
      if (state[key] && !report[key]) await checkFile(key);
      const found = report[key];
      if (found && !found.error && !found.ok) return `The ${key.replace("_", " ")} has errors: a job would fail in validation. Open its report to see them.`;
    }
    state.defaults = await get("/fine_tuning/defaults", { training_file: state.training_file });
    return true;
  })];
}

function parameters(state, steps) {
  const resolved = state.defaults || steps.defaults;
  const inputs = {};
  const rows = PARAMS.map(([key, title]) => {
    const spec = resolved.hyperparameters[key];
    const auto = spec.auto === null ? "auto" : `auto (${key === "learning_rate_multiplier" ? spec.auto.toFixed(1) : spec.auto})`;
    const input = h("input", { name: key, value: state[key] === "auto" ? "" : state[key], placeholder: auto, inputmode: "decimal" });
    inputs[key] = input;
    return field(title, input, `Default ${auto}: ${spec.rule}. Range ${spec.minimum}–${spec.maximum}.`);
  });
  const seed = h("input", { name: "seed", value: state.seed, placeholder: "random (recorded with the job)", inputmode: "numeric" });
  const beta = h("input", { name: "beta", value: state.beta === "auto" ? "" : state.beta, placeholder: `auto (${BETA_AUTO})`, inputmode: "decimal" });
  return [
    h("p", { class: "hint" }, resolved.training_file ? `For ${resolved.training_file.examples} training examples, “auto” resolves as shown. Leave a field empty to keep the default.` : "Leave a field empty to keep the default."),
    rows,
    state.method === "dpo" ? field("Beta", beta, `Default auto (${BETA_AUTO}): a higher beta keeps the fine-tune closer to the model it starts from. Range above 0 to 2.`) : null,
    field("Seed", seed, "The same seed gives the same loss curve."),
    nav(steps, "Next", () => {
      for (const [key, title] of PARAMS) {
        const text = inputs[key].value.trim();
        if (text && !Number.isFinite(Number(text))) return `${title} must be a number, or empty for auto.`;
        state[key] = text ? Number(text) : "auto";
      }
      if (state.method === "dpo") {
        const given = beta.value.trim();
        if (given && !(Number(given) > 0 && Number(given) <= 2)) return "Beta is a number above 0 and at most 2, or empty for auto.";
        state.beta = given ? Number(given) : "auto";
      }
      const text = seed.value.trim();
      if (text && !/^\d+$/.test(text)) return "The seed is a whole number (0 or more), or empty for a random one.";
      state.seed = text;
      return true;
    }),
  ];
}

function review(state, steps) {
  const resolved = state.defaults || steps.defaults;
  const shown = (key) => {
    const auto = resolved.hyperparameters[key].auto;
    if (state[key] !== "auto") return state[key];
    return `auto (${auto === null ? "resolved when training starts" : key === "learning_rate_multiplier" ? auto.toFixed(1) : auto})`;
  };
  const name = (id) => {
    const file = state.files.find((f) => f.id === id);
    return file ? `${file.filename} (${id})` : id || "none";
  };
  const problem = h("div", {});
  const confirm = h("button", { type: "button", class: "primary", onclick: async () => {
    confirm.disabled = true;
    confirm.textContent = "Creating…";
    const hyperparameters = Object.fromEntries(PARAMS.map(([key]) => [key, state[key]]));
    const body = { model: state.model, training_file: state.training_file };
    if (state.method === "dpo") body.method = { type: "dpo", dpo: { hyperparameters: { ...hyperparameters, beta: state.beta } } };
    else body.hyperparameters = hyperparameters;
    if (state.validation_file) body.validation_file = state.validation_file;
    if (state.suffix) body.suffix = state.suffix;
    if (state.seed) body.seed = Number(state.seed);
    try {
      const job = await post("/fine_tuning/jobs", body, { extraHeaders: { "Idempotency-Key": idempotency } });
      steps.close(job);
      go(`#/fine-tuning/${job.id}`);
    } catch (error) {
      replace(problem, errorBox(error));
      confirm.disabled = false;
      confirm.textContent = "Confirm";
    }
  } }, "Confirm");
  const idempotency = randomId(); // a second click never makes a second job
  return [
    h("dl", { class: "facts" },
      [["Base model", state.model], ["Method", state.method === "dpo" ? "DPO preference" : "Supervised"], ["Suffix", state.suffix || "(none)"], ["Training data", name(state.training_file)],
       ["Validation data", name(state.validation_file)], ["Epochs", shown("n_epochs")], ["Batch size", shown("batch_size")],
       ["Learning rate multiplier", shown("learning_rate_multiplier")],
       ...(state.method === "dpo" ? [["Beta", state.beta === "auto" ? `auto (${BETA_AUTO})` : state.beta]] : []), ["Seed", state.seed || "random"]]
        .map(([label, value]) => [h("dt", {}, label), h("dd", {}, String(value))])),
    problem,
    h("div", { class: "actions" }, h("button", { type: "button", onclick: steps.back }, "Back"), confirm),
  ];
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
