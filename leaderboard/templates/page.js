// Behaviour of leaderboard/index.html (inlined by leaderboard/page.py after uPlot and charts.js): sortable tables,
// record time against date, and two entries compared (loss curves overlaid, per-task CORE of B against A), all
// drawn from the JSON in <script id="board-data">. Text from entries is set as text (textContent), never as HTML.
"use strict";

const DATA = JSON.parse(document.getElementById("board-data").textContent);
const A_COLOR = "#1f77b4", B_COLOR = "#ff7f0e";

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

// ---- record time against date: every dated point on one line, nanochat's and ours marked apart
function drawHistory() {
  const points = DATA.history.slice().sort((a, b) => a.date - b.date);
  const kind = (k) => points.filter((p) => p.kind === k);
  const dots = (k, label, color) => ({ label, color, dots: true, points: kind(k).map((p) => [p.date, p.time_h]),
    tags: kind(k).map((p) => p.label) });
  lineChart(document.getElementById("history"), [
    { label: "record time", color: "#bbb", points: points.map((p) => [p.date, p.time_h]) },
    dots("reference", "reported by nanochat", "#888"),
    dots("record", "set here", "#d62728"),
  ], { x: "date", y: "training time (h on 8xH100)", dates: true, yZero: true, empty: "no dated records" });
}

// ---- two entries compared
const byId = (id) => DATA.entries.find((e) => e.id === id);
const fmt = (x, digits) => (x === null || x === undefined ? "-" : x.toFixed(digits));

function drawCurves(a, b, against) {
  const runs = [[a, "A", A_COLOR, undefined], [b, "B", B_COLOR, [6, 4]]];
  const times = runs.flatMap(([e]) => e.curves.flatMap((c) => c.points.map((p) => p[2]))).filter((t) => t !== null);
  const unit = timeUnit(Math.max(0, ...times));
  const lines = [];
  for (const [entry, side, color, dash] of runs) {
    for (const c of entry.curves) {
      const usable = against === "step" ? c.points : c.points.filter((p) => p[2] !== null);
      const xy = (p) => [against === "step" ? p[0] : p[2] / unit.seconds, p[1]];
      lines.push({ label: `${side} seed ${c.seed}`, color, dash, points: usable.map(xy) });
    }
  }
  lineChart(document.getElementById("curves"), lines, {
    x: against === "step" ? "step" : `training time (${unit.name})`, steps: against === "step", xZero: true,
    y: "training loss",
    empty: against === "step" ? "no train_loss events in these logs" : "no step times in these logs",
  });
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function diffBar(td, diff, scale) {
  const box = document.createElement("div");
  box.className = "diff";
  const axis = document.createElement("div");
  axis.className = "axis";
  box.appendChild(axis);
  if (diff !== null && scale > 0) {
    const bar = document.createElement("div");
    bar.className = diff >= 0 ? "better" : "worse";
    bar.style.width = `${(50 * Math.abs(diff)) / scale}%`;
    bar.title = `B - A = ${diff >= 0 ? "+" : ""}${diff.toFixed(4)}`;
    box.appendChild(bar);
  }
  td.appendChild(box);
}

function drawTasks(a, b) {
  const box = document.getElementById("tasks");
  const labels = Array.from(new Set([...Object.keys(a.tasks), ...Object.keys(b.tasks)])).sort();
  if (!labels.length) { box.replaceChildren(emptyNote("no per-task CORE in these records")); return; }
  const value = (e, label) => (label in e.tasks ? e.tasks[label] : null);
  const diffs = labels.map((l) => (value(a, l) === null || value(b, l) === null ? null : value(b, l) - value(a, l)));
  const scale = Math.max(0, ...diffs.filter((d) => d !== null).map(Math.abs));
  const table = document.createElement("table");
  table.className = "tasks";
  const head = table.createTHead().insertRow();
  for (const title of ["task", `A: ${a.label}`, `B: ${b.label}`, "B - A", "B against A (green: B higher)"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const body = table.createTBody();
  labels.forEach((label, i) => {
    const row = body.insertRow();
    row.className = "task";
    cell(row, label);
    cell(row, fmt(value(a, label), 4), "num");
    cell(row, fmt(value(b, label), 4), "num");
    cell(row, diffs[i] === null ? "-" : `${diffs[i] >= 0 ? "+" : ""}${diffs[i].toFixed(4)}`, "num");
    diffBar(cell(row, "", "bar"), diffs[i], scale);
  });
  const total = table.createTFoot().insertRow();
  const coreDiff = a.core === null || b.core === null ? null : b.core - a.core;
  cell(total, `CORE (mean over runs; target ${DATA.target})`);
  cell(total, fmt(a.core, 4), "num");
  cell(total, fmt(b.core, 4), "num");
  cell(total, coreDiff === null ? "-" : `${coreDiff >= 0 ? "+" : ""}${coreDiff.toFixed(4)}`, "num");
  cell(total, "");
  box.replaceChildren(table);
}

function main() {
  document.querySelectorAll("table.board").forEach(makeSortable);
  drawHistory();
  const selectA = document.getElementById("entry-a"), selectB = document.getElementById("entry-b");
  const against = document.getElementById("curve-x");
  if (!DATA.entries.length) {
    document.getElementById("curves").replaceChildren(emptyNote("no entries yet"));
    document.getElementById("tasks").replaceChildren(emptyNote("no entries yet"));
    return;
  }
  for (const select of [selectA, selectB]) {
    for (const e of DATA.entries) select.appendChild(new Option(e.label, e.id));
  }
  selectA.value = DATA.defaults.a;
  selectB.value = DATA.defaults.b;
  const show = () => {
    const a = byId(selectA.value), b = byId(selectB.value);
    drawCurves(a, b, against.value);
    drawTasks(a, b);
  };
  for (const control of [selectA, selectB, against]) control.addEventListener("change", show);
  show();
}

main();
