// The index page: every feature's summary row (data/index.js calls saexIndex), searched, sorted and shown
// one page at a time, so that 50,000 features stay fast. The state lives in the URL's hash
// (#q=...&sort=...&dir=...&page=...), so the back button from a feature page returns to the same view.
"use strict";

(function () {
  var PAGE = 100;
  var DEFAULT_DIR = {id: "asc", density: "desc", max: "desc", score: "desc", explanation: "asc"};
  var rows = [], view = [];
  var state = {q: "", sort: "id", dir: "asc", page: 0};

  function $(id) { return document.getElementById(id); }

  function readHash() {
    var h = location.hash.replace(/^#/, "");
    h.split("&").forEach(function (part) {
      var i = part.indexOf("=");
      if (i < 0) return;
      var k = part.slice(0, i), v;
      try { v = decodeURIComponent(part.slice(i + 1)); } catch (e) { return; }  // a malformed hand-typed hash
      if (k === "q") state.q = v;
      else if (k === "sort" && DEFAULT_DIR[v]) state.sort = v;
      else if (k === "dir" && (v === "asc" || v === "desc")) state.dir = v;
      else if (k === "page" && /^\d+$/.test(v)) state.page = parseInt(v, 10);
    });
  }

  function writeHash() {
    var h = "#q=" + encodeURIComponent(state.q) + "&sort=" + state.sort + "&dir=" + state.dir +
      "&page=" + state.page;
    try { history.replaceState(null, "", h); } catch (e) { /* some browsers refuse on file:// */ }
  }

  // Missing values (a null score, no explanation) sort last in both directions.
  function compare(key, dir) {
    var sign = dir === "asc" ? 1 : -1;
    return function (a, b) {
      var x = a[key], y = b[key];
      var xm = x === null || x === undefined, ym = y === null || y === undefined;
      if (xm || ym) return xm === ym ? a.id - b.id : (xm ? 1 : -1);
      if (key === "explanation") {
        var c = a._lower < b._lower ? -1 : a._lower > b._lower ? 1 : 0;
        return c ? sign * c : a.id - b.id;
      }
      return x === y ? a.id - b.id : sign * (x - y);
    };
  }

  function update(resetPage) {
    if (resetPage) state.page = 0;
    var q = state.q.trim().toLowerCase();
    view = q ? rows.filter(function (r) { return r._id.indexOf(q) >= 0 || r._lower.indexOf(q) >= 0; })
             : rows.slice();
    view.sort(compare(state.sort, state.dir));
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    render(pages);
    writeHash();
    document.body.setAttribute("data-query", state.q);  // lets a test wait for the view of its query
  }

  function cell(text, cls, title) { return saex.el("td", {class: cls, title: title}, text); }

  function render(pages) {
    var body = saex.clear($("rows"));
    var start = state.page * PAGE, part = view.slice(start, start + PAGE);
    var frag = document.createDocumentFragment();
    part.forEach(function (r) {
      var link = saex.el("a", {href: "feature.html#" + r.id}, String(r.id));
      var tr = saex.el("tr", {"data-id": r.id},
        saex.el("td", {class: "num"}, link),
        cell(saex.fmt(r.density, 3), "num", r.density === null ? null : String(r.density)),
        cell(saex.fmt(r.max, 4), "num", r.max === null ? null : String(r.max)),
        cell(r.score === null || r.score === undefined ? "—" : r.score.toFixed(3), "num",
             r.score === null || r.score === undefined ? "not computed" : String(r.score)),
        cell(r.explanation === null || r.explanation === undefined ? "" : r.explanation, "expl",
             r.explanation));
      frag.appendChild(tr);
    });
    body.appendChild(frag);
    var total = rows.length, shown = view.length;
    $("status").textContent = (shown === total ? total + " features" : shown + " of " + total + " features match");
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev-page").disabled = $("first-page").disabled = state.page === 0;
    $("next-page").disabled = $("last-page").disabled = state.page >= pages - 1;
    $("sort").value = state.sort;
    $("dir").textContent = state.dir === "asc" ? "ascending" : "descending";
    Array.prototype.forEach.call(document.querySelectorAll("th[data-key]"), function (th) {
      th.className = th.getAttribute("data-key") === state.sort ? "sorted " + state.dir : "";
    });
  }

  function setSort(key, dir) {
    state.sort = key;
    state.dir = dir || DEFAULT_DIR[key];
    update(true);
  }

  function wire() {
    var search = $("search"), timer = null;
    search.value = state.q;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = search.value; update(true); }, 60);
    });
    $("sort").addEventListener("change", function () { setSort($("sort").value); });
    $("dir").addEventListener("click", function () { setSort(state.sort, state.dir === "asc" ? "desc" : "asc"); });
    Array.prototype.forEach.call(document.querySelectorAll("th[data-key]"), function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        if (key === state.sort) setSort(key, state.dir === "asc" ? "desc" : "asc");
        else setSort(key);
      });
    });
    $("first-page").addEventListener("click", function () { state.page = 0; update(false); });
    $("prev-page").addEventListener("click", function () { state.page = Math.max(0, state.page - 1); update(false); });
    $("next-page").addEventListener("click", function () { state.page += 1; update(false); });
    $("last-page").addEventListener("click", function () { state.page = 1e9; update(false); });
    // A click anywhere on a row opens the feature (the id cell is also a plain link).
    $("rows").addEventListener("click", function (ev) {
      if (ev.target.closest("a")) return;
      var tr = ev.target.closest("tr[data-id]");
      if (tr) location.href = "feature.html#" + tr.getAttribute("data-id");
    });
  }

  window.saexIndex = function (data) {
    rows = data.rows;
    rows.forEach(function (r) {
      r._id = String(r.id);
      r._lower = r.explanation === null || r.explanation === undefined ? "" : String(r.explanation).toLowerCase();
    });
    readHash();
    wire();
    update(false);
    document.body.setAttribute("data-ready", "1");
  };
})();
