// The status page: one row per node, kept current by the server-sent event stream.
"use strict";

const API = "/api/v1";
const rows = new Map();  // mac -> <tr>
const tbody = document.querySelector("#nodes tbody");
const conn = document.getElementById("conn");
let token = sessionStorage.getItem("ramboot-token") || "";

// Which colour a stage's segment gets: the time from this event to the next one.
const SEG = {
  "dhcp-offer": "dhcp", "dhcp-ack": "dhcp", "proxy-offer": "dhcp", "loader": "loader", "script": "script",
  "kernel": "kernel", "initrd": "initrd", "rootfs": "download", "initramfs": "initramfs",
  "download-start": "download", "download-done": "verify", "verified": "root", "switch-root": "root",
  "booted": "root", "failed": "failed",
};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function fmtBytes(n) {
  if (!n) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

// The API's times are ISO 8601 with a timezone; the bar works in unix seconds.
const unix = (iso) => Date.parse(iso) / 1000;

function timeline(boot) {
  if (!boot) return el("span", { class: "sub" }, "never booted");
  const ev = boot.events.map((e) => ({ ...e, at: unix(e.at) }));
  const started = unix(boot.started), updated = unix(boot.updated);
  const end = boot.stage === "booted" || boot.stage === "failed" ? updated : Math.max(updated, Date.now() / 1000);
  const total = Math.max(end - started, 0.001);
  const bar = el("div", { class: "bar", role: "img" });
  const parts = [];
  ev.forEach((e, i) => {
    const next = i + 1 < ev.length ? ev[i + 1].at : end;
    const secs = Math.max(next - e.at, 0);
    parts.push(`${e.stage} +${(e.at - started).toFixed(1)}s`);
    const seg = el("span", { class: `seg ${SEG[e.stage] || "dhcp"}`, title: `${e.stage}: ${secs.toFixed(2)} s` });
    seg.style.width = `${(100 * secs) / total}%`;
    bar.append(seg);
  });
  bar.setAttribute("aria-label", `timeline: ${parts.join(", ")}`);
  const took = boot.duration != null ? `booted in ${boot.duration.toFixed(1)} s` : `${(end - started).toFixed(1)} s so far`;
  return el("div", {}, bar, el("span", { class: "legend" }, took));
}

function inventory(inv) {
  if (!inv) return el("span", { class: "sub" }, "no report yet");
  const r = inv.report;
  const cpu = r.cpu && r.cpu.count ? `${r.cpu.count} × ${r.cpu.model || "CPU"}` : "";
  const mem = r.memory_kib ? fmtBytes(r.memory_kib * 1024) + " RAM" : "";
  const nics = (r.nics || []).map((n) => `${n.name}${n.speed_mbps ? " " + n.speed_mbps + " Mb/s" : ""}`).join(", ");
  const disks = (r.disks || []).length ? `${r.disks.length} disk(s)` : "no disks";
  const dmi = r.dmi ? [r.dmi.vendor, r.dmi.product, r.dmi.serial].filter(Boolean).join(" ") : "";
  return el("div", {}, [cpu, mem].filter(Boolean).join(", "), el("span", { class: "sub" }, [nics, disks, dmi].filter(Boolean).join(" · ")));
}

function render(n) {
  const boot = n.last_boot;
  const stage = boot ? boot.stage : "—";
  const running = boot && stage !== "booted" && stage !== "failed";
  const name = el("td", {},
    el("span", { class: "mac" }, n.mac),
    el("span", { class: "sub" }, [n.hostname, n.image, n.registered ? (n.discovered ? "discovered" : "") : "unregistered"].filter(Boolean).join(" · ")));
  const stageCell = el("td", {}, el("span", { class: `stage${running ? " running" : ""}`, "data-stage": stage }, stage),
    boot && boot.failure ? el("span", { class: "sub" }, boot.failure) : null);
  const speed = el("td", {}, boot && boot.download_mbps != null ? `${boot.download_mbps.toFixed(0)} Mb/s` : "");
  const tr = el("tr", { "data-mac": n.mac }, name, stageCell, el("td", {}, timeline(boot)), speed, el("td", {}, inventory(n.inventory)));
  const old = rows.get(n.mac);
  if (old) {
    tr.classList.add("changed");
    old.replaceWith(tr);
  } else {
    const after = [...rows.keys()].sort().find((m) => m > n.mac);
    tbody.insertBefore(tr, after ? rows.get(after) : null);
  }
  rows.set(n.mac, tr);
  document.getElementById("empty").hidden = rows.size > 0;
}

function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}` : url;
}

// The API answers 401 without a valid token: ask for one (kept for this tab's session only).
async function load() {
  const r = await fetch(`${API}/status`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (r.status === 401) {
    conn.textContent = token ? "that token was refused; enter the API token" : "a token is needed to read";
    token = "";
    sessionStorage.removeItem("ramboot-token");
    document.getElementById("auth").hidden = false;
    return false;
  }
  if (!r.ok) {  // 403: no token helps (this page's address is not one of the server's names, say)
    let why = `HTTP ${r.status}`;
    try { why = (await r.json()).error || why; } catch (e) { /* not JSON */ }
    conn.textContent = `refused: ${why}`;
    return false;
  }
  (await r.json()).forEach(render);
  document.getElementById("empty").hidden = rows.size > 0;
  return true;
}

function stream() {
  const es = new EventSource(withToken(`${API}/events/stream`));
  es.addEventListener("open", () => { conn.textContent = "live"; load(); });
  es.addEventListener("node", (m) => render(JSON.parse(m.data)));
  es.addEventListener("error", () => { conn.textContent = "reconnecting…"; });
}

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("ramboot-token", token);
  document.getElementById("auth").hidden = true;
  load().then((ok) => ok && stream());
});

load().then((ok) => ok && stream());
