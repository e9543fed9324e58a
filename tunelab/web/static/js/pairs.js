// Preference pairs from a completed comparison (POST /v1/pairs): each prompt's failing answer beside a passing
// one, with the checks it failed and their evidence. The person reviewing keeps or drops each pair and may rewrite
// the preferred answer, then saves the kept pairs as a training file (POST /v1/pairs/files) and goes on to a DPO
// fine-tune with it.

import { get, post } from "./api.js";
import { busy, errorBox, field, go, h, replace } from "./ui.js";

export async function review(main, id) {
  const [evaluation, listed] = await Promise.all([get(`/evaluations/${id}`), get("/evaluations", { limit: 100 })]);
  const choices = h("div", {});
  const others = listed.data.filter((e) => e.id !== id && e.status === "completed");
  const pooled = others.map((e) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "pool", value: e.id }), ` ${e.id} (${e.candidates.join(" vs ")})`));
  const checks = h("div", {});
  const cap = h("input", { name: "max_per_prompt", type: "number", min: 1, placeholder: "one per failing answer" });
  const find = h("button", { type: "button", class: "primary" }, "Find pairs");
  const result = h("div", {});
  replace(main,
    h("a", { href: `#/evaluate/${id}`, class: "back" }, `← Comparison ${id}`),
    h("header", { class: "page" }, h("h1", {}, "Preference pairs"),
      h("p", {}, "For each prompt, an answer that fails a check (non-preferred) beside an answer that passes them all (preferred). Keep or drop each pair, rewrite a preferred answer if it can be better, then save the kept pairs as a training file for a DPO fine-tune.")),
    h("section", { class: "card form" },
      field("Checks that judge an answer", checks, "Yes/no checks with a better direction; an answer passes when none of the chosen ones fails."),
      others.length ? h("fieldset", {}, h("legend", {}, "Pool answers from other comparisons of the same prompts (other seeds or candidates)"), pooled) : null,
      field("Pairs per prompt, at most", cap),
      h("div", { class: "actions" }, find)),
    result, choices);
  if (evaluation.status !== "completed") {
    replace(result, errorBox({ message: `The comparison is ${evaluation.status}: pairs come from a completed comparison.` }));
    find.disabled = true;
    return undefined;
  }
  const answers = evaluation.report.prompts.flatMap((p) => Object.values(p.answers));
  const yesNo = (name) => answers.some((a) => typeof a.scores[name]?.value === "boolean")
    && answers.every((a) => [null, undefined, true, false].includes(a.scores[name]?.value));
  const judged = Object.entries(evaluation.report.candidates[0].checks).filter(([name, s]) => s.higher_is_better !== null && yesNo(name));
  replace(checks, judged.map(([name, s]) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "check", value: name }), ` ${s.title} (${name})`)));

  const run = async (first) => {
    const body = { evaluations: [id, ...pooled.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value)] };
    const chosen = [...checks.querySelectorAll("input:checked")].map((i) => i.value);
    if (!first && chosen.length) body.checks = chosen;
    if (cap.value) body.max_per_prompt = Number(cap.value);
    try {
      const mined = await post("/pairs", body);
      if (!body.checks) for (const input of checks.querySelectorAll("input")) input.checked = mined.summary.checks.includes(input.value);
      show(result, mined, id);
    } catch (error) {
      replace(result, errorBox(error));
    }
  };
  find.addEventListener("click", () => busy(find, () => run(false), "Finding…"));
  await run(true);
  return undefined;
}

