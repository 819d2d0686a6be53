// The operator's console: a small static page over the REST API, no build step.
// Views (the URL's #fragment): the node table, one node, images, leases, servers, failures.
// The node table is kept current by the server-sent event stream; actions use the admin token.
"use strict";

const API = "/api/v1";
const $ = (sel) => document.querySelector(sel);
const conn = $("#conn");
let token = sessionStorage.getItem("ramboot-token") || "";
const status = new Map();  // mac -> /status row (every node seen, with its last boot)
const nodes = new Map();   // mac -> /nodes row (registered nodes, with their effective view)
let images = [];
let sortKey = "node", sortDir = 1;
let streaming = false;

// Which colour a stage's segment gets: the time from this event to the next one.
const SEG = {
  "dhcp-offer": "dhcp", "dhcp-ack": "dhcp", "proxy-offer": "dhcp", "loader": "loader", "script": "script",
  "kernel": "kernel", "initrd": "initrd", "rootfs": "download", "initramfs": "initramfs",
  "download-start": "download", "download-done": "verify", "verified": "root", "modules": "verify",
  "overlay": "verify", "switch-root": "root", "booted": "root", "failed": "failed",
};
const LEGEND = [
  ["dhcp", "DHCP (firmware asks for an address)"], ["loader", "boot program and script"],
  ["kernel", "kernel and initrd download"], ["initramfs", "initramfs: drivers, network, reports"],
  ["download", "root image download"], ["verify", "sha256 check, modules, node overlay"],
  ["root", "root mounted and running"], ["failed", "failed"],
];

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined && k !== false) e.append(k);
  return e;
}

