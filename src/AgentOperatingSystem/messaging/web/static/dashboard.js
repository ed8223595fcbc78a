// AOS Messaging dashboard: plain JavaScript, no dependencies, same-origin only.
// Everything shown comes from the node's /admin JSON API; text is always set with
// textContent, never parsed as HTML.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");
  const interval = Math.max(250, Number(params.get("interval") || 1000));
  const MAX_EVENTS = 300;

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (token) opts.headers["Authorization"] = "Bearer " + token;
    if (opts.body !== undefined) opts.headers["Content-Type"] = "application/json";
    const response = await fetch(path, opts);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : response.statusText;
      throw new Error(message || ("HTTP " + response.status));
    }
    return data;
  }

  function shortId(id) { return id ? String(id).slice(0, 8) : ""; }
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleTimeString();
  }
  function clock(epochSeconds) {
    const d = new Date(epochSeconds * 1000);
    return d.toLocaleTimeString() + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function showDetail(title, data) {
    $("#detail-title").textContent = title;
    $("#detail-body").textContent = JSON.stringify(data, null, 2);
    const dialog = $("#detail");
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
  }

  window.aosDash = { api, el, showDetail, shortId, when, token, interval };

  // ---------------------------------------------------------------- node info

  async function loadInfo() {
    try {
      const info = await api("/admin/info");
      const parts = [];
      if (info.node_id) parts.push("node " + info.node_id);
      if (info.url) parts.push(info.url);
      if (info.broker_url) parts.push("engine " + info.broker_url);
      parts.push("bus " + (info.bus_id || "?"));
      $("#node-info").textContent = parts.join(" · ");
    } catch (e) {
      $("#node-info").textContent = "node unreachable: " + e.message;
    }
  }

  // ---------------------------------------------------------------- queues

  const lastDepth = new Map();

  async function loadQueues() {
    let queues, stats;
    try {
      [queues, stats] = await Promise.all([api("/admin/queues"), api("/admin/stats")]);
    } catch (e) {
      $("#queues-updated").textContent = "(" + e.message + ")";
      return;
    }
    const counts = new Map((stats.agents || []).map((row) => [row.agent, row]));
    const body = $("#queues tbody");
    const seen = new Set();
    for (const q of queues.queues) {
      seen.add(q.agent);
      let row = body.querySelector(`tr[data-agent="${CSS.escape(q.agent)}"]`);
      if (!row) {
        row = el("tr", { "data-agent": q.agent },
          el("td", { class: "agent mono", text: q.agent }),
          el("td", { class: "depth num" }),
          el("td", { class: "dead num" }),
          el("td", { class: "consumer" }),
          el("td", { class: "published num" }),
          el("td", { class: "acked num" }),
          el("td", { class: "nacked num" }),
          el("td", { class: "spark" }));
        row.addEventListener("click", () => { if (window.aosCharts) window.aosCharts.select(q.agent); });
        body.append(row);
      }
      const c = counts.get(q.agent) || {};
      const depthCell = row.querySelector(".depth");
      if (lastDepth.has(q.agent) && lastDepth.get(q.agent) !== q.depth) {
        depthCell.classList.remove("changed");
        void depthCell.offsetWidth;
        depthCell.classList.add("changed");
      }
      lastDepth.set(q.agent, q.depth);
      depthCell.textContent = String(q.depth);
      row.querySelector(".dead").textContent = String(q.dead_letters);
      row.querySelector(".consumer").textContent = q.subscribed ? "subscribed" : "";
      row.querySelector(".published").textContent = stats.metrics ? String(c.published || 0) : "–";
      row.querySelector(".acked").textContent = stats.metrics ? String(c.acked || 0) : "–";
      row.querySelector(".nacked").textContent = stats.metrics ? String(c.nacked || 0) : "–";
    }
    for (const row of [...body.querySelectorAll("tr")]) {
      if (!seen.has(row.dataset.agent)) row.remove();
    }
    $("#queues-empty").hidden = queues.queues.length > 0;
    $("#queues-updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // ---------------------------------------------------------------- dead letters

  function dlqNotice(text, bad) {
    const p = $("#dlq-notice");
    p.textContent = text;
    p.classList.toggle("bad", !!bad);
    p.hidden = false;
  }

  async function resubmit(agent, messageId, button) {
    button.disabled = true;
    try {
      await api(`/admin/dlq/${encodeURIComponent(agent)}/${encodeURIComponent(messageId)}/resubmit`,
        { method: "POST", body: "{}" });
      dlqNotice(`Resubmitted ${shortId(messageId)} to ${agent}.`, false);
      const row = button.closest("tr");
      if (row) row.remove();
      await Promise.all([loadDeadLetters(), loadQueues()]);
    } catch (e) {
      dlqNotice(`Resubmitting ${shortId(messageId)} failed: ${e.message}`, true);
      button.disabled = false;
    }
  }

  async function showDeadLetter(agent, messageId) {
    try {
      const data = await api(`/admin/dlq/${encodeURIComponent(agent)}/${encodeURIComponent(messageId)}`);
      showDetail(`Dead letter ${messageId} (${agent})`, data);
    } catch (e) {
      dlqNotice(e.message, true);
    }
  }

  function dlqFilter() {
    const out = {};
    const agent = $("#dlq-agent").value.trim();
    const reason = $("#dlq-reason").value.trim();
    const since = $("#dlq-since").value;
    const until = $("#dlq-until").value;
    if (agent) out.agent = agent;
    if (reason) out.reason = reason;
    if (since) out.since = new Date(since).toISOString();
    if (until) out.until = new Date(until).toISOString();
    return out;
  }

  function dlqFilterQuery(limit) {
    const q = new URLSearchParams(dlqFilter());
    if (limit) q.set("limit", String(limit));
    return q.toString();
  }

  // A bulk action: count first (dry run), show it, act only on a second click.
  let pendingBulk = null;

  async function bulkPrepare(action) {
    const filter = dlqFilter();
    let counted;
    try { counted = await api("/admin/dlq/count?" + dlqFilterQuery(0)); } catch (e) {
      dlqNotice(e.message, true);
      return;
    }
    pendingBulk = { action, filter, count: counted.count };
    $("#dlq-bulk-count").textContent = String(counted.count);
    $("#dlq-bulk-action").textContent = action;
    $("#dlq-confirm").hidden = false;
  }

  async function bulkConfirm() {
    const job = pendingBulk;
    pendingBulk = null;
    $("#dlq-confirm").hidden = true;
    if (!job) return;
    try {
      const done = await api("/admin/dlq/" + job.action, { method: "POST", body: JSON.stringify(job.filter) });
      const n = job.action === "resubmit" ? done.resubmitted : done.purged;
      dlqNotice(`${job.action === "resubmit" ? "Resubmitted" : "Purged"} ${n} of ${job.count} dead letters.`, false);
    } catch (e) {
      dlqNotice(`${job.action} failed: ${e.message}`, true);
    }
    await Promise.all([loadDeadLetters(), loadQueues()]);
  }

  async function loadDeadLetters() {
    let data;
    try { data = await api("/admin/dlq?" + dlqFilterQuery(200)); } catch (e) { return; }
    const body = $("#dlq tbody");
    const rows = [];
    for (const d of data.dead_letters) {
      rows.push(el("tr", { "data-agent": d.agent, "data-message-id": d.message_id },
        el("td", { class: "mono", text: d.agent }),
        el("td", { class: "mono", title: d.message_id },
          el("a", { href: "#", text: shortId(d.message_id),
            onclick: (ev) => { ev.preventDefault(); showDeadLetter(d.agent, d.message_id); } })),
        el("td", { text: d.message_type }),
        el("td", { class: "reason", text: d.reason }),
        el("td", { class: "error-text", text: d.error || "" }),
        el("td", { class: "num", text: d.attempts === null || d.attempts === undefined ? "" : d.attempts }),
        el("td", { text: when(d.dead_lettered_at) }),
        el("td", {},
          el("button", { type: "button", class: "resubmit", text: "Resubmit",
            onclick: (ev) => resubmit(d.agent, d.message_id, ev.currentTarget) }))));
    }
    body.replaceChildren(...rows);
    $("#dlq-empty").hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- live stream

  let source = null;

  function describe(event) {
    switch (event.event) {
      case "published":
        return `${event.message_type} ${event.sender} → ${(event.queues || []).join(", ") || event.recipient || "?"}`;
      case "handled":
        return `${event.message_type} by ${event.agent} (attempt ${event.attempt}, ${event.duration_ms} ms)` +
          (event.ok ? "" : ` — ${event.error}`);
      case "resubmitted":
        return `from the dead-letter queue back to ${event.agent}`;
      case "dropped":
        return `${event.count} events dropped (the page fell behind)`;
      default:
        return `${event.message_type} in ${event.agent}`;
    }
  }

  function addEvent(event) {
    if ($("#stream-pause").checked) return;
    const kind = event.event === "handled" ? (event.ok ? "handled" : "failed") : event.event;
    const item = el("li", {
        "data-event": event.event,
        "data-message-id": event.message_id || "",
        "data-agent": event.agent || "",
        "data-ok": event.ok === undefined ? "" : String(event.ok),
      },
      el("span", { class: "muted mono", text: clock(event.time || Date.now() / 1000) + " " }),
      el("span", { class: "kind", text: kind }),
      el("span", { class: "mono", text: event.message_id ? shortId(event.message_id) + " " : "" }),
      el("span", { text: describe(event) + " " }),
      el("span", { class: "preview mono", text: event.content || "" }));
    if (event.message_id) {
      item.addEventListener("click", () => { if (window.aosViews) window.aosViews.trace(event.message_id); });
    }
    const list = $("#stream");
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function connectStream() {
    const status = $("#status");
    const url = "/admin/tail" + (token ? "?token=" + encodeURIComponent(token) : "");
    source = new EventSource(url);
    source.onopen = () => { status.dataset.state = "live"; };
    source.onerror = () => { status.dataset.state = "retrying"; };
    source.onmessage = (msg) => {
      try { addEvent(JSON.parse(msg.data)); } catch (e) { /* ignore a bad line */ }
    };
    source.addEventListener("dropped", (msg) => {
      try { addEvent(JSON.parse(msg.data)); } catch (e) { /* ignore */ }
    });
  }

  // ---------------------------------------------------------------- conversations

  async function loadConversations() {
    let data;
    try { data = await api("/admin/conversations"); } catch (e) { return; }
    const list = $("#conversations");
    if (!data.available) {
      list.replaceChildren(el("li", { class: "muted", text: "No conversation storage on this node." }));
      return;
    }
    const selected = list.querySelector("li.selected");
    const keep = selected ? selected.dataset.conversationId : null;
    const items = data.conversations.slice().reverse().map((c) => {
      const li = el("li", { "data-conversation-id": c.conversation_id, class: c.conversation_id === keep ? "selected" : "" },
        el("div", { text: c.topic || "(no topic)" }),
        el("div", { class: "muted small",
          text: `${c.state} · ${c.message_count} turns · ${(c.participants || []).join(", ")}` }));
      li.addEventListener("click", () => {
        for (const other of list.querySelectorAll("li.selected")) other.classList.remove("selected");
        li.classList.add("selected");
        showConversation(c.conversation_id);
        if (window.aosViews) window.aosViews.timeline(c.conversation_id);
      });
      return li;
    });
    if (!items.length) items.push(el("li", { class: "muted", text: "No conversations yet." }));
    list.replaceChildren(...items);
  }

  async function showConversation(id) {
    const box = $("#conversation");
    box.classList.remove("muted");
    let data;
    try {
      data = await api(`/admin/conversations/${encodeURIComponent(id)}`);
    } catch (e) {
      box.textContent = e.message;
      return;
    }
    const c = data.conversation;
    const turns = data.history.map((t) =>
      el("div", { class: "turn", "data-sequence": t.sequence },
        el("div", {},
          el("span", { class: "who", text: t.sender_id }),
          el("span", { class: "muted small", text: ` · ${t.message_type} · ${when(t.timestamp)}` })),
        el("div", { text: typeof t.content === "string" ? t.content : JSON.stringify(t.content) })));
    box.replaceChildren(
      el("h3", { text: c.topic || c.conversation_id }),
      el("p", { class: "muted small",
        text: `${c.state} · started ${when(c.started_at)} · ${(c.participants || []).join(", ")}` }),
      ...turns);
  }

  // ---------------------------------------------------------------- start

  async function tick() {
    await Promise.all([loadQueues(), loadDeadLetters()]);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#stream-clear").addEventListener("click", () => $("#stream").replaceChildren());
    for (const id of ["#dlq-agent", "#dlq-reason", "#dlq-since", "#dlq-until"]) {
      $(id).addEventListener("change", () => { $("#dlq-confirm").hidden = true; pendingBulk = null; loadDeadLetters(); });
    }
    $("#dlq-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadDeadLetters(); });
    $("#dlq-bulk-resubmit").addEventListener("click", () => bulkPrepare("resubmit"));
    $("#dlq-bulk-purge").addEventListener("click", () => bulkPrepare("purge"));
    $("#dlq-confirm-go").addEventListener("click", bulkConfirm);
    $("#dlq-confirm-cancel").addEventListener("click", () => { pendingBulk = null; $("#dlq-confirm").hidden = true; });
    loadInfo();
    connectStream();
    tick();
    loadConversations();
    setInterval(tick, interval);
    setInterval(loadConversations, Math.max(interval * 5, 5000));
  });
})();
