// A conversation as a timeline (agents as lanes, messages as arrows in time order) and the
// causation tree of a message, drawn from /admin/conversations/{id}/timeline and
// /admin/trace/{id}. Plain SVG and DOM; text only through textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const LANE = 150, TOP = 36, ROW = 30;

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function arrowDetail(a) {
    const dash = window.aosDash;
    dash.showDetail(`${a.message_type} ${a.message_id} (${a.from} → ${a.to})`,
      a.encrypted ? "encrypted" : { content: a.content, latency_ms: a.latency_ms, at: new Date(a.at * 1000).toISOString() });
  }

  async function timeline(id) {
    const dash = window.aosDash;
    const box = document.getElementById("timeline");
    let data;
    try { data = await dash.api(`/admin/conversations/${encodeURIComponent(id)}/timeline`); } catch (e) {
      box.textContent = e.message;
      return;
    }
    const lanes = data.lanes;
    const width = Math.max(lanes.length, 2) * LANE;
    const height = TOP + (data.arrows.length + 1) * ROW;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "timeline-svg",
      "data-conversation-id": id });
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrowhead", markerWidth: 8, markerHeight: 8, refX: 7, refY: 4, orient: "auto" });
    marker.append(svg("path", { d: "M0,0 L8,4 L0,8 z", class: "arrowhead" }));
    defs.append(marker);
    root.append(defs);
    const x = (who) => LANE / 2 + lanes.indexOf(who) * LANE;
    lanes.forEach((lane) => {
      const g = svg("g", { class: "lane", "data-lane": lane });
      g.append(svg("line", { x1: x(lane), y1: TOP - 8, x2: x(lane), y2: height, class: "lane-line" }));
      const label = svg("text", { x: x(lane), y: 16, class: "lane-label", "text-anchor": "middle" });
      label.textContent = lane;
      g.append(label);
      root.append(g);
    });
    data.arrows.forEach((a) => {
      const y = TOP + (a.index + 0.5) * ROW;
      const g = svg("g", { class: "arrow", "data-index": a.index, "data-from": a.from, "data-to": a.to,
        "data-message-id": a.message_id, "data-encrypted": String(a.encrypted), tabindex: 0 });
      const x1 = x(a.from), x2 = x(a.to);
      const self = x1 === x2;
      g.append(svg("line", { x1, y1: y, x2: self ? x1 + 30 : x2 + (x2 > x1 ? -4 : 4), y2: y,
        class: "arrow-line arrow-" + a.message_type, "marker-end": "url(#arrowhead)" }));
      const label = svg("text", { x: (x1 + x2) / 2, y: y - 4, class: "arrow-label", "text-anchor": "middle" });
      const latency = a.latency_ms === null ? "" : ` · ${a.latency_ms} ms`;
      label.textContent = `${a.message_type} ${String(a.message_id).slice(0, 8)}${latency}`;
      g.append(label);
      g.addEventListener("click", () => arrowDetail(a));
      root.append(g);
    });
    box.replaceChildren(root);
  }

  function stepText(s) {
    if (s.kind === "attempt") {
      return `attempt ${s.attempt} by ${s.agent}: ${s.ok ? "ok" : "failed"}` +
        (s.duration_ms !== undefined ? ` (${s.duration_ms} ms)` : "") + (s.error ? ` — ${s.error}` : "");
    }
    if (s.kind === "dead_letter") return `dead-lettered in ${s.agent}: ${s.reason}` + (s.error ? ` — ${s.error}` : "");
    return `${s.kind} to ${s.agent}`;
  }

  function traceNode(n) {
    const el = window.aosDash.el;
    const steps = el("ol", { class: "steps" }, ...n.steps.map((s) =>
      el("li", { class: "step", "data-kind": s.kind, "data-attempt": s.attempt, "data-ok": s.ok, text: stepText(s) })));
    const kids = el("ul", { class: "children" }, ...n.children.map(traceNode));
    return el("li", { class: "trace-node", "data-message-id": n.message_id, "data-message-type": n.message_type },
      el("div", { class: "trace-head" },
        el("span", { class: "kind", text: n.message_type + " " }),
        el("span", { class: "mono", text: String(n.message_id).slice(0, 8) + " " }),
        el("span", { text: `${n.sender || "?"} → ${(n.queues || []).join(", ")} ` }),
        el("span", { class: "preview mono muted", text: n.content || "" })),
      steps, kids);
  }

  async function trace(id) {
    const dash = window.aosDash;
    const box = document.getElementById("trace");
    document.getElementById("trace-id").value = id;
    let data;
    try { data = await dash.api(`/admin/trace/${encodeURIComponent(id)}`); } catch (e) {
      box.classList.add("muted");
      box.textContent = e.message;
      return;
    }
    box.classList.remove("muted");
    box.replaceChildren(dash.el("ul", { class: "trace-tree", "data-trace-id": id }, ...data.roots.map(traceNode)));
  }

  // ---------------------------------------------------------------- the inbox

  const drafts = new Map();

  function inboxNotice(text, bad) {
    const p = document.getElementById("inbox-notice");
    p.textContent = text;
    p.classList.toggle("bad", !!bad);
    p.hidden = false;
  }

  async function answer(taskId, form) {
    const dash = window.aosDash;
    const text = form.querySelector("textarea").value.trim();
    if (!text) return;
    form.querySelector("button").disabled = true;
    try {
      const done = await dash.api(`/admin/tasks/${encodeURIComponent(taskId)}/answer`,
        { method: "POST", body: JSON.stringify({ text }) });
      drafts.delete(taskId);
      inboxNotice(`Answered task ${String(taskId).slice(0, 8)}: it is ${done.state} again.`, false);
    } catch (e) {
      inboxNotice(`Answering failed: ${e.message}`, true);
      form.querySelector("button").disabled = false;
    }
    await inbox();
  }

  async function inbox() {
    const dash = window.aosDash;
    let data;
    try { data = await dash.api("/admin/tasks"); } catch (e) { return; }
    const list = document.getElementById("inbox");
    // Keep what someone is typing across refreshes.
    for (const area of list.querySelectorAll("textarea")) drafts.set(area.dataset.taskId, area.value);
    if (list.contains(document.activeElement) && document.activeElement.tagName === "TEXTAREA") return;
    const el = dash.el;
    const items = data.tasks.map((t) => {
      const area = el("textarea", { rows: 2, cols: 40, "data-task-id": t.task_id, placeholder: "your answer" });
      area.value = drafts.get(t.task_id) || "";
      const form = el("form", { class: "answer" }, area, el("button", { type: "submit", text: "Answer" }));
      form.addEventListener("submit", (ev) => { ev.preventDefault(); answer(t.task_id, form); });
      return el("li", { class: "task", "data-task-id": t.task_id, "data-agent": t.agent_id },
        el("div", {},
          el("span", { class: "who", text: t.agent_id }),
          el("span", { class: "muted small", text: ` · task ${String(t.task_id).slice(0, 8)} · turn ${t.turns} · ${dash.when(t.updated_at)}` })),
        el("div", { class: "question", text: t.question || "(no question text)" }),
        form);
    });
    list.replaceChildren(...items);
    document.getElementById("inbox-empty").hidden = items.length > 0;
    document.getElementById("inbox-empty").textContent = data.available
      ? "No task is waiting for input." : "No A2A tasks on this node.";
    document.getElementById("inbox-count").textContent = items.length ? `(${items.length})` : "";
  }

  window.aosViews = { timeline, trace, inbox };

  document.addEventListener("DOMContentLoaded", () => {
    const every = (window.aosDash && window.aosDash.interval) || 1000;
    inbox();
    setInterval(inbox, Math.max(every, 500));
    document.getElementById("trace-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = document.getElementById("trace-id").value.trim();
      if (id) trace(id);
    });
  });
})();
