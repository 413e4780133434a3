// Behaviour of leaderboard/index.html (inlined by leaderboard/page.py): sortable tables and SVG charts drawn
// from the JSON in <script id="board-data">. No libraries and no network: the page works from disk.
"use strict";

const DATA = JSON.parse(document.getElementById("board-data").textContent);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- sortable tables: numbers sort as numbers ("1.650 ± 0.003" by 1.650), "-" always last
function sortKey(text) {
  const t = text.trim();
  if (t === "-" || t === "") return null;
  if (/^\d{4}(-\d\d-\d\d)?$/.test(t)) return t;  // a date (or a bare year) sorts as text: "2019" < "2026-01-29"
  return /^-?\d+(\.\d+)?( |$|\()/.test(t) || /^-?\d+(\.\d+)?$/.test(t) ? parseFloat(t) : t.toLowerCase();
}

function makeSortable(table) {
  const headers = Array.from(table.querySelectorAll("thead th"));
  headers.forEach((th, col) => {
    th.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.querySelector("tbody");
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const ka = sortKey(a.cells[col].textContent), kb = sortKey(b.cells[col].textContent);
        if (ka === null || kb === null) return (ka === null) - (kb === null);
        const order = typeof ka === typeof kb ? (ka < kb ? -1 : ka > kb ? 1 : 0) : (typeof ka === "number" ? -1 : 1);
        return ascending ? order : -order;
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

// ---- axes helper: a linear scale from [lo, hi] to [a, b]
function scale(lo, hi, a, b) {
  const span = hi - lo || 1;
  return (x) => a + ((x - lo) / span) * (b - a);
}

function axes(svg, x0, y0, x1, y1, yLo, yHi, yLabel) {
  svg.appendChild(el("line", { x1: x0, y1: y1, x2: x1, y2: y1, stroke: "#999" }));
  svg.appendChild(el("line", { x1: x0, y1: y0, x2: x0, y2: y1, stroke: "#999" }));
  const y = scale(yLo, yHi, y1, y0);
  for (let i = 0; i <= 4; i++) {
    const v = yLo + ((yHi - yLo) * i) / 4;
    svg.appendChild(el("text", { x: x0 - 6, y: y(v) + 4, "text-anchor": "end" }, v.toPrecision(3)));
  }
  svg.appendChild(el("text", { x: x0, y: y0 - 8 }, yLabel));
  return y;
}

function drawHistory() {
  const box = document.getElementById("history");
  const points = DATA.history.map((p) => ({ ...p, t: Date.parse(p.date) })).sort((a, b) => a.t - b.t);
  if (!points.length) { box.innerHTML = '<p class="empty">no dated records</p>'; return; }
  const W = 760, H = 300, svg = el("svg", { width: W, height: H, role: "img", "aria-label": "record time by date" });
  const tLo = points[0].t, tHi = points[points.length - 1].t;
  const hs = points.map((p) => p.time_h);
  const yLo = 0, yHi = Math.max(...hs) * 1.1;
  const y = axes(svg, 60, 30, W - 20, H - 40, yLo, yHi, "hours on 8xH100");
  const x = scale(tLo - 86400e3, tHi + 86400e3, 60, W - 100);  // room on the right for the last label
  let path = "";
  points.forEach((p, i) => { path += `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.time_h).toFixed(1)}`; });
  svg.appendChild(el("path", { d: path, fill: "none", stroke: "#bbb" }));
  for (const p of points) {
    const c = el("circle", { cx: x(p.t), cy: y(p.time_h), r: 5, fill: p.kind === "reference" ? "#999" : "#d62728",
      class: `point ${p.kind}` });
    c.appendChild(el("title", {}, `${p.label}: ${p.time_h.toFixed(3)} h (${p.date})`));
    svg.appendChild(c);
    svg.appendChild(el("text", { x: x(p.t) + 6, y: y(p.time_h) - 6 }, p.date));
  }
  svg.appendChild(el("circle", { cx: W - 250, cy: 18, r: 5, fill: "#999" }));
  svg.appendChild(el("text", { x: W - 242, y: 22 }, "reported by nanochat"));
  svg.appendChild(el("circle", { cx: W - 80, cy: 18, r: 5, fill: "#d62728" }));
  svg.appendChild(el("text", { x: W - 72, y: 22 }, "set here"));
  box.replaceChildren(svg);
}

function drawTasks(entry) {
  const box = document.getElementById("tasks");
  if (!entry || !entry.tasks.length) { box.innerHTML = '<p class="empty">no per-task CORE in these records</p>'; return; }
  const row = 18, W = 760, H = 30 + row * entry.tasks.length;
  const svg = el("svg", { width: W, height: H, role: "img", "aria-label": "CORE per task" });
  const vals = entry.tasks.map((t) => t.mean);
  const lo = Math.min(0, ...vals), hi = Math.max(0.01, ...vals);
  const x = scale(lo, hi, 260, W - 60);
  svg.appendChild(el("line", { x1: x(0), y1: 10, x2: x(0), y2: H - 10, stroke: "#999" }));
  entry.tasks.forEach((t, i) => {
    const top = 15 + i * row;
    svg.appendChild(el("text", { x: 250, y: top + 12, "text-anchor": "end" }, t.label));
    const bar = el("rect", { x: Math.min(x(0), x(t.mean)), y: top + 2, width: Math.abs(x(t.mean) - x(0)),
      height: row - 5, fill: "#1f77b4", class: "task-bar" });
    bar.appendChild(el("title", {}, `${t.label}: ${t.mean.toFixed(4)}${t.sd === null ? "" : " ± " + t.sd.toFixed(4)}`));
    svg.appendChild(bar);
    svg.appendChild(el("text", { x: Math.max(x(0), x(t.mean)) + 4, y: top + 12 }, t.mean.toFixed(3)));
  });
  box.replaceChildren(svg);
}

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function drawCurves(entry) {
  const box = document.getElementById("curves");
  const curves = entry ? entry.curves.filter((c) => c.points.length) : [];
  if (!curves.length) { box.innerHTML = '<p class="empty">no train_loss events in these logs</p>'; return; }
  const W = 760, H = 300, svg = el("svg", { width: W, height: H, role: "img", "aria-label": "training loss" });
  const all = curves.flatMap((c) => c.points);
  const steps = all.map((p) => p[0]), losses = all.map((p) => p[1]);
  const y = axes(svg, 60, 30, W - 20, H - 40, Math.min(...losses), Math.max(...losses), "loss");
  const x = scale(Math.min(...steps), Math.max(...steps), 60, W - 20);
  svg.appendChild(el("text", { x: W - 20, y: H - 10, "text-anchor": "end" }, `step (max ${Math.max(...steps)})`));
  curves.forEach((c, i) => {
    const d = c.points.map((p, k) => `${k ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    const line = el("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], class: "loss-curve" });
    line.appendChild(el("title", {}, `seed ${c.seed}`));
    svg.appendChild(line);
  });
  box.replaceChildren(svg);
}

function main() {
  document.querySelectorAll("table.board").forEach(makeSortable);
  drawHistory();
  const select = document.getElementById("entry-select");
  for (const e of DATA.entries) select.appendChild(new Option(e.label, e.id));
  const show = () => {
    const entry = DATA.entries.find((e) => e.id === select.value);
    drawTasks(entry);
    drawCurves(entry);
  };
  select.addEventListener("change", show);
  show();
}

main();
