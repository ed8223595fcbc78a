// Charts over time: sparklines per agent in the agents table and a larger chart for the
// selected agent, drawn as plain SVG from /admin/series (polled; no library, no CDN).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW = 60; // samples shown
  const LINES = [
    ["published", "published/s"], ["acked", "acked/s"], ["dead_lettered", "dead-lettered/s"], ["depth", "depth"],
  ];
  let selected = null;
  let latest = {};

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function points(values, width, height, pad) {
    const max = Math.max(1e-9, ...values.filter((v) => v !== null));
    const step = values.length > 1 ? (width - 2 * pad) / (WINDOW - 1) : 0;
    const x0 = width - pad - step * (values.length - 1);
    return values.map((v, i) => {
      const y = height - pad - ((v === null ? 0 : v) / max) * (height - 2 * pad);
      return `${(x0 + i * step).toFixed(1)},${y.toFixed(1)}`;
    }).join(" ");
  }

  function chart(samples, width, height, keys, labelled) {
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
    root.append(svg("rect", { x: 0, y: 0, width, height, class: "chart-bg" }));
    const shown = samples.slice(-WINDOW);
    keys.forEach(([key, label], i) => {
      const line = svg("polyline", { class: "line line-" + key, "data-series": key, fill: "none",
        points: points(shown.map((s) => s[key]), width, height, 3) });
      root.append(line);
      if (labelled) {
        const last = shown.length ? shown[shown.length - 1][key] : null;
        const text = svg("text", { x: 6 + i * 140, y: 12, class: "legend legend-" + key });
        text.textContent = `${label} ${last === null || last === undefined ? "–" : Number(last).toFixed(2)}`;
        root.append(text);
      }
    });
    return root;
  }

  function drawSparks() {
    for (const row of document.querySelectorAll("#queues tbody tr")) {
      const cell = row.querySelector(".spark");
      const samples = latest[row.dataset.agent];
      if (!cell || !samples) continue;
      const spark = chart(samples, 110, 24, [["published", ""], ["depth", ""]], false);
      spark.setAttribute("data-agent", row.dataset.agent);
      spark.classList.add("sparkline");
      cell.replaceChildren(spark);
    }
  }

  function drawSelected() {
    const box = document.getElementById("agent-chart");
    if (!selected || !latest[selected]) return;
    const samples = latest[selected];
    const title = document.createElement("h3");
    title.textContent = `${selected} — the last ${Math.min(samples.length, WINDOW)} samples`;
    const rates = chart(samples, 640, 140, LINES, true);
    rates.setAttribute("id", "agent-chart-rates");
    const latency = chart(samples, 640, 90, [["p50_ms", "p50 ms"], ["p95_ms", "p95 ms"]], true);
    latency.setAttribute("id", "agent-chart-latency");
    box.classList.remove("muted");
    box.dataset.agent = selected;
    box.replaceChildren(title, rates, latency);
  }

  async function poll() {
    const dash = window.aosDash;
    if (!dash) return;
    try {
      const data = await dash.api("/admin/series");
      latest = data.agents || {};
    } catch (e) { return; }
    drawSparks();
    drawSelected();
  }

  window.aosCharts = {
    select(agent) { selected = agent; drawSelected(); },
  };

  document.addEventListener("DOMContentLoaded", () => {
    const every = (window.aosDash && window.aosDash.interval) || 1000;
    poll();
    setInterval(poll, every);
  });
})();
