// The dashboard's charts and tables: line charts drawn by uPlot (web/static/vendor/uplot/, vendored:
// no build step, no CDN) with a legend, integer x ticks and the values under the cursor; the
// confusion matrix as a heat-map table; the per-class precision/recall table.
"use strict";

// Integer steps only: epoch and step axes never show 1.5.
const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000, 1e6];
const PALETTE = ["#2458c6", "#d9822b", "#1f7a3a", "#b3261e", "#7a3fb0", "#008b8b"];
const fmtValue = (v) => (v == null || !Number.isFinite(v) ? "--" : String(+v.toPrecision(4)));

class LineChart {
  // el: an empty element; series: [{name, label?, color?}] (add() names a series, the legend
  // shows its label); x: the x axis name ("epoch", "step").
  // The element's data-points counts the values shown and data-x-ticks lists the x tick labels
  // drawn last (both for the tests; the canvas itself cannot be read).
  constructor(el, series, { x = "epoch", width = 420, height = 220 } = {}) {
    this.el = el;
    this.x = x;
    this.width = width;
    this.height = height;
    this.pending = false;
    this.setSeries(series);
  }

  // Replace the series (and their data): a new plot.
  setSeries(series) {
    this.series = series.map((s, i) => ({ name: s.name, label: s.label || s.name, color: s.color || PALETTE[i % PALETTE.length],
                                          values: new Map() }));
    if (this.plot) this.plot.destroy();
    const el = this.el;
    const opts = {
      width: this.width,
      height: this.height,
      scales: { x: { time: false, range: (u, min, max) => (min == null ? [0, 1] : [min - 0.5, max + 0.5]) } },
      series: [
        { label: this.x, value: (u, v) => (v == null ? "--" : String(v)) },
        ...this.series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: true, points: { size: 5 },
                                      value: (u, v) => fmtValue(v) })),
      ],
      axes: [
        { incrs: INT_INCRS,
          values: (u, splits) => {
            const labels = splits.map((v) => (v == null ? null : String(Math.round(v))));
            el.dataset.xTicks = labels.filter((l) => l !== null).join(",");
            return labels;
          } },
        { size: 56, values: (u, splits) => splits.map((v) => (v == null ? null : fmtValue(v))) },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    el.replaceChildren();
    this.plot = new uPlot(opts, this.data(), el);
    el.dataset.points = "0";
  }

  reset() {
    for (const s of this.series) s.values.clear();
    this.schedule();
  }

  // Set one value (the last one for an x wins); non-finite values are ignored.
  add(name, x, y) {
    const s = this.series.find((t) => t.name === name);
    if (!s || !Number.isFinite(x) || !Number.isFinite(y)) return;
    s.values.set(x, y);
    this.schedule();
  }

  count() {
    return this.series.reduce((n, s) => n + s.values.size, 0);
  }

  // uPlot's columns: the sorted x values, then each series' value at each x (null: none).
  data() {
    const xs = [...new Set(this.series.flatMap((s) => [...s.values.keys()]))].sort((a, b) => a - b);
    return [xs, ...this.series.map((s) => xs.map((x) => (s.values.has(x) ? s.values.get(x) : null)))];
  }

  // Redraw once per frame at most: a replayed log adds thousands of points at once.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData(this.data());
      this.el.dataset.points = String(this.count());
    });
  }
}

// The confusion matrix ([true][predicted] counts) as a table: true classes down, predicted
// across, each cell shaded by its share of its row (the diagonal reads as recall).
function renderConfusion(table, confusion, classNames) {
  table.replaceChildren();
  if (!Array.isArray(confusion) || !confusion.length) return;
  const names = classNames && classNames.length === confusion.length ? classNames : confusion.map((_, i) => String(i));
  const head = table.createTHead().insertRow();
  const corner = document.createElement("th");
  corner.className = "corner";
  corner.textContent = "true \\ predicted";
  head.appendChild(corner);
  for (const name of names) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.appendChild(th);
  }
  const body = table.createTBody();
  confusion.forEach((row, t) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = names[t];
    tr.appendChild(th);
    const total = row.reduce((a, b) => a + b, 0);
    row.forEach((n, p) => {
      const td = tr.insertCell();
      const share = total ? n / total : 0;
      td.textContent = String(n);
      td.dataset.count = String(n);
      td.className = p === t ? "cm diag" : "cm";
      td.style.background = `rgba(36, 88, 198, ${(share * 0.9).toFixed(3)})`;
      if (share > 0.5) td.style.color = "#fff";
      td.title = `true ${names[t]}, predicted ${names[p]}: ${n} of ${total}`;
    });
  });
}

// Per class precision, recall, F1 and support, in the order of classNames.
function renderPerClass(table, perClass, classNames) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!perClass) return;
  const names = classNames && classNames.length ? classNames : Object.keys(perClass);
  for (const name of names) {
    const m = perClass[name];
    if (!m) continue;
    const tr = body.insertRow();
    tr.dataset.class = name;
    tr.insertCell().textContent = name;
    for (const key of ["precision", "recall", "f1"]) tr.insertCell().textContent = Number.isFinite(m[key]) ? m[key].toFixed(3) : "";
    tr.insertCell().textContent = String(m.support ?? "");
  }
}

// A stored log's epoch_end metrics by epoch: Map epoch -> metrics.
function epochMetrics(events) {
  const out = new Map();
  for (const e of events) {
    if (e.stage !== "epoch_end" || !e.metrics) continue;
    const epoch = e.metrics.epoch ?? e.epoch;
    if (Number.isFinite(epoch)) out.set(epoch, e.metrics);
  }
  return out;
}

window.LineChart = LineChart;
window.PALETTE = PALETTE;
window.renderConfusion = renderConfusion;
window.renderPerClass = renderPerClass;
window.epochMetrics = epochMetrics;
