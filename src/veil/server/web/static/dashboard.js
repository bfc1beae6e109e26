// Veil dashboard: draw the ledger's chart and refresh live parts of a page in place.
// Pages work without this script; it only keeps them current. Requests carry the
// session cookie (same origin); the token itself is never readable here (HttpOnly).
"use strict";
(function () {
  const charts = new Map();

  function drawCharts(root) {
    if (typeof Chart === "undefined") return;
    for (const canvas of root.querySelectorAll("canvas[data-series]")) {
      const source = document.getElementById(canvas.dataset.series);
      if (!source) continue;
      const series = JSON.parse(source.textContent);
      const old = charts.get(canvas.id);
      if (old) old.destroy();
      charts.set(canvas.id, new Chart(canvas, {
        type: "line",
        data: {
          datasets: series.map((line) => ({
            label: line.label,
            data: line.points,
            stepped: "after",
            // A dot per release; none on the line's start at 0 and its end at "now".
            pointRadius: (c) => (c.dataIndex === 0 || c.dataIndex === line.points.length - 1 ? 0 : 3),
          })),
        },
        options: {
          animation: false,
          maintainAspectRatio: false,
          scales: {
            x: {
              type: "linear",
              ticks: { callback: (value) => new Date(value).toLocaleString(), maxTicksLimit: 6 },
            },
            y: { beginAtZero: true, title: { display: true, text: "epsilon spent" } },
          },
          plugins: {
            tooltip: {
              callbacks: {
                title: (items) => new Date(items[0].parsed.x).toLocaleString(),
              },
            },
          },
        },
      }));
    }
  }

  function busy(live) {
    // Do not replace a form the user is typing in.
    return live.contains(document.activeElement) && document.activeElement !== document.body;
  }

  function schedule(live) {
    const every = Number(live.dataset.refresh);
    if (!every) return;
    setTimeout(async () => {
      if (!document.body.contains(live)) return;
      if (document.hidden || busy(live)) { schedule(live); return; }
      try {
        const answer = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
        if (answer.redirected || answer.status === 401) { location.reload(); return; }
        if (answer.ok) {
          const page = new DOMParser().parseFromString(await answer.text(), "text/html");
          const next = page.getElementById(live.id);
          if (next) {
            live.replaceWith(next);
            drawCharts(next);
            schedule(next);
            return;
          }
        }
      } catch (err) {
        // The node may be restarting: try again at the next tick.
      }
      schedule(live);
    }, every);
  }

  drawCharts(document);
  for (const live of document.querySelectorAll("[data-refresh]")) schedule(live);
})();
