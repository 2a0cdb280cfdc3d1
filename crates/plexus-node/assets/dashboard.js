// Plexus dashboard: reads the node's Server-Sent Events stream (/v1/events)
// and redraws. Every text from the cluster goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("plexus-token") || "";
let last = null;
const pubRates = [];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return e;
}

function badge(state, label) {
  return el("span", { class: "badge", "data-state": state }, label || state);
}

function fill(tableId, rows, empty, cols) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: cols }, empty)));
  }
  for (const r of rows) body.append(r);
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return new Date(ms).toLocaleTimeString();
}

function duration(secs) {
  const s = Math.floor(secs);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function render(snap) {
  const st = snap.status;
  document.title = "Plexus · " + st.node;
  $("node-name").textContent = st.node + " (generation " + st.generation + ")";
  $("uptime").textContent = "up " + duration(st.uptime_secs);
  $("updated").textContent = "updated " + new Date(snap.at_ms).toLocaleTimeString();
  const w = $("warning");
  w.hidden = !snap.warning;
  w.textContent = snap.warning || "";

  fill("members", st.members.map((m) =>
    el("tr", { "data-member": m.name },
      el("td", { class: m.local ? "local" : "" }, m.name + (m.local ? " (this node)" : "")),
      el("td", {}, badge(m.status)),
      el("td", {}, m.generation),
      el("td", {}, m.api_addr),
      el("td", {}, m.cluster_addr))), "no members", 5);

  fill("plugins", st.plugins.map((p) => {
    const status = p.node_status === "up" ? p.status : "node " + p.node_status;
    return el("tr", { "data-plugin": p.name, "data-node": p.node },
      el("td", {}, p.name + " ", el("span", { class: "why" }, p.version)),
      el("td", {}, p.node),
      el("td", { class: "status" }, badge(p.node_status === "up" ? p.status : "unavailable", status)),
      el("td", { class: "breaker", "data-state": p.breaker }, badge(p.breaker)),
      el("td", {}, p.restarts),
      el("td", {}, p.handler),
      el("td", {}, p.agents + " / " + p.commands));
  }), "no plugins hosted in the cluster", 7);

  // Rates between this snapshot and the previous one.
  if (last) {
    const dt = (snap.at_ms - last.at_ms) / 1000;
    if (dt > 0) {
      const rate = (k) => Math.max(0, (st.bus[k] - last.status.bus[k]) / dt);
      const pub = rate("published");
      $("rate-published").textContent = pub.toFixed(1);
      $("rate-delivered").textContent = rate("delivered").toFixed(1);
      $("rate-forwarded").textContent = rate("forwarded").toFixed(1);
      pubRates.push(pub);
      if (pubRates.length > 120) pubRates.shift();
      spark();
    }
  }
  $("dead-letters").textContent = st.bus.dead_lettered;

  fill("decisions", snap.decisions.map((d) =>
    el("tr", { "data-decision": d.plugin || "abstained" },
      el("td", {}, ago(d.at_ms)),
      el("td", {}, d.request),
      el("td", {}, d.plugin ? d.plugin + (d.agent ? " → " + d.agent : "") : badge("abstained"),
        d.fallbacks.length ? el("div", { class: "why" }, "fallbacks: " + d.fallbacks.join(", ")) : ""),
      el("td", {}, (d.confidence * 100).toFixed(0) + " %"),
      el("td", { class: "why" }, d.reasons.slice(0, 3).join("; ")))), "no routing decisions yet", 5);

  fill("workflows", snap.workflows.map((r) =>
    el("tr", { "data-run": r.id },
      el("td", {}, r.id, r.error ? el("div", { class: "why" }, r.error) : ""),
      el("td", {}, r.name),
      el("td", {}, r.kind),
      el("td", { class: "status" }, badge(r.status)),
      el("td", { class: "steps" }, ...r.steps.map((s) => {
        const b = badge(s.status, s.id + ": " + s.status);
        b.setAttribute("data-step", s.id);
        if (s.error) b.title = s.error;
        return b;
      })))), "no workflow runs on this node", 5);
  last = snap;
}

function spark() {
  const c = $("spark");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...pubRates);
  g.strokeStyle = "#4f6bed";
  g.lineWidth = 2;
  g.beginPath();
  pubRates.forEach((v, i) => {
    const x = (i / 119) * c.width;
    const y = c.height - 4 - (v / max) * (c.height - 8);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text || state;
}

let source = null;

async function connect() {
  if (source) source.close();
  // One plain request first: EventSource cannot tell a 401 from a network error.
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let r;
  try {
    r = await fetch("/v1/dashboard", { headers });
  } catch (e) {
    setConn("lost", "node unreachable; retrying");
    setTimeout(connect, 2000);
    return;
  }
  if (r.status === 401) {
    setConn("unauthorized", "token needed");
    $("token-form").hidden = false;
    return;
  }
  $("token-form").hidden = true;
  if (r.ok) render(await r.json());
  const url = "/v1/events" + (token ? "?access_token=" + encodeURIComponent(token) : "");
  source = new EventSource(url);
  source.addEventListener("open", () => setConn("live"));
  source.addEventListener("snapshot", (e) => {
    setConn("live");
    render(JSON.parse(e.data));
  });
  source.addEventListener("problem", (e) => {
    const w = $("warning");
    w.hidden = false;
    w.textContent = e.data;
  });
  source.addEventListener("error", () => setConn("lost", "reconnecting"));
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem("plexus-token", token);
  connect();
});

// A token in the address (#token=...) saves typing it; it never reaches the server log.
const m = location.hash.match(/token=([^&]+)/);
if (m) {
  token = decodeURIComponent(m[1]);
  sessionStorage.setItem("plexus-token", token);
}
connect();