// API times are ISO 8601 strings with a zone (older servers: unix seconds). Seconds since the epoch.
function secs(v) {
  if (v === null || v === undefined || v === "") return null;
  if (typeof v === "number") return v;
  const ms = Date.parse(v);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function ago(v) {
  const t = secs(v);
  if (t === null) return "";
  const d = Date.now() / 1000 - t, a = Math.abs(d);  // a lease's expiry is ahead
  const span = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min`
    : a < 86400 ? `${(a / 3600).toFixed(1)} h` : `${Math.round(a / 86400)} d`;
  return d >= -1 ? `${span} ago` : `in ${span}`;
}

function when(v) {  // a <time>: relative text, the exact local time on hover
  const t = secs(v);
  if (t === null) return el("span", { class: "sub" }, "—");
  const d = new Date(t * 1000);
  return el("time", { datetime: d.toISOString(), title: d.toLocaleString() }, ago(v));
}

function fmtBytes(n) {
  if (!n) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

// -- talking to the API ---------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  const used = token;
  if (used) headers.Authorization = `Bearer ${used}`;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, { method: opts.method || "GET", headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  if (r.status === 401) { askToken(used); throw new HttpError(401, "a token is needed"); }
  if (!r.ok) {
    let why = `HTTP ${r.status}`;
    try { why = (await r.json()).error || why; } catch (e) { /* not JSON */ }
    throw new HttpError(r.status, why);
  }
  return r.status === 204 ? null : r.json();
}

function askToken(used) {  // `used`: the token the refused request carried
  if (used !== token) return;  // another request already asked
  conn.textContent = used ? "that token was refused; enter the API token" : "a token is needed to read";
  token = "";
  sessionStorage.removeItem("ramboot-token");
  $("#auth").hidden = false;
}

function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}` : url;
}

// -- what a node boots: the effective view, or what the node row says --------------

function eff(mac) {
  const n = nodes.get(mac), s = status.get(mac) || {};
  const e = s.effective || (n && n.effective) || {};  // the live feed's rows carry it, newest
  const profiles = e.profiles || (n && n.profiles) || [];
  return {
    mac, hostname: (n && n.hostname) || s.hostname || "",
    state: n ? n.state || (n.discovered ? "discovered" : "registered") : "seen",
    image: e.image || (n && n.image) || s.image || "", imageFrom: e.image_from || (n && n.image ? "node" : ""),
    ip: e.ip || (n && n.ip) || "", ipFrom: e.ip_from || (n && n.ip ? "fixed" : ""), leaseExpires: e.lease_expires,
    profiles, labels: (n && n.labels) || {}, loader: e.loader || (n && n.loader) || "",
    kernelArgs: e.kernel_args !== undefined ? e.kernel_args : (n && n.kernel_args) || "",
    boot: s.last_boot || null, inventory: s.inventory || null,
    lastSeen: e.last_seen || (s.last_boot && s.last_boot.updated) || (n && n.updated) || null,
    lastBoot: e.last_boot || (s.last_boot && s.last_boot.started) || null,
  };
}

function keepNode(n) {  // a node the API just answered with: its effective view is the newest
  nodes.set(n.mac, n);
  const s = status.get(n.mac);
  if (s && n.effective) s.effective = n.effective;
}

function stageOf(x) { return x.boot ? x.boot.stage : ""; }
function running(x) { const st = stageOf(x); return st && st !== "booted" && st !== "failed"; }

function origin(from) {
  if (!from) return null;
  return el("span", { class: "sub from" }, from === "node" ? "set on the node" : from === "default" ? "the default"
    : from.startsWith("profile:") ? `from profile ${from.slice(8)}` : from === "lease" ? "leased" : from);
}

// -- the boot timeline bar ------------------------------------------------------------

function timeline(boot, showTotal = true) {
  if (!boot) return el("span", { class: "sub" }, "never booted");
  const ev = boot.events || [];
  const started = secs(boot.started), updated = secs(boot.updated);
  // A boot with no news for 5 minutes is not "going on": its bar ends at its last event.
  const stale = Date.now() / 1000 - updated > 300;
  const done = boot.stage === "booted" || boot.stage === "failed" || stale;
  const end = done ? updated : Math.max(updated, Date.now() / 1000);
  const total = Math.max(end - started, 0.001);
  const bar = el("div", { class: "bar", role: "img" });
  const parts = [];
  ev.forEach((e, i) => {
    const at = secs(e.at);
    const next = i + 1 < ev.length ? secs(ev[i + 1].at) : end;
    const s = Math.max(next - at, 0);
    parts.push(`${e.stage} +${(at - started).toFixed(1)}s`);
    const seg = el("span", { class: `seg ${SEG[e.stage] || "dhcp"}`, title: `${e.stage}: ${s.toFixed(2)} s` });
    seg.style.width = `${(100 * s) / total}%`;
    bar.append(seg);
  });
  bar.setAttribute("aria-label", `timeline: ${parts.join(", ")}`);
  if (!showTotal) return bar;
  const took = boot.duration != null ? `booted in ${boot.duration.toFixed(1)} s`
    : boot.stage === "failed" ? `failed after ${(end - started).toFixed(1)} s`
    : stale ? `stopped at ${boot.stage} after ${(end - started).toFixed(1)} s` : `${(end - started).toFixed(1)} s so far`;
  const speed = boot.download_mbps != null ? ` · root at ${boot.download_mbps.toFixed(0)} Mb/s` : "";
  return el("div", {}, bar, el("span", { class: "legend" }, took + speed));
}

function hardware(inv) {
  if (!inv) return el("span", { class: "sub" }, "no report yet");
  const r = inv.report;
  const cpu = r.cpu && r.cpu.count ? `${r.cpu.count} × ${r.cpu.model || "CPU"}` : "";
  const mem = r.memory_kib ? fmtBytes(r.memory_kib * 1024) + " RAM" : "";
  const nics = (r.nics || []).map((n) => `${n.name}${n.speed_mbps ? " " + n.speed_mbps + " Mb/s" : ""}`).join(", ");
  const disks = (r.disks || []).length ? `${r.disks.length} disk(s)` : "no disks";
  const dmi = r.dmi ? [r.dmi.vendor, r.dmi.product, r.dmi.serial].filter(Boolean).join(" ") : "";
  return el("div", {}, [cpu, mem].filter(Boolean).join(", "),
    el("span", { class: "sub" }, [nics, disks, dmi].filter(Boolean).join(" · ")));
}

// -- the node table ------------------------------------------------------------------

function filters() {
  return { q: $("#search").value.trim().toLowerCase(), state: $("#f-state").value, image: $("#f-image").value,
    profile: $("#f-profile").value, label: $("#f-label").value.trim() };
}

function matches(x, f) {
  if (f.q) {
    const hay = [x.mac, x.hostname, x.ip, x.image, ...x.profiles,
      ...Object.entries(x.labels).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
    if (!f.q.split(/\s+/).every((w) => hay.includes(w))) return false;
  }
  const st = stageOf(x);
  if (f.state === "booted" && st !== "booted") return false;
  if (f.state === "failed" && st !== "failed") return false;
  if (f.state === "booting" && !running(x)) return false;
  if (f.state === "never" && x.boot) return false;
  if (["registered", "discovered", "seen"].includes(f.state) && x.state !== f.state) return false;
  if (f.image && x.image !== f.image) return false;
  if (f.profile && !x.profiles.includes(f.profile)) return false;
  if (f.label) {
    const [k, v] = f.label.split("=", 2);
    if (!(k in x.labels) || (v !== undefined && x.labels[k] !== v)) return false;
  }
  return true;
}

function ipKey(ip) { return ip ? ip.split(".").map((p) => p.padStart(3, "0")).join(".") : "~"; }

const SORTS = {
  node: (x) => (x.hostname || "~") + " " + x.mac, ip: (x) => ipKey(x.ip), image: (x) => x.image || "~",
  profile: (x) => x.profiles.join(",") || "~", stage: (x) => stageOf(x) || "~",
  boot: (x) => -(secs(x.lastBoot) || 0), seen: (x) => -(secs(x.lastSeen) || 0),
  hw: (x) => (x.inventory ? x.inventory.report.memory_kib : 0),
};

function compare(a, b) {
  const ka = SORTS[sortKey](a), kb = SORTS[sortKey](b);
  return (ka < kb ? -1 : ka > kb ? 1 : a.mac < b.mac ? -1 : 1) * sortDir;
}

function row(x, prev) {
  const st = stageOf(x) || "—";
  const labels = Object.entries(x.labels).map(([k, v]) => el("span", { class: "tag" }, `${k}=${v}`));
  const tr = el("tr", { "data-mac": x.mac },
    el("td", { "data-label": "Node" },
      el("a", { href: `#/node/${x.mac}`, class: "host" }, x.hostname || x.mac),
      el("span", { class: "mac sub" }, x.mac),
      el("span", { class: "sub" }, x.state === "seen" ? "unregistered" : x.state === "discovered" ? "discovered" : ""),
      labels.length ? el("span", { class: "tags" }, ...labels) : null),
    el("td", { "data-label": "Address", class: "ip" }, x.ip || el("span", { class: "sub" }, "—"), origin(x.ipFrom)),
    el("td", { "data-label": "Image", class: "image" }, x.image || el("span", { class: "sub" }, "—"), origin(x.imageFrom)),
    el("td", { "data-label": "Profile" }, x.profiles.join(", ") || el("span", { class: "sub" }, "—")),
    el("td", { "data-label": "Stage" },
      el("span", { class: `stage${running(x) ? " running" : ""}`, "data-stage": st }, st),
      x.boot && x.boot.failure ? el("span", { class: "sub" }, x.boot.failure) : null,
      x.boot && x.boot.contested ? el("span", { class: "sub bad" }, "contested") : null),
    el("td", { "data-label": "Last boot" }, timeline(x.boot)),
    el("td", { "data-label": "Last seen" }, when(x.lastSeen)),
    el("td", { "data-label": "Hardware" }, hardware(x.inventory)));
  tr.dataset.sig = JSON.stringify([x.boot && x.boot.updated, x.ip, x.image, x.hostname]);
  if (prev && prev.dataset.sig !== tr.dataset.sig) tr.classList.add("changed");
  return tr;
}

function fillSelect(sel, values) {
  const cur = sel.value;
  const first = sel.options[0];
  sel.replaceChildren(first, ...[...values].sort().map((v) => el("option", { value: v }, v)));
  sel.value = values.has(cur) ? cur : "";
}

let pending = 0;
function renderNodes() {  // at most once a frame, however many events arrive
  if (pending) return;
  pending = requestAnimationFrame(() => { pending = 0; drawNodes(); });
}

function drawNodes() {
  const all = [...new Set([...status.keys(), ...nodes.keys()])].map(eff);
  fillSelect($("#f-image"), new Set(all.map((x) => x.image).filter(Boolean)));
  fillSelect($("#f-profile"), new Set(all.flatMap((x) => x.profiles)));
  const f = filters();
  const shown = all.filter((x) => matches(x, f)).sort(compare);
  const tbody = $("#nodes tbody");
  const old = new Map([...tbody.children].map((tr) => [tr.dataset.mac, tr]));
  tbody.replaceChildren(...shown.map((x) => row(x, old.get(x.mac))));
  $("#empty").hidden = all.length > 0;
  $("#count").textContent = all.length ? `${shown.length} of ${all.length} nodes` : "";
  for (const th of document.querySelectorAll("#nodes th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
  }
}

// -- one node ------------------------------------------------------------------------

function dl(pairs) {
  return el("dl", { class: "facts" }, ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function table(caption, head, rows, attrs = {}) {
  return el("table", attrs, el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, i) => el("td", { "data-label": head[i] }, c))))));
}

