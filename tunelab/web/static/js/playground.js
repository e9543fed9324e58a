// Playground: chat with a deployment, streamed, under a system message set in the setup pane (Apply changes,
// Clear chat) with temperature, max tokens and top_p; Compare sends the same messages to two deployments side
// by side. Each answer shows its tokens and latency, and what the content filter found when it filtered.

import { get, streamChat } from "./api.js";
import { bubble } from "./data.js";
import { QUESTIONS, SYSTEM_MESSAGES } from "./lab.js";
import { errorText, field, h, replace, select } from "./ui.js";

export async function render(main, { query }) {
  const names = (await get("/deployments")).value.filter((d) => d.properties.provisioningState === "Succeeded").map((d) => d.name);
  if (!names.length) {
    replace(main, h("header", { class: "page" }, h("h1", {}, "Playground")),
      h("section", { class: "card" }, h("p", {}, "No deployment is ready yet. ", h("a", { href: "#/models" }, "Deploy a model"), " first, then open it here.")));
    return undefined;
  }
  const first = names.includes(query.get("deployment")) ? query.get("deployment") : names[0];
  const compare = query.get("compare") === "1" && names.length > 1;
  const pickA = select(names, first, { name: "deployment", "aria-label": "deployment" });
  const pickB = select(names, names.find((n) => n !== first), { name: "deployment_b", "aria-label": "second deployment" });
  const mode = h("input", { type: "checkbox", name: "compare", checked: compare, disabled: names.length < 2 });
  const system = h("textarea", { name: "system", rows: 6, placeholder: "You are an AI assistant that helps people find information." });
  const presets = select([["", "Presets from the lab…"], ...SYSTEM_MESSAGES.map(([title, text]) => [text, title])], "", { "aria-label": "system message presets", onchange: () => {
    if (presets.value) system.value = presets.value;
    presets.value = "";
    changed();
  } });
  const apply = h("button", { type: "button", disabled: true, onclick: () => {
    applied = system.value;
    changed();
    status.textContent = panes.some((p) => p.history.length) ? "Applied: the next messages use it. Clear the chat to start over with it." : "Applied.";
  } }, "Apply changes");
  const clear = h("button", { type: "button", onclick: () => {
    for (const pane of panes) pane.clear();
    status.textContent = "Chat cleared.";
  } }, "Clear chat");
  const status = h("p", { class: "hint", role: "status" });
  const temperature = h("input", { type: "range", name: "temperature", min: 0, max: 2, step: 0.05, value: "0.7" });
  const temperatureValue = h("output", {}, "0.7");
  temperature.addEventListener("input", () => { temperatureValue.textContent = temperature.value; });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, max: 4096, value: "256" });
  const topP = h("input", { type: "range", name: "top_p", min: 0.05, max: 1, step: 0.05, value: "1" });
  const topPValue = h("output", {}, "1");
  topP.addEventListener("input", () => { topPValue.textContent = topP.value; });
  let applied = "";
  const changed = () => { apply.disabled = system.value === applied; };
  system.addEventListener("input", changed);

  const input = h("textarea", { name: "message", rows: 2, placeholder: "Type a message — Enter sends, Shift+Enter adds a line", "aria-label": "message" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stopButton = h("button", { type: "button", hidden: true, onclick: () => panes.forEach((p) => p.abort()) }, "Stop");
  const chats = h("div", { class: "panes" });
  let panes = [];

  function layout() {
    for (const pane of panes) pane.abort();
    const chosen = mode.checked ? [pickA.value, pickB.value] : [pickA.value];
    panes = chosen.map((name) => new Pane(name));
    replace(chats, panes.map((p) => p.node));
    chats.classList.toggle("compare", mode.checked);
    pickB.closest(".field").hidden = !mode.checked;
    const url = `#/playground?deployment=${encodeURIComponent(pickA.value)}${mode.checked ? "&compare=1" : ""}`;
    history.replaceState(null, "", url);
  }
  for (const control of [pickA, pickB, mode]) control.addEventListener("change", layout);

  async function submit() {
    const text = input.value.trim();
    if (!text || panes.some((p) => p.running)) return;
    input.value = "";
    const params = { temperature: Number(temperature.value), top_p: Number(topP.value) };
    if (maxTokens.value) params.max_tokens = Number(maxTokens.value);
    send.disabled = true;
    stopButton.hidden = false;
    try {
      await Promise.all(panes.map((p) => p.ask(text, applied, params)));
    } finally {
      send.disabled = false;
      stopButton.hidden = true;
      input.focus();
    }
  }
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });

  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Playground"), h("p", {}, "Chat with your deployments. Change the system message, apply it, clear the chat and ask again; compare two deployments on the same messages.")),
    h("div", { class: "playground" },
      h("aside", { class: "card setup" },
        h("h2", {}, "Setup"),
        field("Deployment", pickA),
        h("label", { class: "check" }, mode, " Compare with a second deployment"),
        field("Second deployment", pickB),
        field("System message", system, "Give the model instructions and context."),
        presets,
        h("div", { class: "actions" }, apply, clear),
        status,
        h("h2", {}, "Parameters"),
        field("Temperature", h("div", { class: "range" }, temperature, temperatureValue)),
        field("Max response tokens", maxTokens),
        field("Top P", h("div", { class: "range" }, topP, topPValue))),
      h("section", { class: "card chat-area" }, chats,
        h("form", { class: "composer", onsubmit: (event) => { event.preventDefault(); submit(); } }, input,
          h("div", { class: "actions" }, h("span", { class: "hint" }, "The lab's questions:"),
            QUESTIONS.map((q) => h("button", { type: "button", class: "small chip", title: q, onclick: () => { input.value = q; input.focus(); } }, q.length > 34 ? `${q.slice(0, 32)}…` : q)),
            h("span", { class: "spacer" }), stopButton, send)))));
  layout();
  input.focus();
  return () => panes.forEach((p) => p.abort());
}

