// The frame every dashboard page shares: sign-in (token in this tab's sessionStorage), the
// signed-in user in the header, then the page's own module (static/pages/<page>.js), whose
// `mount(root, ctx)` draws into <main id="page">. ctx: {me, data, params}.
"use strict";

import { api, ApiError, TOKEN_KEY, token } from "./common.js";

const $ = (id) => document.getElementById(id);
const page = document.body.dataset.page;
const data = JSON.parse($("pgq-data").textContent);

for (const link of document.querySelectorAll("nav a[data-nav]")) {
  if (link.dataset.nav === page || (page === "job" && link.dataset.nav === "jobs")) link.setAttribute("aria-current", "page");
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("page").classList.add("hidden");
  $("logout").classList.add("hidden");
  $("who").textContent = "";
  $("login").classList.remove("hidden");
  $("login-error").textContent = message || "";
  $("token-input").focus();
}

async function start() {
  let me;
  try {
    me = await api("/auth/me");
  } catch (error) {
    signOut(error instanceof ApiError && error.status === 401 ? "That token is not valid." : String(error.message));
    return;
  }
  $("login").classList.add("hidden");
  $("logout").classList.remove("hidden");
  $("who").textContent = `${me.name}${me.is_admin ? " (admin)" : ""}`;
  const root = $("page");
  root.classList.remove("hidden");
  try {
    const module = await import(`./pages/${page}.js`);
    await module.mount(root, { me, data, params: data.params || {} });
    document.body.dataset.mounted = page;
  } catch (error) {
    // a page that failed to draw says so instead of staying blank
    document.body.dataset.error = String(error && error.message);
    const box = document.createElement("p");
    box.className = "error";
    box.setAttribute("role", "alert");
    box.textContent = `This page failed to load: ${error && error.message}`;
    root.prepend(box);
  }
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  start();
});
$("logout").addEventListener("click", () => signOut("Signed out."));
addEventListener("pgq:unauthorized", () => signOut("Your token is no longer valid; sign in again."));

if (token()) start(); else signOut("");
