// The run page and the run report: loss charts drawn as SVG from the page's loss history,
// and on the run page live progress pushed by server-sent events (polling the run's JSON
// where EventSource is missing or its stream does not get through), and cancel in place.
// Every word shown comes from the page (#run-text, translated there).
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const readJSON = (id) => { const el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; };
  const TEXT = readJSON("run-text") || { status: {}, stages: {}, terms: {} };
  const ACTIVE = ["queued", "running"];
  const SVG = "http://www.w3.org/2000/svg";
  const fill = (template, values) => String(template || "").replace(/\{(\w+)\}/g, (m, k) => (k in values ? values[k] : m));
  const lang = document.documentElement.lang || undefined;
  const short = new Intl.NumberFormat(lang, { maximumSignificantDigits: 4 });
  const tiny = new Intl.NumberFormat(lang, { notation: "scientific", maximumFractionDigits: 1 });
  // an axis label fits its margin: 4 digits, or 1.2E-5 for the small values of the weighted terms
  const tick = (v) => (v !== 0 && Math.abs(v) < 0.001 ? tiny.format(v) : short.format(v));

  // Seconds as h:mm:ss, as the page's server-side rendering writes them.
  const clock = (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    const two = (n) => String(n).padStart(2, "0");
    return Math.floor(s / 3600) + ":" + two(Math.floor((s % 3600) / 60)) + ":" + two(s % 60);
  };

  // ------------------------------------------------------------------- loss charts
  // One small chart per loss term: the terms' scales differ by orders of magnitude.
  const MAX_POINTS = 2000;  // a page left open for hours thins its points as the worker does
  // the charts are drawn at least 260 px wide (run.css): the axis labels' 15 units are
  // 12 px or more on the screen
  const W = 320, H = 160, PAD = { left: 66, right: 10, top: 14, bottom: 26 };

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    Object.entries(attrs || {}).forEach(([k, v]) => el.setAttribute(k, v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  class LossCharts {
    constructor(box, empty) { this.box = box; this.empty = empty; this.points = []; }

    add(points) {
      points.forEach((p) => {
        // a resumed run repeats the steps after its last saved state: the newer points win
        while (this.points.length && this.points[this.points.length - 1].step >= p.step) this.points.pop();
        this.points.push(p);
      });
      if (this.points.length > MAX_POINTS) {
        const last = this.points[this.points.length - 1];
        this.points = this.points.slice(0, -1).filter((_, i) => i % 2 === 0).concat([last]);
      }
      if (points.length) this.draw();
    }

    terms() {
      const seen = new Set();
      this.points.forEach((p) => Object.keys(p.terms || {}).forEach((t) => seen.add(t)));
      // the total first, then the terms in a stable order
      return Array.from(seen).sort((a, b) => (a === "total" ? -1 : b === "total" ? 1 : a.localeCompare(b)));
    }

    draw() {
      if (this.empty) this.empty.hidden = this.points.length > 0;
      this.box.textContent = "";
      this.terms().forEach((term) => this.box.append(this.chart(term)));
    }

    chart(term) {
      const pts = this.points.filter((p) => p.terms && typeof p.terms[term] === "number");
      const name = TEXT.terms[term] || term;
      const fig = document.createElement("figure");
      fig.className = "loss-chart"; fig.dataset.term = term;
      const cap = document.createElement("figcaption"); cap.textContent = name; fig.append(cap);
      const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
      fig.append(chart);
      if (!pts.length) return fig;
      const steps = pts.map((p) => p.step), values = pts.map((p) => p.terms[term]);
      const x0 = steps[0], x1 = Math.max(steps[steps.length - 1], x0 + 1);
      let y0 = Math.min(...values), y1 = Math.max(...values);
      // a term that stays the same (a weight of 0 gives 0 throughout): a flat line on an
      // axis from 0 to that value, or 0 to 1 for a term that is zero
      if (y1 - y0 < 1e-12) { y0 = Math.min(0, y0); y1 = Math.max(0, y1); if (y1 - y0 < 1e-12) y1 = y0 + 1; }
      const x = (s) => PAD.left + ((s - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
      const y = (v) => H - PAD.bottom - ((v - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
      chart.append(
        svg("rect", { class: "plot", x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right, height: H - PAD.top - PAD.bottom }),
        svg("text", { class: "tick", x: PAD.left - 5, y: PAD.top + 10, "text-anchor": "end" }, tick(y1)),
        svg("text", { class: "tick", x: PAD.left - 5, y: H - PAD.bottom, "text-anchor": "end" }, tick(y0)),
        svg("text", { class: "tick", x: PAD.left, y: H - 5 }, short.format(x0)),
        svg("text", { class: "tick", x: W - PAD.right, y: H - 5, "text-anchor": "end" }, short.format(x1)),
        svg("text", { class: "tick", x: (PAD.left + W - PAD.right) / 2, y: H - 5, "text-anchor": "middle" }, TEXT.step || ""),
        svg("polyline", { class: "line", points: pts.map((p) => x(p.step).toFixed(1) + "," + y(p.terms[term]).toFixed(1)).join(" ") }),
      );
      chart.setAttribute("aria-label", fill(TEXT.chart, {
        term: name, first: short.format(steps[0]), last: short.format(steps[steps.length - 1]),
        start: short.format(values[0]), end: short.format(values[values.length - 1]),
      }));
      return fig;
    }
  }

  const chartBox = $("#loss-charts");
  const charts = chartBox ? new LossCharts(chartBox, $("#loss-empty")) : null;
  if (charts) charts.add(readJSON("loss-history") || []);

  // ------------------------------------------------------------------ live run page
  const run = $("#run-live");
  if (!run || !ACTIVE.includes(run.dataset.status)) return;
  let previewStep = Number($("#run-previews").dataset.step);

  function showLosses(losses) {
    const tbody = $("#run-losses"); tbody.textContent = "";
    Object.entries(losses || {}).forEach(([k, v]) => {
      const tr = document.createElement("tr"), a = document.createElement("td"), b = document.createElement("td");
      const name = document.createElement("code"); name.className = "setting-name"; name.textContent = k;
      a.append((TEXT.terms[k] || "") + " ", name); b.textContent = tick(Number(v)); tr.append(a, b); tbody.append(tr);
    });
  }

  function showPreviews(r) {
    if (r.preview_step === previewStep || !r.previews.length) return;
    previewStep = r.preview_step;
    const box = $("#run-previews"); box.textContent = "";
    r.previews.forEach((src, i) => {
      const img = new Image(); img.src = src; img.alt = fill(TEXT.preview, { n: i + 1, step: r.preview_step }); box.append(img);
    });
    $("#no-previews").hidden = true;
  }

  // r: the run as GET /api/runs/{id} has it; with SSE also the new loss points (history).
  function show(r) {
    // the queue moved (or the run left it): the page renders where it stands now
    const spot = $("#queue-spot");
    if ((spot ? Number(spot.dataset.position) : null) !== (r.queue ? r.queue.position : null)) { location.reload(); return; }
    const badge = $("#run-status .status");
    if (badge) { badge.textContent = TEXT.status[r.status] || r.status; badge.className = "status status-" + r.status; }
    $("#run-step").textContent = r.step; $("#run-total").textContent = r.total_steps;
    const bar = $("#run-bar"); bar.max = r.total_steps || 1; bar.value = r.step;
    $("#run-stage").textContent = r.status === "queued" ? (r.started_at ? TEXT.turn : TEXT.waiting) : TEXT.stages[r.stage] || r.stage;
    $("#run-eta").textContent = clock(r.eta_seconds);
    showLosses(r.losses);
    showPreviews(r);
    if (r.error) { const e = $("#run-error"); e.textContent = r.error; e.hidden = false; }
    const cancel = $("#cancel-form button");
    if (cancel && r.cancel_requested) { cancel.disabled = true; cancel.textContent = TEXT.canceling; }
    if (r.history) charts.add(r.history);
    else if (r.stage === "training" && r.step > 0 && Object.keys(r.losses || {}).length) {
      charts.add([{ step: r.step, elapsed: r.elapsed_seconds, terms: r.losses }]);  // polling: one point per answer
    }
  }

  // "Elapsed" is the whole run's time (queue, download, training, saving), as the report
  // counts it: the page counts on from what the server rendered. (The core's
  // elapsed_seconds is the training loop's time alone.)
  const elapsed = $("#run-elapsed");
  if (elapsed && elapsed.dataset.seconds !== "") {
    const base = Number(elapsed.dataset.seconds), t0 = performance.now();
    setInterval(() => { elapsed.textContent = clock(base + (performance.now() - t0) / 1000); }, 1000);
  }

  // When the run is over the page is rendered again: it shows the checkpoint and gallery.
  const finished = () => location.reload();

  function poll() {
    fetch(run.dataset.api, { headers: { Accept: "application/json" } })
      .then((res) => (res.ok ? res.json() : Promise.reject(res.status)))
      .then((r) => { show(r); if (ACTIVE.includes(r.status)) setTimeout(poll, 2000); else finished(); })
      .catch(() => setTimeout(poll, 5000));
  }

  function listen() {
    if (!window.EventSource) { poll(); return; }
    const source = new EventSource(run.dataset.events);
    let heard = false;
    const giveUp = () => { source.close(); poll(); };
    // a proxy that buffers the stream lets nothing through: the first event comes at once
    const silence = setTimeout(() => { if (!heard) giveUp(); }, 10000);
    source.addEventListener("run", (e) => { heard = true; show(JSON.parse(e.data)); });
    source.addEventListener("end", () => { clearTimeout(silence); source.close(); finished(); });
    // EventSource reconnects by itself (the server ends each stream after a while); it is
    // CLOSED only when the server refused it (signed out, run deleted): polling says why
    source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) { clearTimeout(silence); giveUp(); } });
  }

  // Cancel without leaving the page; the form still posts where scripts are off.
  const cancelForm = $("#cancel-form");
  if (cancelForm) {
    cancelForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const button = cancelForm.querySelector("button");
      button.disabled = true;
      const csrf = document.querySelector('meta[name="csrf-token"]').content;
      fetch(cancelForm.dataset.api, { method: "POST", headers: { Accept: "application/json", "X-CSRF-Token": csrf } })
        .then((res) => (res.ok ? res.json() : Promise.reject(res.status)))
        .then((r) => { show(r); button.textContent = TEXT.canceling; if (!ACTIVE.includes(r.status)) finished(); })
        .catch(() => { button.disabled = false; const el = $("#run-error"); el.textContent = TEXT.cancel_failed; el.hidden = false; });
    });
  }

  listen();
})();
