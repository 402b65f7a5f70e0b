/* PocketTune dashboard: live refresh and table filtering. Written for PocketTune; no dependencies.
 *
 * A page whose <body data-live="1"> shows something still changing (a running job, an open
 * round) re-fetches its own URL every data-poll-seconds, parses the HTML, and updates every
 * element marked data-live (matched by id) whose server-rendered contents changed; charts
 * whose JSON spec changed are then redrawn. The server renders pages one way only, so a
 * refreshed page is exactly what a reload would show. Polling stops when the fetched page
 * says it is no longer live, and pauses while the tab is hidden.
 *
 * A refresh leaves alone what did not change: an element is compared with the fresh page as
 * the server sent it (without the chart canvas drawn into it, and with the table filter
 * applied to the fresh rows too), and in a table body only the rows that differ are
 * replaced. A row or chart that did not change stays the same DOM node across refreshes.
 *
 * window.pocketTuneRefresh (and <body data-refreshes>) tells scripts and tests what happened:
 *   count      refreshes applied since the page loaded (also body.dataset.refreshes)
 *   pause()    hold refreshing: nothing on the page is replaced until resume(); a fetch
 *              already in flight is discarded when it arrives
 *   resume()   refresh again from the next tick
 *   paused     whether refreshing is held
 * A refresh is applied in one synchronous step, so a script that reads the page in one go
 * (one WebDriver execute_script) never sees half of one.
 */
(function () {
  "use strict";

  var count = 0;
  var paused = false;
  var generation = 0;  // bumped by pause(): a fetch started before it is not applied

  /* The element's contents as the server rendered them: without what charts.js drew in. */
  function serverMarkup(el) {
    if (!el.querySelector(".pt-chart-canvas")) return el.innerHTML;
    var copy = el.cloneNode(true);
    copy.querySelectorAll(".pt-chart-canvas").forEach(function (canvas) { canvas.remove(); });
    return copy.innerHTML;
  }

  function isRowList(el) {
    if (el.tagName !== "TBODY") return false;
    for (var node = el.firstChild; node; node = node.nextSibling) {
      if (node.nodeType === 1 && node.tagName !== "TR") return false;
      if (node.nodeType === 3 && node.nodeValue.trim() !== "") return false;
    }
    return true;
  }

  /* Bring `el` to `next`'s contents, replacing only the rows that differ where both are plain
   * lists of the same number of rows; anything else is replaced whole. Returns the new nodes. */
  function update(el, next) {
    if (isRowList(el) && isRowList(next) && el.rows.length === next.rows.length) {
      var replaced = [];
      for (var i = 0; i < next.rows.length; i++) {
        var row = el.rows[i], fresh = next.rows[i];
        if (row.outerHTML !== fresh.outerHTML) {
          var copy = document.importNode(fresh, true);
          row.replaceWith(copy);
          replaced.push(copy);
        }
      }
      if (el.innerHTML === next.innerHTML) return replaced;
    }
    el.innerHTML = next.innerHTML;
    return [el];
  }

  function swapLiveParts(fresh) {
    applyFilters(fresh);  // so rows hidden by the filter here compare equal to their fresh copies
    var changed = [];
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = fresh.getElementById(el.id);
      if (next && next.innerHTML !== serverMarkup(el)) {
        changed.push.apply(changed, update(el, next));
      }
    });
    if (window.PocketTuneCharts) {
      changed.forEach(function (node) {
        if (node.isConnected) window.PocketTuneCharts.renderAll(node);
      });
    }
    applyFilters(document);
    document.body.dataset.live = fresh.body.dataset.live;
    count += 1;
    document.body.dataset.refreshes = String(count);
    document.body.dataset.refreshedAt = String(Date.now());
  }

  function poll() {
    var seconds = parseFloat(document.body.dataset.pollSeconds || "3");
    if (document.body.dataset.live !== "1") return;
    setTimeout(function () {
      if (document.hidden || paused) { poll(); return; }
      var started = generation;
      fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          if (paused || started !== generation) return;  // held while this fetch was in flight
          swapLiveParts(new DOMParser().parseFromString(html, "text/html"));
        })
        .catch(function () { /* a missed refresh is retried on the next tick */ })
        .then(poll);
    }, Math.max(1, seconds) * 1000);
  }

  /* Hide the rows of each filtered table (looked up in `root`: this page or a fetched one)
   * that do not contain the text typed into its filter box on this page. */
  function applyFilters(root) {
    document.querySelectorAll("input[data-filter-table]").forEach(function (input) {
      var table = root.getElementById(input.dataset.filterTable);
      if (!table) return;
      var needle = input.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (row) {
        row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) === -1;
      });
    });
  }

  window.pocketTuneRefresh = {
    get count() { return count; },
    get paused() { return paused; },
    pause: function () { paused = true; generation += 1; },
    resume: function () { paused = false; }
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.body.dataset.refreshes = "0";
    document.querySelectorAll("input[data-filter-table]").forEach(function (input) {
      input.addEventListener("input", function () { applyFilters(document); });
    });
    poll();
  });
})();