async function viewNode(sec, mac) {
  sec.replaceChildren(el("p", { class: "sub" }, "loading…"));
  let n = null, evs = [], invs = [];
  try { n = await api(`/nodes/${mac}`); } catch (e) { if (e.status !== 404) throw e; }
  try { evs = await api(`/nodes/${mac}/events?limit=200`); } catch (e) { if (e.status !== 404) throw e; }
  try { invs = await api(`/nodes/${mac}/inventory`); } catch (e) { if (e.status !== 404) throw e; }
  if (n) keepNode(n);
  const x = eff(mac);
  const boot = (n && n.last_boot) || x.boot;
  const e = (n && n.effective) || {};
  const inv = (n && n.inventory) || (invs[0] || null);
  const title = el("h2", {}, x.hostname || mac, x.hostname ? el("span", { class: "mac sub" }, mac) : null);
  const facts = dl([
    ["Registration", x.state === "seen" ? "not registered (only seen)" : x.state],
    ["Image", el("span", { id: "eff-image" }, x.image || "—", origin(x.imageFrom))],
    ["Address", el("span", { id: "eff-ip" }, x.ip || "—", origin(x.ipFrom),
      x.leaseExpires ? el("span", { class: "sub" }, "lease ends ", when(x.leaseExpires)) : null)],
    ["Loader", x.loader],
    ["Kernel arguments", x.kernelArgs ? el("code", {}, x.kernelArgs) : ""],
    ["Profiles", x.profiles.join(", ")],
    ["Overlays", n && n.overlays && n.overlays.length ? n.overlays.join(", ") : ""],
    ["Labels", Object.entries(x.labels).map(([k, v]) => `${k}=${v}`).join(", ")],
    ["UUID", n && n.uuid],
    ["BMC", e.bmc ? el("code", { id: "eff-bmc" }, e.bmc) : ""],
    ["SSH keys", n && n.ssh_keys && n.ssh_keys.length ? `${n.ssh_keys.length}` : ""],
    ["Last boot", when(e.last_boot || (boot && boot.started))],
    ["Last seen", when(x.lastSeen)],
  ]);
  const parts = [el("p", {}, el("a", { href: "#/" }, "← all nodes")), title, facts];
  if (n && x.state !== "seen") parts.push(actions(n, x));
  parts.push(el("h3", {}, "Last boot"), timeline(boot));
  if (boot && boot.events && boot.events.length) {
    const t0 = secs(boot.started);
    parts.push(table("The last boot, stage by stage", ["t (s)", "stage", "from", "detail"],
      boot.events.map((ev) => [(secs(ev.at) - t0).toFixed(1), ev.stage, ev.source, detail(ev.detail)]), { class: "tl" }));
  }
  parts.push(el("h3", {}, "Inventory"), inventoryView(inv));
  parts.push(el("h3", {}, "Events"), evs.length
    ? table(`The ${evs.length} newest events, newest first`, ["when", "stage", "from", "detail"],
      [...evs].reverse().map((ev) => [when(ev.at), ev.stage, ev.source, detail(ev.detail)]), { id: "events" })
    : el("p", { class: "sub" }, "no events"));
  sec.replaceChildren(...parts);
}