function show(into, mined, id) {
  const s = mined.summary;
  const items = mined.data.map((pair, i) => item(pair, i));
  const filename = h("input", { name: "filename", value: `pairs-${id}.jsonl` });
  const save = h("button", { type: "button", class: "primary" }, "Save as training file");
  const saved = h("div", {});
  const count = h("span", { class: "kept" });
  const recount = () => { count.textContent = `${items.filter((x) => x.keep.checked).length} of ${items.length} pairs kept`; };
  items.forEach((x) => x.keep.addEventListener("change", recount));
  recount();
  save.addEventListener("click", () => busy(save, async () => {
    replace(saved);
    const rows = items.filter((x) => x.keep.checked).map((x) => x.row());
    if (!rows.length) return replace(saved, errorBox({ message: "Keep at least one pair to save a file." }));
    try {
      const file = await post("/pairs/files", { pairs: rows, filename: filename.value.trim() || undefined });
      replace(saved, h("p", { class: "ok saved", dataset: { file: file.id } }, `Saved ${rows.length} pairs as `, h("code", {}, file.id), ` (${file.filename}). `,
        h("a", { href: `#/data/${file.id}` }, "Open its data report"), " "),
        h("div", { class: "actions" }, h("button", { type: "button", class: "primary", onclick: () => go(`#/fine-tuning?new=1&training_file=${file.id}&method=dpo`) }, "Fine-tune with DPO")));
    } catch (error) {
      replace(saved, errorBox(error));
    }
    return undefined;
  }, "Saving…"));
  const left = Object.entries(s.excluded).filter(([, n]) => n).map(([why, n]) => `${n} ${why}`).join(", ");
  replace(into,
    h("section", { class: "card" },
      h("p", { class: "summary" }, `${s.pairs} pairs from ${s.prompts_with_pair} of ${s.prompts} prompts · ${s.prompts_with_passing} prompts with a passing answer, ${s.prompts_with_failing} with a failing one · checks: ${s.checks.join(", ")}`,
        s.capped ? ` · ${s.capped} more left out by the cap` : "", left ? ` · answers left out: ${left}` : "",
        s.preferred_cut_off ? ` · ${s.preferred_cut_off} preferred answers cut off at max tokens` : ""),
      h("div", { class: "pairs" }, items.map((x) => x.node))),
    h("section", { class: "card form" }, h("p", {}, count), field("File name", filename), h("div", { class: "actions" }, save), saved));
}

function item(pair, i) {
  const messages = pair.row.input.messages;
  const keep = h("input", { type: "checkbox", name: "keep", checked: true });
  const preferred = h("textarea", { name: "preferred", rows: 4 }, pair.row.preferred_output[0].content);
  const node = h("article", { class: "chat pair", dataset: { index: i, prompt: pair.prompt_id } },
    h("h3", {}, `${pair.prompt_id} · ${pair.kind} `, h("label", { class: "check" }, keep, " keep this pair")),
    messages.map((m) => h("div", { class: `bubble ${m.role}` }, h("span", { class: "role" }, m.role), h("span", { class: "text" }, m.content || ""))),
    h("div", { class: "bubble assistant preferred" }, h("span", { class: "role" }, `preferred · ${origin(pair.preferred)}`), preferred,
      pair.preferred.finish_reason === "length" ? h("small", { class: "cut-off" }, "Cut off at the comparison's max tokens: finish the answer, or drop the pair (trained as preferred, it teaches stopping mid-sentence).") : null),
    h("div", { class: "bubble failed non-preferred" }, h("span", { class: "role" }, `non-preferred · ${origin(pair.non_preferred)}`),
      h("span", { class: "text" }, pair.row.non_preferred_output[0].content)),
    h("ul", { class: "why" }, pair.failed.map((f) => h("li", {}, `fails ${f.title || f.check}`, f.reason ? `: ${f.reason}` : ""))));
  keep.addEventListener("change", () => {
    node.classList.toggle("dropped", !keep.checked);
    node.style.opacity = keep.checked ? "" : "0.55"; // a dropped pair stays readable, and can be kept again
  });
  const row = () => ({ ...pair.row, preferred_output: [{ role: "assistant", content: preferred.value }] });
  return { node, keep, row };
}

function origin(side) {
  return [side.candidate, side.seed !== null ? `seed ${side.seed}` : null, side.evaluation].filter(Boolean).join(", ");
}
