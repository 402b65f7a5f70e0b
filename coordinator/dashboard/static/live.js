/* PocketTune dashboard: live refresh and table filtering. Written for PocketTune; no dependencies.
 *
 * A page whose <body data-live="1"> shows something still changing (a running job, an open
 * round) re-fetches its own URL every data-poll-seconds, parses the HTML, and swaps the
 * contents of every element marked data-live (matched by id); charts are then redrawn from
 * their refreshed JSON specs. The server renders pages one way only, so a refreshed page is
 * exactly what a reload would show. Polling stops when the fetched page says it is no
 * longer live, and pauses while the tab is hidden.
 */
(function () {
  "use strict";

  function swapLiveParts(fresh) {
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = fresh.getElementById(el.id);
      if (next && next.innerHTML !== el.innerHTML) {
        el.innerHTML = next.innerHTML;
      }
    });
    if (window.PocketTuneCharts) window.PocketTuneCharts.renderAll(document);
    applyFilters();
    document.body.dataset.live = fresh.body.dataset.live;
    document.body.dataset.refreshedAt = String(Date.now());
  }

  function poll() {
    var seconds = parseFloat(document.body.dataset.pollSeconds || "3");
    if (document.body.dataset.live !== "1") return;
    setTimeout(function () {
      if (document.hidden) { poll(); return; }
      fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { swapLiveParts(new DOMParser().parseFromString(html, "text/html")); })
        .catch(function () { /* a missed refresh is retried on the next tick */ })
        .then(poll);
    }, Math.max(1, seconds) * 1000);
  }

  function applyFilters() {
    document.querySelectorAll("input[data-filter-table]").forEach(function (input) {
      var table = document.getElementById(input.dataset.filterTable);
      if (!table) return;
      var needle = input.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (row) {
        row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) === -1;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-filter-table]").forEach(function (input) {
      input.addEventListener("input", applyFilters);
    });
    poll();
  });
})();
