// Small SVG charts for the statistics page: a time series, horizontal bars, a funnel.
// No library: the console ships as plain files inside the package.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#2f6fed", "#1d8a4f", "#e08a00", "#c62f3b", "#7b4ae2", "#0f9aa8", "#8a6d3b", "#d94f9a"];

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const mag = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * mag >= value) return step * mag;
  return 10 * mag;
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  if (span > 2 * 86400) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

export function legend(items) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const { label, color } of items) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    span.append(swatch, label);
    box.append(span);
  }
  return box;
}

// lines: [{label, color, points: [[t, value], ...]}]
export function lineChart(lines, { width = 760, height = 240 } = {}) {
  const pad = { l: 48, r: 12, t: 10, b: 24 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const all = lines.flatMap((l) => l.points);
  if (!all.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data in this range"));
    return svg;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const vmax = niceMax(Math.max(...all.map((p) => p[1])));
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - (v / vmax) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    svg.append(el("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), stroke: "#e5e9f2" }));
    svg.append(el("text", { x: pad.l - 6, y: y(v) + 3, "text-anchor": "end" }, Math.round(v * 100) / 100));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    svg.append(el("text", { x: x(t), y: height - 6, "text-anchor": anchor }, timeLabel(t, t1 - t0)));
  }
  for (const line of lines) {
    const pts = [...line.points].sort((a, b) => a[0] - b[0]);
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(el("path", { d, fill: "none", stroke: line.color, "stroke-width": 2, "data-series": line.label }));
    for (const p of pts.length < 60 ? pts : []) {
      const dot = el("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: line.color });
      dot.append(el("title", {}, `${line.label}: ${p[1]} at ${new Date(p[0] * 1000).toLocaleString()}`));
      svg.append(dot);
    }
  }
  return svg;
}

// bars: [{label, value, color?}] drawn horizontally, largest first as given.
export function barChart(bars, { width = 760 } = {}) {
  const rowH = 22;
  const labelW = 150;
  const height = Math.max(rowH, bars.length * rowH) + 4;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const vmax = Math.max(1, ...bars.map((b) => b.value));
  bars.forEach((b, i) => {
    const y = i * rowH + 2;
    const w = ((width - labelW - 70) * b.value) / vmax;
    svg.append(el("text", { x: labelW - 8, y: y + 14, "text-anchor": "end" }, b.label));
    svg.append(el("rect", { x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 8, rx: 3, fill: b.color || COLORS[i % COLORS.length], "data-bar": b.label }));
    svg.append(el("text", { x: labelW + w + 6, y: y + 14 }, b.value.toLocaleString()));
  });
  return svg;
}

// steps: [{label, value}] in funnel order; each bar shows its share of the first.
export function funnelChart(steps, { width = 760 } = {}) {
  const first = steps.length ? steps[0].value : 0;
  return barChart(
    steps.map((s, i) => ({
      label: `${s.label}${first && i ? ` (${Math.round((100 * s.value) / first)}%)` : ""}`,
      value: s.value,
      color: COLORS[i % COLORS.length],
    })),
    { width },
  );
}