// One deployment's conversation: its own history, streamed answers, and per-answer tokens and latency.
class Pane {
  constructor(name) {
    this.name = name;
    this.history = [];
    this.running = false;
    this.controller = null;
    this.list = h("div", { class: "messages", "aria-live": "polite" });
    this.node = h("div", { class: "pane", dataset: { deployment: name } }, h("h3", {}, name), this.list);
    this.empty();
  }

  empty() {
    replace(this.list, h("p", { class: "hint start" }, "Start chatting: the answers stream in as they are written."));
  }

  clear() {
    this.abort();
    this.history = [];
    this.empty();
  }

  abort() {
    if (this.controller) this.controller.abort();
  }

  async ask(text, system, params) {
    if (!this.history.length) this.list.replaceChildren();
    this.history.push({ role: "user", content: text });
    this.list.append(bubble({ role: "user", content: text }));
    const answer = bubble({ role: "assistant", content: "" });
    const body = answer.querySelector(".text");
    const meta = h("div", { class: "meta" }, "…");
    answer.append(meta);
    answer.classList.add("streaming");
    this.list.append(answer);
    const messages = [...(system.trim() ? [{ role: "system", content: system }] : []), ...this.history];
    this.running = true;
    this.controller = new AbortController();
    const started = performance.now();
    let first = null;
    let usage = null;
    let finish = null;
    let filtered = null;
    let content = "";
    try {
      for await (const chunk of streamChat({ model: this.name, messages, ...params }, this.controller.signal)) {
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            if (first === null) first = performance.now();
            content += choice.delta.content;
            body.textContent = content;
            this.list.scrollTop = this.list.scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
          if (choice.finish_reason === "content_filter") filtered = choice.content_filter_results;
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const parts = [];
      if (usage) parts.push(`${usage.completion_tokens} tokens (prompt ${usage.prompt_tokens})`);
      parts.push(`${seconds.toFixed(1)} s`);
      if (first !== null) parts.push(`first token ${((first - started) / 1000).toFixed(2)} s`);
      if (finish === "length") parts.push("stopped at max tokens");
      replace(meta, parts.join(" · "));
      if (filtered) {
        answer.classList.add("filtered");
        meta.append(h("div", { class: "filter" }, `The content filter stopped this answer: ${findings(filtered)}.`));
      }
      this.history.push({ role: "assistant", content });
    } catch (error) {
      if (error.name === "AbortError") {
        replace(meta, "stopped");
        if (content) this.history.push({ role: "assistant", content });
        else this.history.pop();
      } else {
        this.history.pop(); // the question was not answered: it is not part of the conversation
        answer.classList.add("failed");
        const inner = error.innererror && error.innererror.content_filter_result;
        replace(meta, h("div", { class: inner ? "filter" : "error", role: "alert" }, inner ? `The prompt was filtered: ${findings(inner)}.` : errorText(error)));
      }
    } finally {
      answer.classList.remove("streaming");
      this.running = false;
      this.controller = null;
    }
  }
}

function findings(results) {
  const hits = Object.entries(results || {}).filter(([, r]) => r && r.filtered)
    .map(([category, r]) => (r.severity ? `${category.replace("_", "-")} (${r.severity})` : category === "custom_blocklists" ? "a blocklisted term" : category));
  return hits.length ? hits.join(", ") : "a category over its threshold";
}
