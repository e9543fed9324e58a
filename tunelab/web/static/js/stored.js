// Stored completions: the chat answers kept with `store: true` (GET /v1/chat/completions), newest first, filtered
// by model and metadata; rate an answer good or bad (the metadata key `rating`, as the SDK's update sets it), edit
// it (the edit is kept beside the original, which stays visible), and export what the filter shows as a supervised
// or preference training file (POST /v1/stored_completions/export), opened in Data for its pre-flight report.

import { all, post } from "./api.js";
import { busy, dialog, errorBox, field, h, notice, replace, table, when } from "./ui.js";

export async function render(main, { query }) {
  const model = h("input", { name: "model", placeholder: "any model or deployment", value: query.get("model") || "" });
  const metadata = h("input", { name: "metadata", placeholder: "key=value, key=value", value: query.get("metadata") || "" });
  const list = h("div", {});
  const exported = h("div", { class: "exported", "aria-live": "polite" });
  const problem = h("div", {});
  const exportAs = (format, label) => h("button", { type: "button", dataset: { format }, onclick: (event) => exportFile(event.target, format) }, label);

  replace(main,
    h("header", { class: "page" }, h("h1", {}, "Stored completions"),
      h("p", {}, "Chat answers kept because the request said store: true. Rate them, edit an answer (the original is kept beside the edit), and export them as a training file: supervised (the answers, edits in place of originals, answers rated bad left out) or preference (a good or edited answer preferred over a bad one to the same messages).")),
    h("form", { class: "card", onsubmit: (event) => {
      event.preventDefault();
      refresh();
    } },
    h("div", { class: "row" }, field("Model", model), field("Metadata", metadata, "every pair must match, e.g. rating=bad")),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Filter"),
      exportAs("supervised", "Export as supervised file"), exportAs("preference", "Export as preference file")),
    problem, exported),
    h("section", { class: "card" }, h("h2", {}, "Completions"), list));

  // The filter as the API takes it: {model, metadata: {k: v}}; a malformed pair is reported, not dropped.
  function filter() {
    const pairs = {};
    for (const part of metadata.value.split(",").map((p) => p.trim()).filter(Boolean)) {
      const at = part.indexOf("=");
      if (at < 1) throw new Error(`“${part}” is not key=value`);
      pairs[part.slice(0, at).trim()] = part.slice(at + 1).trim();
    }
    return { model: model.value.trim() || undefined, metadata: pairs };
  }

  async function refresh() {
    replace(problem);
    let chosen;
    try {
      chosen = filter();
    } catch (error) {
      return replace(problem, errorBox(error));
    }
    const query = { order: "desc", limit: 100, model: chosen.model };
    for (const [key, value] of Object.entries(chosen.metadata)) query[`metadata[${key}]`] = value;
    let found;
    try {
      found = await all("/chat/completions", query);
    } catch (error) {
      return replace(list, errorBox(error));
    }
    replace(list, table([
      { title: "Created", cell: (c) => when(c.created) },
      { title: "Model", cell: (c) => h("code", {}, c.model) },
      { title: "Asked", cell: (c) => h("span", { class: "asked" }, firstUser(c)) },
      { title: "Answer", cell: answerCell },
      { title: "Metadata", cell: (c) => h("small", { class: "metadata" }, Object.entries(c.metadata || {}).map(([k, v]) => `${k}: ${v}`).join(" · ")) },
      { title: "", cell: (c) => h("div", { class: "actions" },
        rateButton(c, "good", "Good"), rateButton(c, "bad", "Bad"),
        h("button", { type: "button", class: "small", onclick: () => edit(c) }, "Edit answer")) },
    ], found, { empty: "No stored completions match. Chat requests with store: true are kept here.",
                rowAttrs: (c) => ({ dataset: { completion: c.id, rating: (c.metadata || {}).rating || "" } }) }));
  }

  function rateButton(completion, rating, label) {
    const current = (completion.metadata || {}).rating === rating;
    return h("button", { type: "button", class: `small${current ? " primary" : ""}`, dataset: { rate: rating }, "aria-pressed": String(current),
      onclick: (event) => busy(event.target, async () => {
        await post(`/chat/completions/${completion.id}`, { metadata: { ...(completion.metadata || {}), rating } });
        await refresh();
      }) }, label);
  }

  async function edit(completion) {
    const original = originalText(completion);
    const saved = await dialog("Edit answer", (close) => {
      const text = h("textarea", { name: "edited_content", rows: 8 }, completion.edited_content ?? original ?? "");
      const failed = h("div", {});
      return h("form", { class: "body", onsubmit: async (event) => {
        event.preventDefault();
        try {
          close(await post(`/chat/completions/${completion.id}`, { edited_content: text.value }));
        } catch (error) {
          replace(failed, errorBox(error));
        }
      } },
      h("p", { class: "hint" }, "The original answer stays as it was; the edit is kept beside it and used when exporting."),
      field("Original answer", h("pre", { class: "original" }, original ?? "(filtered: no text)")),
      field("Edited answer", text), failed,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close(undefined) }, "Cancel"),
        h("button", { type: "submit", class: "primary" }, "Save edit")));
    }, { wide: true });
    if (saved) {
      notice("Edit saved beside the original answer");
      await refresh();
    }
  }

  async function exportFile(button, format) {
    replace(problem);
    let chosen;
    try {
      chosen = filter();
    } catch (error) {
      return replace(problem, errorBox(error));
    }
    const body = { format, model: chosen.model, metadata: Object.keys(chosen.metadata).length ? chosen.metadata : undefined };
    await busy(button, async () => {
      try {
        const file = await post("/stored_completions/export", body);
        const left = Object.entries(file.left_out).map(([why, n]) => `${n} ${why}`).join(", ");
        replace(exported, h("p", { class: "ok", dataset: { file: file.id } }, `${format === "preference" ? "Preference" : "Supervised"} file `,
          h("code", {}, file.id), ` (${file.filename}): ${file.examples} example${file.examples === 1 ? "" : "s"}${left ? `; left out: ${left}` : ""}. `,
          h("a", { href: `#/data/${file.id}` }, "Open its data report")));
      } catch (error) {
        replace(exported, errorBox(error));
      }
    }, "Exporting…");
  }

  await refresh();
}

function firstUser(completion) {
  const message = ((completion.request || {}).messages || []).find((m) => m.role === "user");
  if (!message) return "";
  return Array.isArray(message.content) ? message.content.map((p) => p.text || "").join("") : message.content || "";
}

function originalText(completion) {
  const choice = (completion.choices || [])[0];
  return choice && choice.message ? choice.message.content : null;
}

// The answer as the client got it; an edit is shown first, the original below it, never replaced.
function answerCell(completion) {
  const choice = (completion.choices || [])[0] || {};
  const original = originalText(completion);
  const shownOriginal = original ?? (choice.finish_reason === "content_filter" ? "(filtered by the content filter: no text)" : "");
  if (completion.edited_content == null) return h("span", { class: "answer" }, shownOriginal);
  return h("div", {}, h("div", { class: "edited" }, h("small", {}, "Edited: "), completion.edited_content),
    h("div", { class: "original" }, h("small", {}, "Original: "), h("s", {}, shownOriginal)));
}
