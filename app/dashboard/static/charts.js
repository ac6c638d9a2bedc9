// Inline SVG charts drawn here (no chart library): stacked bars over time, one line per series.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// points: [{label, title, values: {series: n}}]; series: [{key, color, name}]
export function stackedBars(points, series, { height = 160, ariaLabel = "chart" } = {}) {
  const width = 600, left = 40, bottom = 18, top = 6;
  const max = niceMax(Math.max(0, ...points.map((p) => series.reduce((sum, s) => sum + (p.values[s.key] || 0), 0))));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": ariaLabel, class: "chart" });
  const plotHeight = height - bottom - top;
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotHeight * (1 - fraction);
    root.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis" }, String(max * fraction)));
  }
  const slot = (width - left) / Math.max(points.length, 1);
  points.forEach((point, index) => {
    let y = top + plotHeight;
    const group = svg("g", {});
    group.append(svg("title", {}, point.title));
    for (const s of series) {
      const value = point.values[s.key] || 0;
      if (!value) continue;
      const h = (value / max) * plotHeight;
      y -= h;
      group.append(svg("rect", { x: left + index * slot + 0.5, y, width: Math.max(slot - 1, 1), height: h, fill: s.color,
                                 "data-series": s.key, "data-value": value }));
    }
    root.append(group);
    if (point.label) root.append(svg("text", { x: left + index * slot, y: height - 4, class: "axis" }, point.label));
  });
  return root;
}

// lines: [{name, color, values: [n per point]}], labels: [string per point]
export function lineChart(labels, lines, { height = 160, width = 600, ariaLabel = "chart" } = {}) {
  const left = 40, bottom = 18, top = 6;
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.values)));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": ariaLabel, class: "chart" });
  const plotHeight = height - bottom - top;
  const x = (i) => left + (labels.length <= 1 ? 0 : (i * (width - left - 4)) / (labels.length - 1));
  const y = (v) => top + plotHeight * (1 - v / max);
  for (const fraction of [0, 0.5, 1]) {
    root.append(svg("line", { x1: left, x2: width, y1: y(max * fraction), y2: y(max * fraction), class: "grid" }));
    root.append(svg("text", { x: left - 4, y: y(max * fraction) + 4, "text-anchor": "end", class: "axis" },
                    String(max * fraction)));
  }
  labels.forEach((label, i) => {
    const anchor = i === labels.length - 1 ? "end" : "start";
    if (label) root.append(svg("text", { x: x(i), y: height - 4, class: "axis", "text-anchor": anchor }, label));
  });
  for (const line of lines) {
    const path = line.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const node = svg("path", { d: path, stroke: line.color, fill: "none", "stroke-width": 2, "data-series": line.name });
    node.append(svg("title", {}, line.name));
    root.append(node);
  }
  return root;
}
