/* Pipeline page: topics, partitions, groups and lag from the broker's Admin API read calls
   (GET /ui/api/pipeline, the documents `walbroker admin … --json` prints), every 5 s.
   Points/s in = growth of the topics' log end offsets; stored = growth of the consumer
   groups' committed offsets (a collector commits only after its store acknowledged). */
"use strict";

(() => {
  const { getJson, el, fmt, fmtBytes, showError, storeState, table } = gputel;
  const $ = (id) => document.getElementById(id);
  const PERIOD_MS = 5000;
  let previous = null;

  function nsTime(ns) { return ns ? new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–"; }

  function totals(doc) {
    const appended = doc.topics.reduce((sum, t) => sum + t.topic.log_end_offset, 0);
    const committed = doc.groups.filter((g) => g.group.role !== "producer")
      .reduce((sum, g) => sum + g.partitions.reduce((s, p) => s + (p.committed_offset || 0), 0), 0);
    return { at: doc.read_at_ms, appended, committed };
  }

  function topics(doc) {
    return doc.topics.map((t) => el("div", { class: "block", "data-topic": t.topic.name },
      el("h3", { text: `${t.topic.name} — ${t.topic.partitions} partitions, ${fmtBytes(t.topic.size_bytes)}` }),
      table(["partition", "log start", "log end", "size", "oldest", "newest"],
        t.partitions.map((p) => [p.partition, fmt(p.log_start_offset), fmt(p.log_end_offset),
          fmtBytes(p.size_bytes), nsTime(p.first_publish_ns), nsTime(p.last_publish_ns)]), [0, 1, 2, 3]),
      el("p", { class: "muted", text: `groups: ${t.groups.join(", ") || "–"}` })));
  }

  function groups(doc) {
    return doc.groups.map((g) => el("div", { class: "block", "data-group": g.group.name },
      el("h3", { text: `${g.group.name} — ${g.group.role || "consumer"} group of ${g.group.topic}, ` +
        `${g.group.state}, generation ${g.group.generation}, lag ${fmt(g.group.lag_points)} points ` +
        `(${g.group.lag_seconds.toFixed(1)} s)` }),
      table(["member", "client", "host", "partitions"], g.members.map((m) =>
        [m.member_id, m.client_id || "–", m.host || "–", m.partitions.join(",") || "–"])),
      table(["topic", "partition", "owner", "committed", "log end", "lag (points)", "lag (s)"],
        g.partitions.map((p) => [p.topic, p.partition, p.owner || "–",
          p.committed_offset === null ? "–" : fmt(p.committed_offset), fmt(p.log_end_offset),
          fmt(p.lag_points), p.lag_seconds.toFixed(1)]), [1, 3, 4, 5, 6])));
  }

  async function refresh() {
    storeState().then((s) => { $("store-health").textContent = s; });
    let doc;
    try {
      doc = await getJson("/ui/api/pipeline");
      $("error").hidden = true;
    } catch (err) {
      showError(err);
      return;
    }
    $("topics").replaceChildren(...topics(doc));
    $("groups").replaceChildren(...groups(doc));
    const lag = doc.groups.filter((g) => g.group.role !== "producer");
    $("lag-total").textContent = lag.length
      ? `${fmt(lag.reduce((s, g) => s + g.group.lag_points, 0))} points, ` +
        `${Math.max(...lag.map((g) => g.group.lag_seconds)).toFixed(1)} s` : "–";
    const now = totals(doc);
    if (previous && now.at > previous.at) {
      const dt = (now.at - previous.at) / 1000;
      $("rate-in").textContent = fmt(Math.round(Math.max(now.appended - previous.appended, 0) / dt));
      $("rate-stored").textContent = fmt(Math.round(Math.max(now.committed - previous.committed, 0) / dt));
    } else {
      $("rate-in").textContent = $("rate-stored").textContent = "measuring…";
    }
    previous = now;
    const root = $("pipeline");
    root.dataset.topics = String(doc.topics.length);
    root.dataset.groups = String(doc.groups.length);
    root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
    root.dataset.state = "ready";
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("broker").dataset.broker) {
      $("pipeline").dataset.state = "ready";
      storeState().then((s) => { $("store-health").textContent = s; });
      return;
    }
    refresh();
    setInterval(refresh, PERIOD_MS);
  });
})();