function detail(d) {
  const s = d && Object.keys(d).length ? JSON.stringify(d) : "";
  return el("code", { class: "detail" }, s.length > 200 ? s.slice(0, 200) + "…" : s);
}

function inventoryView(inv) {
  if (!inv) return el("p", { class: "sub" }, "no hardware report yet");
  const r = inv.report;
  return el("div", {},
    dl([["Reported", when(inv.at)], ["CPU", r.cpu && r.cpu.count ? `${r.cpu.count} × ${r.cpu.model}` : ""],
      ["Memory", fmtBytes((r.memory_kib || 0) * 1024)],
      ["System", r.dmi ? [r.dmi.vendor, r.dmi.product].filter(Boolean).join(" ") : ""],
      ["Serial", r.dmi && r.dmi.serial], ["SMBIOS UUID", r.dmi && r.dmi.uuid],
      ["BMC (read in band)", r.bmc && (r.bmc.ip || r.bmc.mac)
        ? el("span", { id: "inv-bmc" }, [r.bmc.ip || "?", r.bmc.mac ? `MAC ${r.bmc.mac}` : "",
          r.bmc.ip_source || ""].filter(Boolean).join(", ")) : ""]]),
    (r.nics || []).length ? table("Network interfaces", ["name", "MAC", "speed"],
      r.nics.map((n) => [n.name, n.mac || "", n.speed_mbps ? `${n.speed_mbps} Mb/s` : ""])) : null,
    (r.disks || []).length ? table("Disks", ["name", "size", "model"],
      r.disks.map((d) => [d.name, fmtBytes(d.size_bytes), d.model || ""])) : null);
}

