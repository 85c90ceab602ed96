// Progressive enhancement: every page works with plain forms; this adds drag and drop
// uploads with per-file progress (the run page: run.js; galleries and images: gallery.js).
(function () {
  "use strict";
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel, root) => (root || document).querySelector(sel);

  // ---------------------------------------------------------------- confirm buttons
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (e) => { if (!confirm(form.dataset.confirm)) e.preventDefault(); });
  });

  // ------------------------------------------------------------------ local times
  // The |when filter writes <time data-local> in UTC (the server does not know the
  // reader's time zone); here it becomes the reader's local time, in the page's language.
  document.querySelectorAll("time[data-local]").forEach((el) => {
    const when = new Date(el.getAttribute("datetime")), width = el.dataset.local;
    if (isNaN(when) || !["short", "medium", "long"].includes(width)) return;
    el.title = el.textContent;  // the UTC time stays at hand
    el.textContent = new Intl.DateTimeFormat(document.documentElement.lang || undefined,
      { dateStyle: width, timeStyle: "short" }).format(when);
  });

  // ------------------------------------------------------------ language switcher
  // Choosing a language applies it at once; without JavaScript the form's button does.
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    const button = select.form.querySelector("button");
    if (button) button.classList.add("visually-hidden");
    select.addEventListener("change", () => select.form.submit());
  });

  // --------------------------------------------------------------------- uploads
  const form = $("#upload-form");
  if (form) {
    // the words shown here come from the page (data-text-*), in the page's language
    const text = form.dataset;
    const input = $("#file-input"), list = $("#upload-list");
    const uploadOne = (file) => new Promise((resolve) => {
      const li = document.createElement("li");
      const name = document.createElement("span"); name.textContent = file.name;
      const bar = document.createElement("progress"); bar.max = 100; bar.value = 0; bar.setAttribute("aria-label", file.name);
      li.append(name, bar); list.append(li);
      const body = new FormData(); body.append("files", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.api);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
      xhr.onload = () => {
        let res = {}; try { res = JSON.parse(xhr.responseText); } catch (_) {}
        const msg = document.createElement("span");
        if (xhr.status === 200 && res.added && res.added.length) { li.className = "added"; msg.textContent = text.textAdded; }
        else {
          li.className = "refused";
          msg.textContent = (res.refused && res.refused[0] && res.refused[0].reason) || res.detail
            || text.textError.replace("{status}", xhr.status);
        }
        bar.replaceWith(msg); resolve();
      };
      xhr.onerror = () => { li.className = "refused"; bar.replaceWith(document.createTextNode(text.textNetworkError)); resolve(); };
      xhr.send(body);
    });
    const uploadAll = async (files) => {
      list.textContent = "";
      const queue = Array.from(files); const workers = [];
      for (let w = 0; w < 3; w++) workers.push((async () => { while (queue.length) await uploadOne(queue.shift()); })());
      await Promise.all(workers);
      const done = document.createElement("li");
      const a = document.createElement("a"); a.href = location.pathname; a.textContent = text.textRefresh;
      done.append(a); list.append(done);
      if (!list.querySelector(".refused")) { setTimeout(() => location.reload(), 600); return; }
      // some were refused: keep their reasons in view, and show the photos that were added
      fetch(location.pathname).then((res) => res.text()).then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html");
        ["#photo-count", "#photo-grid", ".empty-state", "#run-needs"].forEach((sel) => {
          const old = document.querySelector(sel), now = fresh.querySelector(sel);
          if (old && now) old.replaceWith(now);
          else if (old) old.remove();
          else if (now && sel === "#photo-grid") { const box = form.parentNode.querySelector(".empty-state"); (box || form).after(now); }
        });
      });
    };
    form.addEventListener("submit", (e) => { if (input.files.length) { e.preventDefault(); uploadAll(input.files); } });
    // choosing files starts their upload (the Upload button stays for pages without scripts)
    input.addEventListener("change", () => { if (input.files.length) uploadAll(input.files); });
    ["dragenter", "dragover"].forEach((t) => form.addEventListener(t, (e) => { e.preventDefault(); form.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => form.addEventListener(t, (e) => { e.preventDefault(); form.classList.remove("over"); }));
    form.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) uploadAll(e.dataTransfer.files); });
  }

  // ------------------------------------------------------------- the run form
  // The chosen base model's time estimates and what it can produce (and the colour notice).
  const model = $("#run-base-model");
  if (model) {
    const choose = () => document.querySelectorAll("[data-model]").forEach((el) => { el.hidden = el.dataset.model !== model.value; });
    model.addEventListener("change", choose);
    choose();
  }

  // The run page's live progress and loss charts are in static/run.js.

  // The gallery page and the large image view: static/gallery.js.
})();
