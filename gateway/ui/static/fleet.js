/* Fleet page: every GPU (filtered by host and model) in a grid per host, coloured by the
   latest value of the chosen metric: GET /api/v1/latest, one request per page of GPUs. */
"use strict";

(() => {
  const { allPages, el, fmt, showError } = gputel;
  const PREFERRED = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_FB_USED"];
  const PAGE = 1000, MAX_PAGES = 200;  // up to 200,000 GPUs
  const $ = (id) => document.getElementById(id);
  let gpus = [];
  let latest = new Map();  // uuid -> the latest value of the shown metric
  let generation = 0;  // the newest reload's number: an older one that ends later is dropped

  function params() { return new URLSearchParams(location.search); }

  function colour(value, lo, hi) {
    if (value === undefined) return "var(--empty)";
    const t = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    return `hsl(${Math.round(120 - 120 * t)}, 65%, ${Math.round(42 + 8 * (1 - t))}%)`;
  }

  /** The GPUs of query `q` and their latest `metric`: one GET /api/v1/latest a page. When
      the values cannot be read (a store error), the GPUs are still listed (GET
      /api/v1/gpus) without values and the error box says why: the fleet does not go blank. */
  async function readFleet(q, metric) {
    const values = new Map();
    if (metric) {
      try {
        const path = `/api/v1/latest?${q}&metric=${encodeURIComponent(metric)}`;
        const page = await allPages(path, "gpus", MAX_PAGES);
        for (const entry of page) {
          const point = entry.latest.find((p) => p.metric === metric);
          if (point) values.set(entry.gpu.uuid, point.value);
        }
        return { list: page.map((entry) => entry.gpu), values };
      } catch (err) {
        if (err.status === 401 || err.status === 403) throw err;  // the list would fail alike
        showError(new Error(`latest values could not be read, GPUs shown without them: ${err.message}`));
      }
    }
    return { list: await allPages(`/api/v1/gpus?${q}`, "gpus", MAX_PAGES), values };
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
      `${shown.length} GPUs on ${byHost.size} hosts, coloured by the latest ${metric}`;
    root.dataset.gpus = String(shown.length);
    root.dataset.state = "ready";
  }

  async function reload() {
    const mine = ++generation;
    $("fleet").dataset.state = "loading";
    const q = new URLSearchParams();
    if ($("host").value) q.set("hostname", $("host").value);
    if ($("model").value) q.set("model", $("model").value);
    q.set("limit", String(PAGE));
    const found = await readFleet(q, $("metric").value);
    if (mine !== generation) return;  // the filters or the metric changed meanwhile
    ({ list: gpus, values: latest } = found);
    render();
  }

  function remember() {
    const q = new URLSearchParams();
    for (const id of ["metric", "host", "model"]) if ($(id).value) q.set(id, $(id).value);
    if ($("search").value) q.set("q", $("search").value);
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  async function init() {
    const [metricNames, hostNames, all] = await Promise.all([
      allPages("/api/v1/metrics?limit=1000", "metrics"), allPages("/api/v1/hosts?limit=1000", "hosts"),
      allPages("/api/v1/gpus?limit=10000", "gpus", MAX_PAGES / 10),  // for the model list
    ]);
    const metrics = { metrics: metricNames }, hosts = { hosts: hostNames };
    const p = params();
    const chosen = p.get("metric") || PREFERRED.find((m) => metrics.metrics.includes(m)) || metrics.metrics[0] || "";
    $("metric").replaceChildren(...metrics.metrics.map((m) => el("option", { value: m, text: m })));
    $("metric").value = chosen;
    $("host").append(...hosts.hosts.map((h) => el("option", { value: h, text: h })));
    const models = [...new Set(all.map((g) => g.model))].sort();
    $("model").append(...models.map((m) => el("option", { value: m, text: m })));
    $("host").value = p.get("host") || "";
    $("model").value = p.get("model") || "";
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