function actions(n, x) {
  const msg = el("p", { id: "action-msg", role: "status", class: "sub" });
  const pick = el("select", { id: "set-image", "aria-label": "image" },
    el("option", { value: "" }, "(inherit: profile or default)"),
    ...images.map((i) => el("option", { value: i.name }, i.name)));
  pick.value = n.image || "";
  const setBtn = el("button", { type: "submit" }, "Set image");
  const form = el("form", { id: "set-image-form" }, el("label", { for: "set-image" }, "Boot image "), pick, setBtn);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "saving…";
    try {
      const body = { image: pick.value || null };
      const out = await api(`/nodes/${n.mac}`, { method: "PATCH", body });
      keepNode(out);
      await route();  // the page again, with what the server now says it boots
      $("#action-msg").textContent = `saved: the next boot uses ${eff(n.mac).image || "the default image"}`;
    } catch (e) { msg.textContent = `not saved: ${e.message}`; }
  });
  const del = el("button", { type: "button", id: "delete-node", class: "danger" }, "Delete node");
  del.addEventListener("click", async () => {
    if (!confirm(`Delete ${x.hostname || n.mac}? Its events and inventory stay.`)) return;
    try {
      await api(`/nodes/${n.mac}`, { method: "DELETE" });
      nodes.delete(n.mac);
      location.hash = "#/";
    } catch (e) { msg.textContent = `not deleted: ${e.message}`; }
  });
  return el("div", { class: "actions" }, el("h3", {}, "Actions"),
    el("p", { class: "sub" }, "These need the admin token; a read-only token is refused."), form, del, msg);
}

// -- images, leases, servers, failures ---------------------------------------------

async function viewImages(sec) {
  images = await api("/images");
  const use = new Map();
  for (const m of new Set([...status.keys(), ...nodes.keys()])) {
    const i = eff(m).image;
    if (i) use.set(i, (use.get(i) || 0) + 1);
  }
  sec.replaceChildren(el("h2", {}, "Images"), images.length ? table(`${images.length} images in the data directory`,
    ["name", "source", "kernel", "initramfs", "size", "built", "nodes"],
    images.map((i) => [el("a", { href: `#/?image=${encodeURIComponent(i.name)}` }, i.name), i.source, i.kernel_version,
      i.initramfs, fmtBytes(i.files.reduce((a, f) => a + f.size, 0)), when(i.created), `${use.get(i.name) || 0}`]),
    { id: "images" }) : el("p", { class: "sub" }, "no image built yet: ramboot image build NAME"));
}

async function viewLeases(sec) {
  const leases = await api("/leases");
  sec.replaceChildren(el("h2", {}, "Leases"), leases.length ? table(`${leases.length} DHCP leases`,
    ["address", "MAC", "host name", "expires", "active"],
    leases.map((l) => [l.ip, el("a", { href: `#/node/${l.mac}`, class: "mac" }, l.mac), l.hostname || "",
      when(l.expires), l.active ? "yes" : "expired"]), { id: "leases" }) : el("p", { class: "sub" }, "no leases"));
}

async function viewServers(sec) {
  const servers = await api("/servers");
  sec.replaceChildren(el("h2", {}, "Servers"), table(`${servers.length} servers on this database`,
    ["name", "address", "HTTP", "images held", "started", "last heartbeat", "state"],
    servers.map((s) => [s.name + (s.this ? " (this one)" : ""), s.address, s.http_base,
      Object.keys(s.images).join(", "), when(s.started), when(s.last_seen), s.alive ? "alive" : "silent"]),
    { id: "servers" }));
}

