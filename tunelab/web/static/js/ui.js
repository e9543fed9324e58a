// Small DOM helpers shared by the pages: elements built from data (text is always set as text, never parsed as
// HTML), tables, dialogs, notices, polling and the formats the pages show.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

// Replace the node's content only when `signature` (what it is drawn from) changed since the last time.
export function redraw(node, signature, draw) {
  if (node.dataset.signature === signature) return;
  node.dataset.signature = signature;
  draw();
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function table(columns, rows, { empty = "Nothing yet.", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
    h(
      "tbody",
      {},
      rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map((c) => h("td", { class: c.class }, c.cell(row))))),
    ),
  );
}

export function badge(status) {
  const kind = {
    succeeded: "ok", Succeeded: "ok", completed: "ok", processed: "ok",
    failed: "bad", Failed: "bad", cancelled: "muted", error: "bad",
    running: "busy", Creating: "busy", validating_files: "busy", queued: "wait", paused: "wait", Accepted: "busy",
  }[status] || "muted";
  return h("span", { class: `badge ${kind}`, dataset: { status } }, status.replace("_", " "));
}

// A readable message for an error from the API (or anything thrown): the message, the field it names.
export function errorText(error) {
  const param = error && error.param ? ` (${error.param})` : "";
  return `${error && error.message ? error.message : String(error)}${param}`;
}

export function errorBox(error) {
  return h("div", { class: "error", role: "alert" }, errorText(error));
}

export function notice(text, kind = "info") {
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  document.getElementById("toasts").append(item);
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4000);
}

// Run `action`, showing its error as a notice; the button is disabled (and says so) while it runs.
export async function busy(button, action, working) {
  const label = button.textContent;
  button.disabled = true;
  if (working) button.textContent = working;
  try {
    return await action();
  } catch (error) {
    notice(errorText(error), "error");
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

// A modal dialog; resolves with what `close(value)` is called with (undefined on Escape or Cancel).
export function dialog(title, build, { wide = false } = {}) {
  return new Promise((resolve) => {
    const node = h("dialog", { class: wide ? "wide" : "" });
    const close = (value) => {
      node.close();
      node.remove();
      resolve(value);
    };
    node.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(undefined);
    });
    node.append(h("header", {}, h("h2", {}, title), h("button", { class: "icon", type: "button", "aria-label": "Close", onclick: () => close(undefined) }, "×")));
    node.append(build(close));
    document.body.append(node);
    node.showModal();
  });
}

export function confirmDialog(title, text, action = "Delete") {
  return dialog(title, (close) =>
    h("div", { class: "body" }, h("p", {}, text),
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: "danger", onclick: () => close(true) }, action))));
}

// Call `tick` now and then every `ms` until it returns false or the page stops it; errors are shown once.
export function poll(tick, ms) {
  let timer = null;
  let stopped = false;
  let failing = false;
  const run = async () => {
    if (stopped) return;
    let again = true;
    try {
      again = (await tick()) !== false;
      failing = false;
    } catch (error) {
      if (!failing) notice(errorText(error), "error");
      failing = true;
    }
    if (again && !stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function progress(value, max, label) {
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": max, "aria-valuenow": value },
    h("div", { class: "fill", style: `width:${max ? Math.min(100, (100 * value) / max) : 0}%` }),
    label ? h("span", {}, label) : null);
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = n;
  for (const unit of units) {
    value /= 1024;
    if (value < 1024 || unit === "TB") return `${value.toFixed(1)} ${unit}`;
  }
  return "";
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function number(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), control, hint ? h("small", {}, hint) : null);
}

export function select(options, value, attrs = {}) {
  return h("select", attrs, options.map((o) => {
    const [optionValue, text] = Array.isArray(o) ? o : [o, o];
    return h("option", { value: optionValue, selected: optionValue === value }, text);
  }));
}

// A drop zone with a file picker: onFiles(File[]) for files dropped or chosen.
export function dropZone(onFiles, { multiple = true, text = "Drop .jsonl files here, or" } = {}) {
  const input = h("input", { type: "file", accept: ".jsonl", multiple, class: "file-input", onchange: () => {
    if (input.files.length) onFiles([...input.files]);
    input.value = "";
  } });
  const zone = h("div", { class: "drop", tabindex: 0 }, h("span", {}, text, " "),
    h("button", { type: "button", onclick: () => input.click() }, "choose a file"), input);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...(event.dataTransfer?.files || [])];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}

export function go(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}
