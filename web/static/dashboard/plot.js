// A small SVG line chart: a few series of (x, y) points, redrawn on every change.
// No dependencies: the dashboard ships as static files, with no build step and no CDN.
"use strict";

class LineChart {
  // svg: an <svg> element; series: [{name, color}].
  constructor(svg, series) {
    this.svg = svg;
    this.series = series.map((s) => ({ ...s, points: [] }));
    this.width = 360;
    this.height = 180;
    this.pad = { left: 44, right: 8, top: 8, bottom: 22 };
    svg.setAttribute("viewBox", `0 0 ${this.width} ${this.height}`);
    this.render();
  }

  reset() {
    for (const s of this.series) s.points = [];
    this.render();
  }

  // Add (or replace, for the same x) one point; non-finite values are ignored.
  add(name, x, y) {
    const s = this.series.find((t) => t.name === name);
    if (!s || !Number.isFinite(x) || !Number.isFinite(y)) return;
    const at = s.points.findIndex((p) => p[0] === x);
    if (at >= 0) s.points[at] = [x, y];
    else s.points.push([x, y]);
    s.points.sort((a, b) => a[0] - b[0]);
    this.render();
  }

  count() {
    return this.series.reduce((n, s) => n + s.points.length, 0);
  }

  render() {
    const ns = "http://www.w3.org/2000/svg";
    const { width, height, pad } = this;
    const all = this.series.flatMap((s) => s.points);
    this.svg.replaceChildren();
    this.svg.dataset.points = String(all.length);
    const el = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      this.svg.appendChild(node);
      return node;
    };
    el("rect", { x: pad.left, y: pad.top, width: width - pad.left - pad.right,
                 height: height - pad.top - pad.bottom, class: "frame" });
    if (all.length === 0) {
      el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no data yet");
      return;
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
    const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
    const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2));
    el("text", { x: pad.left - 4, y: pad.top + 10, "text-anchor": "end", class: "tick" }, fmt(y1));
    el("text", { x: pad.left - 4, y: height - pad.bottom, "text-anchor": "end", class: "tick" }, fmt(y0));
    el("text", { x: pad.left, y: height - 6, class: "tick" }, fmt(x0));
    el("text", { x: width - pad.right, y: height - 6, "text-anchor": "end", class: "tick" }, fmt(x1));
    this.series.forEach((s, i) => {
      if (s.points.length === 0) return;
      const d = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      el("polyline", { points: d, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.name });
      for (const p of s.points.length <= 60 ? s.points : []) {
        el("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, fill: s.color });
      }
      const fromRight = this.series.length - 1 - i;  // legends right-aligned, clear of the y ticks
      el("text", { x: width - pad.right - 6 - fromRight * 70, y: pad.top + 14, "text-anchor": "end",
                   fill: s.color, class: "legend" }, s.name);
    });
  }
}

window.LineChart = LineChart;
