// The studio's shell: navigation between the pages (hash routes, so a page can be bookmarked and reloaded),
// and the sign-in form shown when this browser has no session or the service has ended it.

import { signIn, signOut, signedIn, whenSignedOut } from "./api.js";
import { h, replace, errorText } from "./ui.js";
import * as data from "./data.js";
import * as finetune from "./finetune.js";
import * as job from "./job.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as evaluate from "./evaluate.js";
import * as evals from "./evals.js";
import * as cleanup from "./cleanup.js";
import * as stored from "./stored.js";

const PAGES = [
  ["data", "Data", data],
  ["fine-tuning", "Fine-tuning", finetune],
  ["models", "Models + endpoints", models],
  ["playground", "Playground", playground],
  ["evaluate", "Evaluate", evaluate],
  ["evals", "Evals", evals],
  ["stored", "Stored completions", stored],
  ["clean-up", "Clean up", cleanup],
];

const main = document.getElementById("page");
const nav = document.getElementById("nav");
let leave = null; // the current page's clean-up (timers, charts)
let session = null; // whether the service knows this browser: asked once, then kept up to date

function parse() {
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, ...rest] = path.split("/");
  return { page: page || "data", id: rest.length ? decodeURIComponent(rest.join("/")) : null,
           query: new URLSearchParams(search || "") };
}

async function route() {
  if (leave) leave();
  leave = null;
  if (location.hash.startsWith("#signin")) return showSignIn();
  if (session === null) {
    try {
      session = await signedIn();
    } catch (error) {
      return replace(main, h("div", { class: "error", role: "alert" }, errorText(error)));
    }
  }
  if (!session) return showSignIn();
  const { page, id, query } = parse();
  const found = PAGES.find(([name]) => name === page) || PAGES[0];
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("current", link.dataset.page === found[0]);
  document.body.classList.remove("signed-out");
  main.replaceChildren();
  const module = found[0] === "fine-tuning" && id ? job : found[2];
  document.title = `${found[1]} · tunelab studio`;
  try {
    leave = (await module.render(main, { id, query })) || null;
  } catch (error) {
    replace(main, h("div", { class: "error", role: "alert" }, errorText(error)));
  }
}

function showSignIn(reason) {
  document.body.classList.add("signed-out");
  document.title = "Sign in · tunelab studio";
  const why = reason || (location.hash.includes("invalid-link")
    ? "That sign-in link is not valid for this server: it changes each time `tunelab serve` starts. Open the link it printed last, or enter an API key."
    : "Open the link `tunelab serve` printed, or enter an API key of this service.");
  const input = h("input", { type: "password", name: "key", autocomplete: "current-password", placeholder: "tl-…", required: true, "aria-label": "API key" });
  const message = h("p", { class: "hint" }, why);
  const form = h("form", { class: "signin card", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await signIn(input.value.trim());
    } catch (error) {
      message.className = "error";
      message.textContent = error.status === 401 ? "That key is not valid for this service." : errorText(error);
      return;
    }
    input.value = "";
    session = true;
    location.hash = "#/data";
    route();
  } },
  h("h1", {}, "tunelab studio"), message, h("label", { class: "field" }, h("span", { class: "label" }, "API key"), input),
  h("button", { type: "submit", class: "primary" }, "Sign in"));
  replace(main, form);
  input.focus();
}

function buildNav() {
  replace(nav, PAGES.map(([name, title]) => h("a", { href: `#/${name}`, dataset: { page: name } }, title)));
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await signOut();
    } catch {
      // the service is gone: its sessions ended with it
    }
    session = false;
    location.hash = "#signin";
  });
}

whenSignedOut((error) => {
  if (leave) leave();
  leave = null;
  session = false;
  showSignIn(`${error.message}. Sign in again: open the link \`tunelab serve\` printed, or enter an API key.`);
});

buildNav();
window.addEventListener("hashchange", route);
route();
