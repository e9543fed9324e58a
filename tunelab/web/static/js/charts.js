// Charts drawn with Chart.js (vendored UMD build, window.Chart): the training curves of a job, the token
// histogram of a file, and a comparison's shares per candidate.

const COLORS = ["#2f6fde", "#d9622b", "#2a9d6f", "#8e5ad6", "#c23b6b", "#6b7280"];

function chart(canvas, config) {
  return new window.Chart(canvas, {
    ...config,
    options: { responsive: true, maintainAspectRatio: false, animation: false, ...config.options },
  });
}

// Lines over training steps; `series` = [[key, label], …]; update with setPoints(chart, rows).
export function stepChart(canvas, title, series, yTitle) {
  return chart(canvas, {
    type: "line",
    data: {
      datasets: series.map(([key, label], i) => ({
        key, label, data: [], borderColor: COLORS[i], backgroundColor: COLORS[i],
        pointRadius: 2, borderWidth: 2, spanGaps: true, showLine: true,
      })),
    },
    options: {
      parsing: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      plugins: { title: { display: true, text: title },
                 legend: { position: "bottom", labels: { filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0 } } },
      scales: { x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
                y: { title: { display: true, text: yTitle } } },
    },
  });
}

// rows: metrics in step order ({step, train_loss, …}); each dataset keeps the points whose value is present.
export function setPoints(instance, rows) {
  for (const dataset of instance.data.datasets) {
    if (dataset.mark) continue; // a marked point (markPoint) is not a metric
    dataset.data = rows.filter((r) => r[dataset.key] !== undefined && r[dataset.key] !== null)
      .map((r) => ({ x: r.step, y: r[dataset.key] }));
    dataset.hidden = dataset.data.length === 0;
  }
  instance.update();
}

// One marked point on a step chart (a star, in the legend as `label`), e.g. the recommended checkpoint; null removes it.
export function markPoint(instance, point, label) {
  let dataset = instance.data.datasets.find((d) => d.mark);
  if (!dataset) {
    dataset = { mark: true, label, data: [], pointStyle: "star", pointRadius: 10, pointBorderWidth: 2, showLine: false,
                borderColor: "#111827", backgroundColor: "#facc15" };
    instance.data.datasets.push(dataset);
  }
  dataset.label = label;
  dataset.data = point ? [point] : [];
  instance.update();
}

export function histogram(canvas, bins, title) {
  return chart(canvas, {
    type: "bar",
    data: {
      labels: bins.map((b) => (b.from === b.to ? `${b.from}` : `${b.from}–${b.to}`)),
      datasets: [{ label: "examples", data: bins.map((b) => b.count), backgroundColor: COLORS[0] }],
    },
    options: {
      plugins: { title: { display: true, text: title }, legend: { display: false } },
      scales: { x: { title: { display: true, text: "tokens per example" } },
                y: { title: { display: true, text: "examples" }, ticks: { precision: 0 }, beginAtZero: true } },
    },
  });
}

// Horizontal bars: one per candidate, values 0–1 shown as percentages.
export function shares(canvas, title, names, values) {
  return chart(canvas, {
    type: "bar",
    data: { labels: names, datasets: [{ label: title, data: values.map((v) => (v ?? 0) * 100),
                                        backgroundColor: names.map((_, i) => COLORS[i % COLORS.length]) }] },
    options: {
      indexAxis: "y",
      plugins: { title: { display: true, text: title }, legend: { display: false },
                 tooltip: { callbacks: { label: (item) => `${item.raw.toFixed(0)}%` } } },
      scales: { x: { min: 0, max: 100, ticks: { callback: (v) => `${v}%` } } },
    },
  });
}