async function viewFailures(sec) {
  const rows = [...status.values()].filter((s) => s.last_boot && (s.last_boot.stage === "failed" || s.last_boot.contested))
    .sort((a, b) => secs(b.last_boot.updated) - secs(a.last_boot.updated));
  sec.replaceChildren(el("h2", {}, "Recent failures"), rows.length ? table(`${rows.length} nodes whose last boot failed`,
    ["node", "when", "reason", "last stage before"],
    rows.map((s) => {
      const evs = s.last_boot.events || [];
      const before = evs.filter((e) => e.stage !== "failed").pop();
      return [el("a", { href: `#/node/${s.mac}` }, s.hostname || s.mac), when(s.last_boot.updated),
        s.last_boot.failure || (s.last_boot.contested ? "contested: a second claim on the boot's credential" : ""),
        before ? before.stage : ""];
    }), { id: "failures" }) : el("p", { class: "sub" }, "no node's last boot failed"));
}

// -- routing -----------------------------------------------------------------------

const VIEWS = { node: viewNode, images: viewImages, leases: viewLeases, servers: viewServers, failures: viewFailures };

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const view = parts[0] && (parts[0] in VIEWS) ? parts[0] : "nodes";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.dataset.view !== view;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  document.title = `ramboot — ${view === "node" ? parts[1] : view}`;
  if (view === "nodes") {
    const q = new URLSearchParams(query || "");
    if (q.has("image")) { drawNodes(); $("#f-image").value = q.get("image"); }
    drawNodes();
    return;
  }
  const sec = $(`#view-${view}`);
  try {
    await VIEWS[view](sec, decodeURIComponent(parts[1] || ""));
  } catch (e) {
    if (e.status !== 401) sec.replaceChildren(el("p", { class: "bad" }, `could not load: ${e.message}`));
  }
}

// -- start -----------------------------------------------------------------------

async function load() {
  let st, ns;
  try {
    [st, ns] = await Promise.all([api("/status"), api("/nodes")]);
    images = await api("/images");
  } catch (e) {
    if (e.status !== 401) conn.textContent = `refused: ${e.message}`;  // 403: no token helps
    return false;
  }
  status.clear();
  nodes.clear();
  st.forEach((s) => status.set(s.mac, s));
  ns.forEach((n) => nodes.set(n.mac, n));
  await route();
  return true;
}

let refetch = 0;
function nodesSoon() {  // a node row changed: its effective view may have too (at most every 2 s)
  if (refetch) return;
  refetch = setTimeout(async () => {
    refetch = 0;
    try { (await api("/nodes")).forEach((n) => nodes.set(n.mac, n)); renderNodes(); } catch (e) { /* next time */ }
  }, 2000);
}

function stream() {
  if (streaming) return;
  streaming = true;
  const es = new EventSource(withToken(`${API}/events/stream`));
  es.addEventListener("open", () => { conn.textContent = "live"; load(); });
  es.addEventListener("node", (m) => {
    const s = JSON.parse(m.data);
    status.set(s.mac, s);
    if (!$("#view-nodes").hidden) renderNodes();
    if (!nodes.has(s.mac) && s.registered) nodesSoon();
  });
  es.addEventListener("error", () => { conn.textContent = "reconnecting…"; });
}

$("#auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value;
  sessionStorage.setItem("ramboot-token", token);
  $("#auth").hidden = true;
  load().then((ok) => ok && stream());
});
for (const id of ["#search", "#f-state", "#f-image", "#f-profile", "#f-label"]) $(id).addEventListener("input", drawNodes);
for (const th of document.querySelectorAll("#nodes th[data-sort]")) {
  th.tabIndex = 0;
  const go = () => {
    if (sortKey === th.dataset.sort) sortDir = -sortDir; else { sortKey = th.dataset.sort; sortDir = 1; }
    drawNodes();
  };
  th.addEventListener("click", go);
  th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
}
$("#legend ul").replaceChildren(...LEGEND.map(([cls, what]) => el("li", {}, el("span", { class: `seg ${cls}` }), what)));
window.addEventListener("hashchange", route);
load().then((ok) => ok && stream());
