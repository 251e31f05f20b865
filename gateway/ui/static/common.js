/* Shared helpers of the web view: JSON fetches from this gateway only, formatting, errors. */
"use strict";

const gputel = (() => {
  // With --auth-tokens the API wants a bearer token: asked for once, kept for this tab only.
  const TOKEN_KEY = "gputel.token";

  /** Show the token form: `rejected` is "no" (none given yet), "unknown" (401: the token is
      not valid) or "forbidden" (403: valid, but without the role this page needs). */
  function askForToken(rejected) {
    const form = document.getElementById("token-form");
    form.hidden = false;
    form.dataset.rejected = rejected;
    const input = document.getElementById("token");
    input.placeholder = { no: "bearer token", unknown: "token not accepted: another one",
      forbidden: "token lacks the read role: another one" }[rejected];
    input.focus();
  }

  /** GET a JSON document of this gateway; throws an Error carrying the problem+json detail. */
  async function getJson(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(path, { headers });
    if (resp.status === 401) askForToken(token ? "unknown" : "no");
    if (resp.status === 403 && token) askForToken("forbidden");
    const body = await resp.json().catch(() => null);
    if (!resp.ok) {
      const detail = body && body.detail ? body.detail : resp.statusText;
      const err = new Error(`${path}: ${resp.status} ${detail}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  /** Follow `next_cursor` and concatenate `key` of every page (at most maxPages). The array's
      `truncated` is true when the cap left pages unread, and `maxPages` says what the cap was. */
  async function allPages(path, key, maxPages = 50) {
    const out = [];
    let cursor = null;
    for (let page = 0; page < maxPages; page++) {
      const sep = path.includes("?") ? "&" : "?";
      const body = await getJson(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
      out.push(...body[key]);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    out.truncated = Boolean(cursor);
    out.maxPages = maxPages;
    return out;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  /** A table from a header and rows of cells (strings or nodes); numeric columns align right. */
  function table(head, rows, numeric = []) {
    const thead = el("thead", {}, el("tr", {}, ...head.map((h, i) =>
      el("th", { text: h, class: numeric.includes(i) ? "num" : null }))));
    const tbody = el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, i) => {
      const td = el("td", { class: numeric.includes(i) ? "num" : null });
      td.append(c instanceof Node ? c : String(c));
      return td;
    }))));
    return el("table", {}, thead, tbody);
  }

  const number = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  function fmt(n) { return n === null || n === undefined ? "–" : number.format(n); }

  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (Math.abs(v) >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
  }

  /** An RFC 3339 time of the API shortened for people (UTC, to the second). */
  function fmtTime(text) {
    if (!text) return "–";
    return text.replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
  }

  function showError(err) {
    const box = document.getElementById("error");
    box.textContent = String(err.message || err);
    box.hidden = false;
    console.warn(err);  // not console.error: an unreachable broker is a state, not a bug
  }

  async function storeState() {
    const pill = document.getElementById("store-state");
    let state = "down";
    try {
      const resp = await fetch("/readyz");
      state = resp.ok ? "ready" : `unavailable (${resp.status})`;
    } catch (e) {
      state = "unreachable";
    }
    pill.textContent = `store ${state}`;
    pill.dataset.state = state === "ready" ? "ok" : "bad";
    return state;
  }

  document.addEventListener("DOMContentLoaded", () => {
    storeState();
    document.getElementById("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
      location.reload();
    });
  });
  return { getJson, allPages, el, table, fmt, fmtBytes, fmtTime, showError, storeState };
})();
