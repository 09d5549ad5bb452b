// tunelab studio: small inline-SVG charts (line charts of metrics.jsonl, the token-length histogram).
"use strict";

TL.colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

TL.svg = function (tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
};

function niceTicks(lo, hi, count) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (lo === hi) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

// series: [{label, points: [[x, y], ...]}]; returns an <svg> with axes, ticks, one polyline per series, a legend.
TL.lineChart = function ({ title, series, width = 520, height = 240, xLabel = "step" }) {
  const pad = { l: 56, r: 22, t: 26, b: 34 };
  const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && isFinite(p[1]));
  const root = TL.svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, class: "chart", role: "img", "aria-label": title,
  });
  root.append(TL.svg("text", { x: pad.l, y: 16, class: "chart-title" }, title));
  if (!all.length) {
    root.append(TL.svg("text", { x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" }, "no points yet"));
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) [x0, x1] = [Math.max(0, x0 - 1), x1 + 1]; // steps are never negative
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const margin = (y1 - y0) * 0.06;
  [y0, y1] = [y0 - margin, y1 + margin];
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const axes = TL.svg("g", { class: "axes" });
  for (const t of niceTicks(y0, y1, 4)) {
    axes.append(TL.svg("line", { x1: pad.l, x2: width - pad.r, y1: sy(t), y2: sy(t), class: "grid" }));
    axes.append(TL.svg("text", { x: pad.l - 6, y: sy(t) + 4, "text-anchor": "end" }, TL.num(t)));
  }
  for (const t of niceTicks(x0, x1, 5)) {
    axes.append(TL.svg("text", { x: sx(t), y: height - pad.b + 16, "text-anchor": "middle" }, TL.num(t)));
  }
  axes.append(TL.svg("text", { x: width - pad.r, y: height - 4, "text-anchor": "end" }, xLabel));
  axes.append(TL.svg("line", { x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, class: "axis" }));
  axes.append(TL.svg("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, class: "axis" }));
  root.append(axes);
  series.forEach((s, i) => {
    const color = s.color || TL.colors[i % TL.colors.length];
    const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    root.append(TL.svg("polyline", { points: d, fill: "none", stroke: color, "stroke-width": 2, class: "series" }));
    if (pts.length <= 40) {
      for (const p of pts) root.append(TL.svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: color }));
    }
    const lx = pad.l + 8 + i * 150;
    root.append(TL.svg("rect", { x: lx + 140 > width ? pad.l : lx, y: pad.t - 2, width: 10, height: 3, fill: color }));
    root.append(TL.svg("text", { x: (lx + 140 > width ? pad.l : lx) + 14, y: pad.t + 2, class: "legend" }, s.label));
  });
  return root;
};

// Curves of one run from its metrics.jsonl records: the loss chart and one chart per evaluated metric.
TL.metricCharts = function (runs) {
  const keys = new Set();
  for (const run of runs) for (const r of run.records) for (const k of Object.keys(r)) keys.add(k);
  const charts = [];
  const series = (key) =>
    runs.map((run) => ({
      label: runs.length > 1 ? `${run.label}` : key,
      points: run.records.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]),
    }));
  if (runs.length === 1) {
    const losses = ["loss", "eval_loss"].filter((k) => keys.has(k));
    charts.push(TL.lineChart({ title: "loss", series: losses.flatMap((k) => series(k).map((s) => ({ ...s, label: k }))) }));
  } else {
    for (const k of ["loss", "eval_loss"]) if (keys.has(k)) charts.push(TL.lineChart({ title: k, series: series(k) }));
  }
  for (const key of [...keys].filter((k) => k.startsWith("eval_") && k !== "eval_loss").sort()) {
    charts.push(TL.lineChart({ title: key.slice(5), series: series(key) }));
  }
  if (keys.has("learning_rate") && runs.length === 1) {
    charts.push(TL.lineChart({ title: "learning rate", series: series("learning_rate") }));
  }
  return TL.h("div", { class: "charts" }, charts);
};

// {edges, series: {name: counts}, max_length} -> overlaid translucent bars with the configured limit marked.
TL.histogram = function ({ edges, series, max_length }, width = 560, height = 220) {
  const pad = { l: 44, r: 12, t: 26, b: 34 };
  const names = Object.keys(series);
  const top = Math.max(1, ...names.flatMap((n) => series[n]));
  const x0 = edges[0];
  const last = edges[edges.length - 1];
  const x1 = max_length <= last * 1.5 ? Math.max(last, max_length) : last; // a far-off limit is named, not drawn
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - (y / top) * (height - pad.t - pad.b);
  const root = TL.svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart", role: "img", "aria-label": "token lengths" });
  root.append(TL.svg("text", { x: pad.l, y: 16, class: "chart-title" }, "token lengths (rows per bin)"));
  names.forEach((name, i) => {
    const color = TL.colors[i % TL.colors.length];
    series[name].forEach((count, b) => {
      if (!count) return;
      const x = sx(edges[b]);
      const w = Math.max(1, sx(edges[b + 1]) - x - 1);
      root.append(TL.svg("rect", { x, y: sy(count), width: w, height: sy(0) - sy(count), fill: color, "fill-opacity": 0.5 }));
    });
    root.append(TL.svg("rect", { x: pad.l + 8 + i * 90, y: pad.t - 2, width: 10, height: 8, fill: color, "fill-opacity": 0.6 }));
    root.append(TL.svg("text", { x: pad.l + 22 + i * 90, y: pad.t + 6, class: "legend" }, name));
  });
  for (const t of niceTicks(x0, x1, 6)) root.append(TL.svg("text", { x: sx(t), y: height - pad.b + 16, "text-anchor": "middle" }, TL.num(t)));
  for (const t of niceTicks(0, top, 3)) root.append(TL.svg("text", { x: pad.l - 6, y: sy(t) + 4, "text-anchor": "end" }, TL.num(t)));
  if (max_length <= x1) {
    root.append(TL.svg("line", { x1: sx(max_length), x2: sx(max_length), y1: pad.t, y2: height - pad.b, class: "limit" }));
    root.append(TL.svg("text", { x: sx(max_length) - 4, y: pad.t + 20, "text-anchor": "end", class: "legend" }, `max_length ${max_length}`));
  } else {
    root.append(TL.svg("text", { x: width - pad.r, y: pad.t + 22, "text-anchor": "end", class: "legend" }, `max_length ${max_length} (far beyond)`));
  }
  root.append(TL.svg("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, class: "axis" }));
  root.append(TL.svg("text", { x: width - pad.r, y: height - 4, "text-anchor": "end" }, "tokens"));
  return root;
};
