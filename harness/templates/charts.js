// Line charts of the self-contained pages (harness.plot's plot.html and leaderboard/index.html), drawn by uPlot
// (harness/vendor/uplot, inlined before this file). Nothing is fetched: the pages work from disk.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

// The unit that keeps the numbers on an axis of seconds (0 to maxSeconds) short.
function timeUnit(maxSeconds) {
  if (maxSeconds >= 2 * 3600) return { name: "h", seconds: 3600 };
  if (maxSeconds >= 120) return { name: "min", seconds: 60 };
  return { name: "s", seconds: 1 };
}

function emptyNote(text) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  return p;
}

const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5];
const CHARTS = new Map();  // box -> [chart, its size function], resized with the window
window.addEventListener("resize", () => CHARTS.forEach(([chart, size]) => chart.setSize(size())));

// A chart filling the width of `box` (and following it when the window is resized).
//   lines: [{label, points: [[x, y], ...], color, dash: [4, 4], scale: "y" | "y2", dots: true (no line),
//            tags: a short text drawn beside each point}]
//   opts: {x, y, y2: axis labels; dates: x holds Unix seconds (shown as UTC dates); steps: x holds step numbers
//          (whole-number ticks); xZero, yZero: the axis starts at 0; height; empty: what to say with no data}
// Returns the uPlot instance, or null when no line has a point.
function lineChart(box, lines, opts) {
  if (CHARTS.has(box)) { CHARTS.get(box)[0].destroy(); CHARTS.delete(box); }
  const shown = lines.filter((l) => l.points.length);
  if (!shown.length) { box.replaceChildren(emptyNote(opts.empty || "no data")); return null; }
  box.replaceChildren();
  // uPlot wants one shared x array: join the lines' own x values (a line is undefined, and bridged, elsewhere).
  const data = uPlot.join(shown.map((l) => [l.points.map((p) => p[0]), l.points.map((p) => p[1])]));
  const series = [{ label: opts.x, value: opts.dates ? "{YYYY}-{MM}-{DD}" : undefined }];
  for (const l of shown) {
    series.push({
      label: l.label, stroke: l.color, width: l.dots ? 0 : 1.5, dash: l.dash,
      scale: l.scale || "y", spanGaps: true, paths: l.dots ? () => null : undefined,
      points: { show: !!l.dots || l.points.length <= 30, size: l.dots ? 9 : 5, fill: l.color },
    });
  }
  const axes = [{ label: opts.x, incrs: opts.steps ? STEP_INCRS : undefined }, { label: opts.y, scale: "y" }];
  if (shown.some((l) => l.scale === "y2")) axes.push({ label: opts.y2, scale: "y2", side: 1, grid: { show: false } });
  const size = () => ({ width: Math.max(320, box.clientWidth), height: opts.height || 320 });
  // Dates: a margin either side, so the first and last points and their tags stay inside the chart.
  const pad = (u, lo, hi) => [lo - 0.04 * (hi - lo || 86400), hi + 0.04 * (hi - lo || 86400)];
  const fromZero = (u, lo, hi) => [0, hi > 0 ? hi : 1];
  const x = opts.dates ? { time: true, range: pad } : { time: false, range: opts.xZero ? fromZero : undefined };
  const scales = { x, y: opts.yZero ? { range: (u, lo, hi) => [0, hi * 1.1] } : {} };
  const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
  const hooks = { draw: [(u) => drawTags(u, shown)] };
  const chart = new uPlot({ ...size(), series, axes, scales, tzDate, hooks }, data, box);
  CHARTS.set(box, [chart, size]);
  return chart;
}

// The lines' tags, beside their points, on the chart's canvas (text, never markup).
function drawTags(u, lines) {
  const px = uPlot.pxRatio;
  u.ctx.save();
  u.ctx.font = `${Math.round(11 * px)}px system-ui, sans-serif`;
  u.ctx.fillStyle = "#333";
  for (const l of lines.filter((line) => line.tags)) {
    l.points.forEach((p, k) => {
      const x = u.valToPos(p[0], "x", true), y = u.valToPos(p[1], l.scale || "y", true);
      u.ctx.fillText(String(l.tags[k]), x + 7 * px, y - 7 * px);
    });
  }
  u.ctx.restore();
}
