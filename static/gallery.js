// The gallery page and the large image view. Every action works as a plain form post; this
// adds in-place review, shift-click ranges, the next pages loading as you scroll, the pack's
// size estimate, live pack progress and keyboard review. Nothing runs per image at load:
// the grid has one delegated listener, whatever its size. User-visible text comes from the
// page (#gallery-strings, data-* attributes), already translated.
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => $('meta[name="csrf-token"]').content;
  const fmt = (n) => new Intl.NumberFormat(document.documentElement.lang || undefined).format(n);
  const post = (url, body) => fetch(url, {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf() },
  });
  const getJSON = async (url) => (await fetch(url, { headers: { Accept: "application/json" } })).json();
  const stringsEl = $("#gallery-strings");
  const T = stringsEl ? JSON.parse(stringsEl.textContent) : {};
  const fill = (text, n) => String(text).replace("{n}", fmt(n));

  // ------------------------------------------------------------ generating, packs building
  const gstatus = $("#gallery-status");
  if (gstatus && ["queued", "running"].includes(gstatus.dataset.status)) {
    const poll = async () => {
      try {
        const g = await getJSON(gstatus.dataset.api);
        const spot = document.getElementById("queue-spot");
        const moved = (spot ? Number(spot.dataset.position) : null) !== (g.queue ? g.queue.position : null);
        if (moved || !["queued", "running"].includes(g.status) || String(g.image_count) !== gstatus.dataset.count) { location.reload(); return; }
      } catch (_) { /* a blip: ask again */ }
      setTimeout(poll, 2500);
    };
    setTimeout(poll, 2500);
  }
  const building = $$('tr.pack[data-status="queued"], tr.pack[data-status="running"]');
  if (building.length) {
    const poll = async () => {
      for (const row of building) {
        try {
          const p = await getJSON(row.dataset.api);
          if (!["queued", "running"].includes(p.status)) { location.reload(); return; }
          const bar = $(".pack-progress", row); if (bar) bar.value = p.progress || 0;
        } catch (_) { /* a blip: ask again */ }
      }
      setTimeout(poll, 1500);
    };
    setTimeout(poll, 1500);
  }

  // ------------------------------------------------------------------------ the grid
  const form = $("#gallery-form");
  const grid = $("#image-grid");
  if (form && grid) {
    const applyAll = $("#apply-all");
    const shownTotal = Number(form.dataset.shownTotal);
    const boxes = () => $$("input.pick", grid);
    const chosen = () => boxes().filter((b) => b.checked);
    let last = null; // the checkbox clicked last: the start of a shift-click range

    const showSelection = () => {
      const n = applyAll && applyAll.checked ? shownTotal : chosen().length;
      $("#selected-count").textContent = !n ? T.none : applyAll && applyAll.checked ? fill(T.all, n) : fill(T.selected, n);
      estimate();
    };

    grid.addEventListener("click", (e) => {
      const box = e.target.closest("input.pick");
      if (!box) return;
      const all = boxes();
      if (e.shiftKey && last && last !== box) {
        const [a, b] = [all.indexOf(last), all.indexOf(box)].sort((x, y) => x - y);
        all.slice(a, b + 1).forEach((x) => { x.checked = box.checked; });
      }
      last = box;
      if (!box.checked && applyAll) applyAll.checked = false;
      showSelection();
    });
    if (applyAll) applyAll.addEventListener("change", () => { if (applyAll.checked) boxes().forEach((b) => { b.checked = true; }); showSelection(); });
    $("#select-page").addEventListener("click", () => { boxes().forEach((b) => { b.checked = true; }); showSelection(); });
    $("#select-none").addEventListener("click", () => {
      boxes().forEach((b) => { b.checked = false; }); if (applyAll) applyAll.checked = false; showSelection();
    });

    // the filters' counts, kept in step with in-place reviews
    const setCounts = (c) => {
      Object.entries(c).forEach(([k, n]) => $$('nav.filters [data-count="' + k + '"]').forEach((el) => { el.textContent = fmt(n); }));
    };
    const mark = (li, review) => {
      li.classList.remove("review-new", "review-approved", "review-rejected");
      li.classList.add("review-" + review);
      $(".review-label", li).textContent = T.labels[review];
    };
    const failed = () => { $("#selected-count").textContent = T.failed; };

    form.addEventListener("submit", async (e) => {
      const button = e.submitter;
      if (!button || button.name !== "review") return; // the pack builder posts as a form
      e.preventDefault();
      const review = button.value;
      // one image's own buttons, or the bulk buttons: the same API call (it answers the counts)
      const single = button.closest("#image-grid li");
      const everything = !single && applyAll && applyAll.checked;
      const picked = single ? [$("input.pick", single)] : chosen();
      if (!everything && !picked.length) return;
      const body = everything ? { review, show: form.dataset.show || "all" } : { review, image_ids: picked.map((b) => b.value) };
      const res = await post("/api/galleries/" + form.dataset.gallery + "/review", body);
      if (!res.ok) { failed(); return; }
      const answer = await res.json();
      (everything ? boxes() : picked).forEach((b) => { mark(b.closest("li"), review); if (!single) b.checked = false; });
      if (!single && applyAll) applyAll.checked = false;
      setCounts(answer.counts);
      showSelection();
    });

    // the next page joins the grid as the user scrolls to its end (the link still works)
    const more = () => $("#load-more");
    if ("IntersectionObserver" in window && more()) {
      let loading = false;
      const observer = new IntersectionObserver(async (entries) => {
        if (loading || !entries.some((x) => x.isIntersecting) || !more()) return;
        loading = true;
        try {
          const html = await (await fetch(more().href)).text();
          const doc = new DOMParser().parseFromString(html, "text/html");
          const everything = applyAll && applyAll.checked;
          $$("#image-grid > li", doc).forEach((li) => {
            const box = $("input.pick", li); if (box && everything) box.checked = true;
            grid.append(document.adoptNode(li));
          });
          const pager = $("nav.pager", doc);
          $("nav.pager").replaceWith(document.adoptNode(pager));
          if (more()) observer.observe(more());
        } catch (_) { /* the link stays: a click loads the page */ }
        loading = false;
      }, { rootMargin: "800px" });
      observer.observe(more());
    }
  }

  // ------------------------------------------------------------------- pack size estimate
  // The pack builder is the grid's form: its own fields plus the ticked images.
  const out = $("#pack-estimate");
  let timer = null;
  const choice = () => {
    const data = new FormData(form);
    const body = {
      selection: data.get("selection"), format: data.get("format"), size: data.getAll("size"),
      exclude_near_copies: data.get("exclude_near_copies") === "true",
    };
    if (body.selection === "selected") {
      if (data.get("apply_all")) body.show = data.get("apply_all");
      else body.image_ids = data.getAll("image_ids");
    }
    return body;
  };
  function estimate() {
    if (!form || !out) return;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const body = choice();
      if (!body.size.length) { out.textContent = out.dataset.unknown; return; }
      try {
        const res = await post(form.dataset.estimate, body);
        const r = await res.json();
        if (res.ok && r.estimated_bytes !== null) {
          out.textContent = out.dataset.label + " " + r.estimated_text + " · " + fmt(r.file_count) + " " + out.dataset.files;
        } else out.textContent = r.reason || r.detail || out.dataset.unknown;
      } catch (_) { out.textContent = out.dataset.unknown; }
    }, 300);
  }
  if (form && out) {
    form.addEventListener("change", estimate); // the builder's fields sit inside the form
    estimate();
  }

  // ------------------------------------------------------------------ the large view
  const view = $("#image-view");
  if (view) {
    document.addEventListener("keydown", (e) => {
      if (e.target.matches("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "ArrowLeft" && view.dataset.prev) location.href = view.dataset.prev;
      else if (e.key === "ArrowRight" && view.dataset.next) location.href = view.dataset.next;
      else {
        const button = $('button[data-key="' + e.key.toLowerCase() + '"]', view);
        if (button) button.click();
      }
    });
  }
})();
