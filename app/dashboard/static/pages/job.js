// Placeholder until this page is built: points at the single-page dashboard.
"use strict";

import { el } from "../common.js";

export async function mount(root) {
  root.append(el("p", {}, "This page is being built; the ", el("a", { href: "/" }, "single-page dashboard"), " has jobs, filters and live progress."));
}
