// A fine-tuning job's page: status timeline, resolved hyperparameters, trained tokens and ETA; the Metrics tab
// (train/valid loss and token accuracy per step, growing while the job runs); checkpoints with their metrics;
// events; results.csv; Cancel / Pause / Resume; Export of the fine-tuned model or of a checkpoint.

import { download, get, post } from "./api.js";
import { markPoint, setPoints, stepChart } from "./charts.js";
import { exportDialog } from "./export.js";
import { badge, busy, confirmDialog, duration, errorBox, go, h, notice, number, poll, progress, redraw, replace, table, when } from "./ui.js";

const UNFINISHED = ["validating_files", "queued", "running", "paused"];
const TIMELINE = [
  ["validating_files", "Validating files", /^Validating /],
  ["queued", "Queued", /^Files validated/],
  ["running", "Running", /^Fine-tuning job started/],
];
const FINAL = { succeeded: /successfully completed/, failed: /failed/i, cancelled: /cancelled/i };

export async function render(main, { id, query }) {
  const header = h("header", { class: "page" });
  const tabs = ["Details", "Metrics", "Checkpoints", "Events"];
  const panels = Object.fromEntries(tabs.map((t) => [t, h("section", { class: "card panel", dataset: { panel: t } })]));
  const tabBar = h("div", { class: "tabs", role: "tablist" }, tabs.map((t) =>
    h("button", { type: "button", role: "tab", dataset: { tab: t }, onclick: () => show(t) }, t)));
  function show(tab) {
    for (const t of tabs) {
      panels[t].hidden = t !== tab;
      tabBar.querySelector(`[data-tab="${t}"]`).setAttribute("aria-selected", String(t === tab));
    }
  }
  const lossCanvas = h("canvas", { id: "loss-chart", "aria-label": "loss per step" });
  const accuracyCanvas = h("canvas", { id: "accuracy-chart", "aria-label": "token accuracy per step" });
  const latest = h("p", { class: "hint" });
  const recommended = h("p", { class: "recommended", hidden: true });
  replace(panels.Metrics, latest, recommended, h("div", { class: "charts" }, h("div", { class: "chart" }, lossCanvas), h("div", { class: "chart" }, accuracyCanvas)));
  replace(main, h("a", { href: "#/fine-tuning", class: "back" }, "← Fine-tuning"), header, tabBar, Object.values(panels));
  show(query.get("tab") === "metrics" ? "Metrics" : "Details");

  const loss = stepChart(lossCanvas, "Loss", [["train_loss", "training loss"], ["valid_loss", "validation loss"], ["full_valid_loss", "full validation loss"]], "loss");
  const accuracy = stepChart(accuracyCanvas, "Token accuracy", [["train_mean_token_accuracy", "training"], ["valid_mean_token_accuracy", "validation"], ["full_valid_mean_token_accuracy", "full validation"]], "mean token accuracy");
  let newest = []; // every event so far, newest first (the API's order), fetched incrementally
  const seen = new Set();

  async function fetchEvents() {
    const fresh = [];
    let after;
    for (;;) {
      const page = await get(`/fine_tuning/jobs/${id}/events`, { limit: 200, after });
      for (const event of page.data) {
        if (seen.has(event.id)) {
          newest = [...fresh, ...newest];
          return;
        }
        seen.add(event.id);
        fresh.push(event);
      }
      if (!page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    newest = [...fresh, ...newest];
  }

  async function tick() {
    const [job] = await Promise.all([get(`/fine_tuning/jobs/${id}`), fetchEvents()]);
    const ordered = [...newest].reverse();
    const metrics = ordered.filter((e) => e.type === "metrics" && e.data).map((e) => e.data).sort((a, b) => a.step - b.step);
    const last = metrics[metrics.length - 1];
    const signature = JSON.stringify([job.status, job.fine_tuned_model, job.result_files]);
    if (signature !== header.dataset.signature) { // re-drawn only when it changes: a button is never swapped under a click
      header.dataset.signature = signature;
      showHeader(header, job, tick);
    }
    setPoints(loss, metrics);
    setPoints(accuracy, metrics);
    showRecommended(recommended, loss, job.recommended_checkpoint);
    lossCanvas.dataset.points = String(metrics.length);
    const score = last?.train_reward_margin !== undefined // a DPO job: its margin, not a token accuracy
      ? `reward margin ${number(last.train_reward_margin)}, reward accuracy ${number(last.train_reward_accuracy)}`
      : `token accuracy ${number(last?.train_mean_token_accuracy)}`;
    replace(latest, last ? `Step ${last.step} of ${last.total_steps}: training loss ${number(last.train_loss)}, ${score}` +
      (last.valid_loss !== undefined && last.valid_loss !== null ? `, validation loss ${number(last.valid_loss)}` : "") : "No metrics yet: they appear once training starts.");
    details(panels.Details, job, ordered, last);
    const lastMetrics = ordered.filter((e) => e.type === "metrics").pop();
    replace(panels.Events, h("p", { class: "hint" }, "Newest first; of the per-step metrics events, the latest is shown (the Metrics tab has them all)."), table([
      { title: "Time", cell: (e) => when(e.created_at) },
      { title: "Level", cell: (e) => e.level },
      { title: "Message", cell: (e) => e.message },
    ], [...ordered].reverse().filter((e) => e.type !== "metrics" || e === lastMetrics)));
    await checkpoints(panels.Checkpoints, job);
    return UNFINISHED.includes(job.status);
  }

  const stop = poll(tick, 1000);
  return () => {
    stop();
    loss.destroy();
    accuracy.destroy();
  };
}

// The checkpoint with the lowest full validation loss (the job's `recommended_checkpoint`): a star on the loss chart
// and the sentence that says why, with its model id to deploy.
function showRecommended(into, chart, found) {
  markPoint(chart, found ? { x: found.step, y: found.valid_loss } : null, "recommended checkpoint");
  into.hidden = !found;
  if (!found) return;
  into.dataset.step = String(found.step);
  redraw(into, JSON.stringify(found), () => replace(into, h("strong", {}, "Recommended checkpoint: "), h("code", { class: "model-id" }, found.id), ` — ${found.reason}.`,
    " ", h("button", { type: "button", class: "small", onclick: () => go(`#/models?deploy=${encodeURIComponent(found.id)}`) }, "Deploy")));
}

function showHeader(header, job, refresh) {
  const act = (action, label, working) => h("button", { type: "button", class: action === "cancel" ? "danger" : "", onclick: async (event) => {
    if (action === "cancel" && !(await confirmDialog("Cancel the job", `Cancel ${job.id}? It stops for good; its checkpoints are kept.`, "Cancel job"))) return;
    await busy(event.target, async () => {
      const changed = await post(`/fine_tuning/jobs/${job.id}/${action}`);
      notice(`Job ${changed.status.replace("_", " ")}`);
      await refresh();
    }, working);
  } }, label);
  const buttons = [];
  if (job.status === "running") buttons.push(act("pause", "Pause", "Pausing…"));
  if (job.status === "paused") buttons.push(act("resume", "Resume", "Resuming…"));
  if (UNFINISHED.includes(job.status)) buttons.push(act("cancel", "Cancel", "Cancelling…"));
  if (job.result_files.length) {
    buttons.push(h("button", { type: "button", onclick: (event) => busy(event.target, () => download(`/files/${job.result_files[0]}/content`, `${job.id}-results.csv`)) }, "Download results.csv"));
  }
  if (job.fine_tuned_model) {
    buttons.push(h("button", { type: "button", class: "primary", onclick: () => go(`#/models?deploy=${encodeURIComponent(job.fine_tuned_model)}`) }, "Deploy"));
    buttons.push(h("button", { type: "button", onclick: () => exportDialog(job.fine_tuned_model) }, "Export"));
  }
  replace(header, h("h1", {}, job.user_provided_suffix ? `${job.user_provided_suffix} · ` : "", job.id, " ", badge(job.status)),
    h("p", {}, `${job.model} → `, job.fine_tuned_model ? h("code", { class: "model-id" }, job.fine_tuned_model) : "fine-tuned model when it succeeds"),
    h("div", { class: "actions" }, buttons));
}

function details(panel, job, ordered, last) {
  const at = (pattern) => ordered.find((e) => pattern.test(e.message));
  const steps = TIMELINE.map(([status, title, pattern]) => ({ status, title, event: at(pattern) }));
  if (ordered.some((e) => /^Pausing the job/.test(e.message)) || job.status === "paused") {
    steps.push({ status: "paused", title: "Paused", event: at(/^Pausing the job/) });
  }
  const end = ["succeeded", "failed", "cancelled"].includes(job.status) ? job.status : "succeeded";
  steps.push({ status: end, title: end[0].toUpperCase() + end.slice(1), event: job.status === end ? (at(FINAL[end]) || { created_at: job.finished_at }) : null });
  const reached = steps.findIndex((s) => s.status === job.status);
  const eta = job.estimated_finish ? job.estimated_finish - Date.now() / 1000 : null;
  const hp = job.hyperparameters;
  replace(panel,
    h("ol", { class: "timeline" }, steps.map((s, i) => h("li", { class: i < reached || (i === reached && !UNFINISHED.includes(job.status)) ? "done" : i === reached ? "current" : "" },
      h("strong", {}, s.title), s.event ? h("small", {}, when(s.event.created_at)) : null))),
    job.status === "running" && last ? progress(last.step, last.total_steps, `step ${last.step} of ${last.total_steps}${eta !== null ? ` · about ${duration(eta)} left` : ""}`) : null,
    job.error ? errorBox({ message: `${job.error.code}: ${job.error.message}`, param: job.error.param }) : null,
    h("dl", { class: "facts" },
      [["Status", job.status.replace("_", " ")], ["Base model", job.model], ["Fine-tuned model", job.fine_tuned_model || "–"],
       ["Training file", h("a", { href: `#/data/${job.training_file}` }, job.training_file)],
       ["Validation file", job.validation_file ? h("a", { href: `#/data/${job.validation_file}` }, job.validation_file) : "none"],
       ["Epochs", hp.n_epochs], ["Batch size", hp.batch_size], ["Learning rate multiplier", hp.learning_rate_multiplier],
       ["Seed", job.seed], ["Trained tokens", job.trained_tokens === null ? "–" : job.trained_tokens.toLocaleString()],
       ["Created", when(job.created_at)], ["Finished", when(job.finished_at) || "–"],
       ["Estimated finish", job.estimated_finish ? `${when(job.estimated_finish)} (about ${duration(eta)} left)` : "–"]]
        .map(([label, value]) => [h("dt", {}, label), h("dd", {}, value instanceof Node ? value : String(value))])),
    hp.n_epochs === "auto" ? h("p", { class: "hint" }, "“auto” hyperparameters are resolved when training starts.") : null);
}

async function checkpoints(panel, job) {
  const list = await get(`/fine_tuning/jobs/${job.id}/checkpoints`, { limit: 100 });
  redraw(panel, JSON.stringify([list.data, job.recommended_checkpoint && job.recommended_checkpoint.id]), () => replace(panel, table([
    { title: "Step", cell: (c) => (job.recommended_checkpoint && job.recommended_checkpoint.id === c.fine_tuned_model_checkpoint ? [String(c.step_number), h("small", { class: "recommended" }, " ★ recommended")] : c.step_number), class: "num" },
    { title: "Checkpoint model", cell: (c) => h("code", {}, c.fine_tuned_model_checkpoint) },
    { title: "Training loss", cell: (c) => number(c.metrics.train_loss), class: "num" },
    { title: "Token accuracy", cell: (c) => number(c.metrics.train_mean_token_accuracy), class: "num" },
    { title: "Validation loss", cell: (c) => number(c.metrics.valid_loss), class: "num" },
    { title: "Full validation loss", cell: (c) => number(c.metrics.full_valid_loss), class: "num" },
    { title: "", cell: (c) => h("button", { type: "button", class: "small", onclick: () => go(`#/models?deploy=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`) }, "Deploy") },
    { title: "", cell: (c) => h("button", { type: "button", class: "small", "aria-label": `Export ${c.fine_tuned_model_checkpoint}`, onclick: () => exportDialog(c.fine_tuned_model_checkpoint) }, "Export") },
  ], list.data, { empty: "No checkpoints yet: one is written at the end of each epoch." })));
}
