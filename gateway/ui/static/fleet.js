/* Fleet page: every GPU (GET /api/v1/gpus, filtered by host and model) in a grid per host,
   coloured by the latest value of the chosen metric (GET /api/v1/gpus/{uuid}). */
"use strict";

(() => {
  const { getJson, allPages, pool, el, fmt, showError } = gputel;
  const PREFERRED = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_FB_USED"];
  const latest = new Map();  // uuid -> Map(metric -> value): a metric may be named `constructor`
  const $ = (id) => document.getElementById(id);
  let gpus = [];

  function params() { return new URLSearchParams(location.search); }

  function colour(value, lo, hi) {
    if (value === undefined) return "var(--empty)";
    const t = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    return `hsl(${Math.round(120 - 120 * t)}, 65%, ${Math.round(42 + 8 * (1 - t))}%)`;
  }

  /** Read the latest values of the GPUs not read yet. One GPU that cannot be read (gone since
      the list, or stored before the streamer refused its uuid) is shown without a value and
      named in the error box: it does not take the rest of the fleet with it. */
  async function loadLatest(list) {
    const missing = list.filter((g) => !latest.has(g.uuid));
    const failed = [];
    await pool(missing, 6, async (g) => {
      try {
        const body = await getJson(`/api/v1/gpus/${encodeURIComponent(g.uuid)}`);
        latest.set(g.uuid, new Map(body.latest.map((p) => [p.metric, p.value])));
      } catch (err) {
        if (err.status === 401 || err.status === 403) throw err;  // every GPU would fail alike
        failed.push(err);
      }
    });
    if (failed.length) {
      showError(new Error(`latest values of ${failed.length} of ${missing.length} GPUs could not be read; ` +
        `the first: ${failed[0].message}`));
    }
  }

  function latestOf(g, metric) {
    const values = latest.get(g.uuid);
    return values ? values.get(metric) : undefined;
  }

  function render() {
    const metric = $("metric").value;
    const needle = $("search").value.trim().toLowerCase();
    const shown = gpus.filter((g) => !needle || g.uuid.toLowerCase().includes(needle));
    const values = shown.map((g) => latestOf(g, metric)).filter((v) => v !== undefined);
    const lo = values.length ? Math.min(...values) : 0;
    const hi = values.length ? Math.max(...values) : 0;
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
        const value = latestOf(g, metric);
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
    $("fleet").dataset.state = "loading";
    const q = new URLSearchParams();
    if ($("host").value) q.set("hostname", $("host").value);
    if ($("model").value) q.set("model", $("model").value);
    q.set("limit", "1000");
    gpus = await allPages(`/api/v1/gpus?${q}`, "gpus");
    await loadLatest(gpus);
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
      allPages("/api/v1/gpus?limit=1000", "gpus"),
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
    $("metric").addEventListener("change", () => { remember(); render(); });
    $("search").addEventListener("input", () => { remember(); render(); });
    for (const id of ["host", "model"]) {
      $(id).addEventListener("change", () => { remember(); reload().catch(showError); });
    }
    $("controls").addEventListener("submit", (e) => e.preventDefault());
    await reload();
  }

  document.addEventListener("DOMContentLoaded", () => init().catch(showError));
})();
