/* GPU page: descriptor and latest values (GET /api/v1/gpus/{uuid}), then one uPlot per metric
   over the chosen window (GET …/telemetry, downsampled with every/agg when the window is long). */
"use strict";

(() => {
  const { getJson, allPages, el, fmt, fmtTime, showError, table } = gputel;
  const $ = (id) => document.getElementById(id);
  const uuid = $("gpu-title").dataset.uuid;
  const api = `/api/v1/gpus/${encodeURIComponent(uuid)}`;
  const RAW_MAX_S = 900;          // up to 15 min: every point
  const TARGET_POINTS = 600;      // longer: about this many windows per metric
  const STEPS = [["5s", 5], ["10s", 10], ["15s", 15], ["30s", 30], ["1m", 60], ["2m", 120],
    ["5m", 300], ["10m", 600], ["15m", 900], ["30m", 1800], ["1h", 3600], ["6h", 21600], ["1d", 86400]];
  window.gputelPlots = {};

  /** The every= of a window, or null for raw points. */
  function every(seconds) {
    if (seconds <= RAW_MAX_S) return null;
    const target = seconds / TARGET_POINTS;
    return (STEPS.find(([, s]) => s >= target) || STEPS[STEPS.length - 1])[0];
  }

  function iso(ms) { return new Date(ms).toISOString(); }  // ends in Z: nothing to URL-encode

  function describe(body) {
    const g = body.gpu;
    $("crumb-host").textContent = g.hostname;
    const rows = [["uuid", g.uuid], ["host", g.hostname], ["index", g.gpu], ["device", g.device],
      ["model", g.model], ["last seen", fmtTime(g.last_seen)]];
    $("descriptor").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v ?? "–") })]));
    const tbody = $("latest").querySelector("tbody");
    tbody.replaceChildren(...body.latest.map((p) => el("tr", { "data-metric": p.metric },
      el("td", { text: p.metric }), el("td", { class: "num", text: fmt(p.value) }),
      el("td", { text: fmtTime(p.time) }), el("td", { text: p.source_time ? fmtTime(p.source_time) : "–" }))));
    return body.latest.map((p) => p.metric);
  }

  function plot(metric, xs, ys, note) {
    const box = el("div", { class: "plot", "data-metric": metric, "data-points": String(xs.length) },
      el("h3", { text: metric }), el("p", { class: "muted", text: note }));
    $("plots").append(box);
    const opts = {
      width: Math.max(320, box.clientWidth - 8), height: 180,
      scales: { x: { time: true } },
      series: [{}, { label: metric, stroke: "#2b6cb0", width: 1.5, fill: "rgba(43,108,176,0.08)", points: { show: xs.length < 120 } }],
      axes: [{}, { size: 72 }],
      legend: { show: true },
    };
    window.gputelPlots[metric] = new uPlot(opts, [xs, ys], box);
  }

  async function draw(startMs, endMs) {
    const seconds = (endMs - startMs) / 1000;
    const step = every(seconds);
    const q = new URLSearchParams({ start_time: iso(startMs), end_time: iso(endMs), limit: "10000" });
    if (step) { q.set("every", step); q.set("agg", "mean"); }
    $("plots").dataset.state = "loading";
    $("plots").dataset.query = q.toString();
    $("window-note").textContent = `${fmtTime(iso(startMs))} → ${fmtTime(iso(endMs))}, ` +
      (step ? `mean of every ${step} (downsampled by the API)` : "every point");
    const points = await allPages(`${api}/telemetry?${q}`, "points", 20);
    const series = new Map();
    for (const p of points) {
      if (!series.has(p.metric)) series.set(p.metric, [[], []]);
      const s = series.get(p.metric);
      s[0].push(Date.parse(p.time) / 1000);
      s[1].push(p.value);
    }
    for (const u of Object.values(window.gputelPlots)) u.destroy();
    window.gputelPlots = {};
    $("plots").replaceChildren();
    const metrics = [...series.keys()].sort();
    for (const m of metrics) {
      const [xs, ys] = series.get(m);
      plot(m, xs, ys, `${xs.length} ${step ? "windows" : "points"}`);
    }
    if (!metrics.length) $("plots").append(el("p", { class: "hint", text: "No points in this window." }));
    $("plots").dataset.plots = String(metrics.length);
    $("plots").dataset.state = "ready";
  }

  function local(ms) {  // for datetime-local inputs (the browser's time zone)
    const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
    return d.toISOString().slice(0, 19);
  }

  async function init() {
    describe(await getJson(api));
    const choose = (seconds) => {
      const end = Date.now(), start = end - seconds * 1000;
      $("from").value = local(start);
      $("to").value = local(end);
      history.replaceState(null, "", `${location.pathname}?window=${seconds}`);
      return draw(start, end).catch(showError);
    };
    for (const b of document.querySelectorAll("button[data-window]")) {
      b.addEventListener("click", () => choose(Number(b.dataset.window)));
    }
    $("window").addEventListener("submit", (e) => {
      e.preventDefault();
      const start = new Date($("from").value).getTime(), end = new Date($("to").value).getTime();
      if (!(start < end)) { showError(new Error("custom window: 'from' must be before 'to'")); return; }
      draw(start, end).catch(showError);
    });
    const p = new URLSearchParams(location.search);
    await choose(Number(p.get("window")) || 900);
  }

  document.addEventListener("DOMContentLoaded", () => init().catch(showError));
})();
