/* Fleet page: every GPU (filtered by host and model) in a grid per host, coloured by the
   latest value of the chosen metric: GET /api/v1/latest, one request per page of GPUs, drawn
   as the pages arrive. The model filter's names come from GET /api/v1/models. */
"use strict";

(() => {
  const { allPages, el, fmt, getJson, showError } = gputel;
  const PREFERRED = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_FB_USED"];
  const PAGE = 1000, MAX_PAGES = 200;  // up to 200,000 GPUs; past that the page says it stopped
  const $ = (id) => document.getElementById(id);
  let gpus = [];
  let latest = new Map();  // uuid -> the latest value of the shown metric
  let generation = 0;  // the newest reload's number: an older one that ends later is dropped
  // What the shown GPUs are: still loading (`pages` read so far), or done and maybe cut short.
  let progress = { done: false, pages: 0, truncated: false };

  function params() { return new URLSearchParams(location.search); }

  function colour(value, lo, hi) {
    if (value === undefined) return "var(--empty)";
    const t = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    return `hsl(${Math.round(120 - 120 * t)}, 65%, ${Math.round(42 + 8 * (1 - t))}%)`;
  }

  /** Walk the pages of `path` (following `next_cursor`, at most MAX_PAGES), handing each
      answer to `onPage` as it arrives; the next page is already asked for meanwhile. Stops,
      returning null, once `current()` is false (a newer load began); else returns whether
      pages were left unread (the cap). */
  async function walk(path, current, onPage) {
    const sep = path.includes("?") ? "&" : "?";
    const get = (cursor) => getJson(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
    let pending = get(null);
    for (let page = 1; ; page++) {
      const body = await pending;
      if (!current()) return null;
      const more = Boolean(body.next_cursor) && page < MAX_PAGES;
      if (more) {
        pending = get(body.next_cursor);
        pending.catch(() => {});  // awaited on the next turn; not an unhandled rejection meanwhile
      }
      onPage(body);
      if (!more) return Boolean(body.next_cursor);
    }
  }

  /** Read the GPUs of query `q` and their latest `metric` page by page (one GET
      /api/v1/latest a page), calling `onPage(newGpus, values)` for each. When the values
      cannot be read (a store error), the GPUs are still listed (GET /api/v1/gpus, the same
      order: those already shown are skipped) without values and the error box says why: the
      fleet does not go blank. Returns whether the cap cut the list short (null: stale). */
  async function readFleet(q, metric, current, onPage) {
    const seen = new Set();
    const fresh = (list) => list.filter((g) => !seen.has(g.uuid) && seen.add(g.uuid));
    if (metric) {
      try {
        const path = `/api/v1/latest?${q}&metric=${encodeURIComponent(metric)}`;
        return await walk(path, current, (body) => {
          const values = new Map();
          for (const entry of body.gpus) {
            const point = entry.latest.find((p) => p.metric === metric);
            if (point) values.set(entry.gpu.uuid, point.value);
          }
          onPage(fresh(body.gpus.map((entry) => entry.gpu)), values);
        });
      } catch (err) {
        if (err.status === 401 || err.status === 403) throw err;  // the list would fail alike
        if (!current()) return null;
        showError(new Error(`latest values could not be read, GPUs shown without them: ${err.message}`));
      }
    }
    return walk(`/api/v1/gpus?${q}`, current, (body) => onPage(fresh(body.gpus), new Map()));
  }

  function latestOf(g) { return latest.get(g.uuid); }

  function render() {
    const metric = $("metric").value;
    const needle = $("search").value.trim().toLowerCase();
    const shown = gpus.filter((g) => !needle || g.uuid.toLowerCase().includes(needle));
    const values = shown.map(latestOf).filter((v) => v !== undefined);
    let lo = values.length ? Infinity : 0, hi = values.length ? -Infinity : 0;
    for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }  // no spread: 100,000 arguments overflow the stack
    $("legend-min").textContent = fmt(lo);
    $("legend-max").textContent = fmt(hi);
    const byHost = new Map();
    for (const g of shown) {
      if (!byHost.has(g.hostname)) byHost.set(g.hostname, []);
      byHost.get(g.hostname).push(g);
    }
    const root = $("fleet");
    root.replaceChildren(...[...byHost.keys()].sort().map((host) => {
      const cells = byHost.get(host).sort((a, b) => a.gpu - b.gpu).map((g) => {
        const value = latestOf(g);
        const cell = el("a", {
          class: "gpu", href: `/ui/gpus/${encodeURIComponent(g.uuid)}`,
          title: `${g.uuid}\n${g.model}\n${metric}: ${fmt(value)}`,
          "data-uuid": g.uuid, "data-value": value === undefined ? "" : String(value),
        }, el("span", { class: "idx", text: `GPU ${g.gpu}` }), el("span", { class: "val", text: fmt(value) }));
        cell.style.background = colour(value, lo, hi);
        return cell;
      });
      return el("div", { class: "host", "data-host": host },
        el("h3", { text: host }), el("div", { class: "gpus" }, ...cells));
    }));
    $("summary").textContent =
      `${shown.length} GPUs on ${byHost.size} hosts, coloured by the latest ${metric}` +
      (progress.done ? "" : ` (loading: ${progress.pages} page(s) of up to ${PAGE} GPUs read so far)`);
    const cut = $("truncated");
    cut.hidden = !(progress.done && progress.truncated);
    cut.textContent = cut.hidden ? "" : `Only the first ${gpus.length} GPUs are shown: the page ` +
      `reads at most ${MAX_PAGES} pages of ${PAGE} GPUs. Choose a host or a model to see the others.`;
    root.dataset.gpus = String(shown.length);
    root.dataset.pages = String(progress.pages);
    root.dataset.truncated = String(progress.done && progress.truncated);
    root.dataset.state = progress.done ? "ready" : "loading";
  }

  let drawnAt = -Infinity, drawCost = 0;

  /** Draw now when `now` is set or the last drawing is long enough ago (4 times what it
      took, at least 250 ms): a fleet of 100 pages is not drawn 100 times over. */
  function draw(now) {
    const started = performance.now();
    if (!now && started - drawnAt < Math.max(250, 4 * drawCost)) return;
    render();
    drawnAt = performance.now();
    drawCost = drawnAt - started;
  }

  async function reload() {
    const mine = ++generation;
    const current = () => mine === generation;
    progress = { done: false, pages: 0, truncated: false };  // a search meanwhile says "loading"
    $("fleet").dataset.state = "loading";
    const q = new URLSearchParams();
    if ($("host").value) q.set("hostname", $("host").value);
    if ($("model").value) q.set("model", $("model").value);
    q.set("limit", String(PAGE));
    // This load's own list: the shown one (of an older load, until this one's first page)
    // is replaced, never added to, so two loads never mix.
    const list = [], values = new Map();
    let pages = 0;
    const truncated = await readFleet(q, $("metric").value, current, (found, read) => {
      list.push(...found);
      for (const [uuid, value] of read) values.set(uuid, value);
      gpus = list;
      latest = values;
      progress = { done: false, pages: ++pages, truncated: false };
      draw(pages === 1);
    });
    if (!current()) return;  // the filters or the metric changed meanwhile
    progress = { done: true, pages, truncated };
    draw(true);
  }

  function remember() {
    const q = new URLSearchParams();
    for (const id of ["metric", "host", "model"]) if ($(id).value) q.set(id, $(id).value);
    if ($("search").value) q.set("q", $("search").value);
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  /** Say which filter lists stopped at their page cap (a fleet of more than 50,000 hosts). */
  function listsCut(lists) {
    const cut = Object.entries(lists).filter(([, names]) => names.truncated);
    const note = $("lists-cut");
    note.hidden = cut.length === 0;
    note.textContent = cut.map(([kind, names]) => `The ${kind.slice(0, -1)} list offers the first ` +
      `${names.length} ${kind} only (it reads at most ${names.maxPages} pages).`).join(" ") +
      (cut.length ? " Open another with its link, e.g. /ui/?host=NAME." : "");
    $("fleet").dataset.listsCut = cut.map(([kind]) => kind).join(",");
  }

  async function init() {
    const [metricNames, hostNames, modelNames] = await Promise.all([
      allPages("/api/v1/metrics?limit=1000", "metrics"), allPages("/api/v1/hosts?limit=1000", "hosts"),
      allPages("/api/v1/models?limit=1000", "models"),
    ]);
    const metrics = { metrics: metricNames }, hosts = { hosts: hostNames };
    const p = params();
    const chosen = p.get("metric") || PREFERRED.find((m) => metrics.metrics.includes(m)) || metrics.metrics[0] || "";
    $("metric").replaceChildren(...metrics.metrics.map((m) => el("option", { value: m, text: m })));
    $("metric").value = chosen;
    $("host").append(...hosts.hosts.map((h) => el("option", { value: h, text: h })));
    $("model").append(...modelNames.map((m) => el("option", { value: m, text: m })));
    // A host or model past a list's cap is still reachable by its link (?host=…, ?model=…).
    for (const id of ["host", "model"]) {
      const wanted = p.get(id);
      if (wanted && ![...$(id).options].some((o) => o.value === wanted)) {
        $(id).append(el("option", { value: wanted, text: wanted }));
      }
      $(id).value = wanted || "";
    }
    listsCut({ metrics: metricNames, hosts: hostNames, models: modelNames });
    $("search").value = p.get("q") || "";
    $("search").addEventListener("input", () => { remember(); render(); });
    for (const id of ["metric", "host", "model"]) {
      $(id).addEventListener("change", () => { remember(); reload().catch(showError); });
    }
    $("controls").addEventListener("submit", (e) => e.preventDefault());
    await reload();
  }

  document.addEventListener("DOMContentLoaded", () => init().catch(showError));
})();
