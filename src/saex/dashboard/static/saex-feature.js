// The feature page (feature.html#<id>): loads data/f/<id // 1000>/<id>.js, which calls saexFeature, and
// draws every panel of the payload; a panel whose data is null says "not computed" (and why, from
// the payload's not_computed).
"use strict";

(function () {
  var el = saex.el, fmt = saex.fmt;
  var wanted = null;
  var PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"];
  var OTHER = "#c8c8c8";

  function $(id) { return document.getElementById(id); }

  function requested() {
    var h = location.hash.replace(/^#/, "");
    var m = /^(?:id=)?(\d+)$/.exec(h) || /[?&]id=(\d+)/.exec(location.search);
    return m ? parseInt(m[1], 10) : null;
  }

  function message(text) {
    $("message").textContent = text;
    $("message").hidden = false;
    $("content").hidden = true;
  }

  function load() {
    var id = requested();
    document.body.removeAttribute("data-ready");
    if (id === null) { message("No feature given: open feature.html#<id>, or pick one from the index."); return; }
    wanted = id;
    message("loading feature " + id + "…");
    saex.loadScript(saex.featurePath(id), function () {
      if (wanted === id) {
        message("Feature " + id + " is not in this dashboard.");
        document.body.setAttribute("data-ready", "missing");
      }
    });
  }

  function navLink(node, id) {
    if (id === null || id === undefined) { node.removeAttribute("href"); node.className = "disabled"; }
    else { node.setAttribute("href", "feature.html#" + id); node.className = ""; }
  }

  function kvTable(node, pairs) {
    saex.clear(node);
    pairs.forEach(function (p) {
      node.appendChild(el("tr", null, el("th", null, p[0]), el("td", {title: p[2]}, p[1])));
    });
  }

  // ---- explanation and scores ------------------------------------------------------------------------
  function renderExplanation(node, f) {
    saex.clear(node);
    if (f.explanation === null || f.explanation === undefined) node.appendChild(saex.notComputed());
    else node.appendChild(el("blockquote", {class: "explanation"}, f.explanation));
  }

  function renderScores(node, f) {
    saex.clear(node);
    var keys = f.scores ? Object.keys(f.scores) : [];
    if (!keys.length) { node.appendChild(saex.notComputed()); return; }
    var cols = ["top_and_random", "top", "random"];
    keys.forEach(function (k) {
      Object.keys(f.scores[k] || {}).forEach(function (c) { if (cols.indexOf(c) < 0) cols.push(c); });
    });
    var expl = f.explanations || {}, skipped = f.skipped || {};
    var head = el("tr", null, el("th", null, "backend / preset"),
      cols.map(function (c) { return el("th", null, c.replace(/_/g, " ")); }),
      el("th", null, "explanation"));
    var body = keys.map(function (k) {
      var s = f.scores[k] || {};
      return el("tr", null, el("td", null, k),
        cols.map(function (c) {
          var v = s[c];
          return el("td", {class: "num", title: v === null || v === undefined ? "not computed" : String(v)},
            typeof v === "number" ? v.toFixed(3) : (v === null || v === undefined ? "—" : String(v)));
        }),
        el("td", {class: "expl"}, skipped[k] ? "skipped: " + skipped[k] : (expl[k] === null || expl[k] === undefined ? "—" : expl[k])));
    });
    node.appendChild(el("table", {class: "scores"}, el("thead", null, head), el("tbody", null, body)));
  }

  // ---- examples ----------------------------------------------------------------------------------------
  function tokenSpan(token, act, scalePos, scaleNeg) {
    var span = el("span", {class: "tok", "data-act": act,
                           title: JSON.stringify(String(token)) + "  activation " + String(act)},
                  saex.visible(token));
    if (act > 0 && scalePos > 0) span.style.backgroundColor = "rgba(255, 120, 0, " + Math.min(1, act / scalePos).toFixed(3) + ")";
    else if (act < 0 && scaleNeg > 0) span.style.backgroundColor = "rgba(40, 110, 255, " + Math.min(1, -act / scaleNeg).toFixed(3) + ")";
    if (token === "\n" || /\n/.test(String(token))) span.className += " nl";
    return span;
  }

  function renderExamples(node, f) {
    saex.clear(node);
    var sections = f.sections || [];
    if (!sections.length) { node.appendChild(saex.notComputed()); return; }
    // colour ∝ activation / the feature's max (the largest shown where the max is not positive)
    var maxPos = f.max > 0 ? f.max : 0, maxNeg = 0;
    sections.forEach(function (s) {
      (s.examples || []).forEach(function (ex) {
        (ex.acts || []).forEach(function (a) {
          if (a > maxPos && !(f.max > 0)) maxPos = a;
          if (-a > maxNeg) maxNeg = -a;
        });
      });
    });
    sections.forEach(function (s) {
      var sec = el("section", {class: "examples"}, el("h3", null, s.title));
      var exs = s.examples || [];
      if (!exs.length) sec.appendChild(el("p", {class: "empty"}, "no examples"));
      exs.forEach(function (ex) {
        var acts = ex.acts || [], toks = ex.tokens || [];
        var top = acts.length ? Math.max.apply(null, acts) : null;
        var line = el("div", {class: "tokens"});
        for (var i = 0; i < toks.length; i++) line.appendChild(tokenSpan(toks[i], acts[i] || 0, maxPos, maxNeg));
        sec.appendChild(el("div", {class: "example"},
          el("span", {class: "ex-max", title: top === null ? null : "max activation " + String(top)}, fmt(top, 3)),
          line));
      });
      node.appendChild(sec);
    });
  }

  // ---- histogram: stacked bars over 10 equal-width bins ------------------------------------------------
  function renderHistogram(node, h, why) {
    saex.clear(node);
    if (!h) { node.appendChild(saex.notComputed(why)); return; }
    var series = h.series || [], edges = h.edges || [], nb = Math.max(0, edges.length - 1);
    var W = 460, H = 220, ml = 44, mr = 8, mt = 8, mb = 34, pw = W - ml - mr, ph = H - mt - mb;
    var totals = [];
    for (var b = 0; b < nb; b++) totals.push(series.reduce(function (t, s) { return t + ((s.counts || [])[b] || 0); }, 0));
    var ymax = Math.max.apply(null, totals.concat([1]));
    var bw = nb ? pw / nb : pw;
    var chart = saex.svg("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "hist", role: "img"});
    chart.appendChild(saex.svg("line", {x1: ml, y1: mt + ph, x2: ml + pw, y2: mt + ph, class: "axis"}));
    chart.appendChild(saex.svg("line", {x1: ml, y1: mt, x2: ml, y2: mt + ph, class: "axis"}));
    chart.appendChild(saex.svg("text", {x: ml - 4, y: mt + 10, class: "tick", "text-anchor": "end"}, String(ymax)));
    chart.appendChild(saex.svg("text", {x: ml - 4, y: mt + ph, class: "tick", "text-anchor": "end"}, "0"));
    var colour = function (s, i) { return s.other ? OTHER : PALETTE[i % PALETTE.length]; };
    for (b = 0; b < nb; b++) {
      var y = mt + ph;
      series.forEach(function (s, i) {
        var c = (s.counts || [])[b] || 0;
        if (!c) return;
        var hgt = c / ymax * ph;
        y -= hgt;
        chart.appendChild(saex.svg("rect", {x: (ml + b * bw + 1).toFixed(2), y: y.toFixed(2), width: (bw - 2).toFixed(2),
          height: hgt.toFixed(2), fill: colour(s, i), "data-label": s.label, "data-count": c},
          saex.svg("title", null, (s.other ? "other tokens" : JSON.stringify(String(s.label))) + ": " + c +
            " in (" + fmt(edges[b]) + ", " + fmt(edges[b + 1]) + "]")));
      });
    }
    [0, Math.floor(nb / 2), nb].forEach(function (i, k) {
      if (i > nb || edges[i] === undefined) return;
      chart.appendChild(saex.svg("text", {x: ml + i * bw, y: mt + ph + 14, class: "tick",
        "text-anchor": k === 0 ? "start" : k === 2 ? "end" : "middle"}, fmt(edges[i], 3)));
    });
    chart.appendChild(saex.svg("text", {x: ml + pw / 2, y: H - 4, class: "label", "text-anchor": "middle"}, "activation"));
    node.appendChild(chart);
    var legend = el("ul", {class: "legend"});
    series.forEach(function (s, i) {
      var sw = el("span", {class: "swatch"});
      sw.style.backgroundColor = colour(s, i);
      var total = (s.counts || []).reduce(function (a, c) { return a + c; }, 0);
      legend.appendChild(el("li", null, sw, el("span", {class: s.other ? "other" : "tok-label", title: JSON.stringify(String(s.label))},
        s.other ? String(s.label || "other") : saex.visible(s.label)), " " + total));
    });
    node.appendChild(legend);
    node.appendChild(el("p", {class: "note"}, h.n + " activations counted of " + h.total + " non-zero" +
      (h.source ? " (" + h.source + ")" : "")));
  }

  // ---- output effect: bars of the mean change in log-probability ---------------------------------------
  function effectBars(items, key, cls) {
    var scale = items.reduce(function (m, it) { return Math.max(m, Math.abs(it[key] || 0)); }, 0) || 1;
    return el("table", {class: "bars " + cls}, el("tbody", null, items.map(function (it) {
      var bar = el("span", {class: "bar"});
      bar.style.width = (100 * Math.abs(it[key] || 0) / scale).toFixed(1) + "%";
      return el("tr", null, el("td", {class: "tok-cell", title: JSON.stringify(String(it.token)) + " (id " + it.id + ")"},
        el("span", {class: "tok"}, saex.visible(it.token))),
        el("td", {class: "bar-cell"}, bar), el("td", {class: "num", title: String(it[key])}, fmt(it[key])));
    })));
  }

  function renderOutputEffect(node, o, why) {
    saex.clear(node);
    if (!o) { node.appendChild(saex.notComputed(why)); return; }
    node.appendChild(el("div", {class: "two"},
      el("div", null, el("h3", null, "decreased"), effectBars(o.decreased || [], "delta", "neg")),
      el("div", null, el("h3", null, "increased"), effectBars(o.increased || [], "delta", "pos"))));
    node.appendChild(el("p", {class: "note"}, "mean change in log-probability when the feature is ablated, over " +
      o.positions + " positions in " + o.contexts + " contexts"));
  }

  // ---- logit lens ------------------------------------------------------------------------------------------
  function tokenList(items) {
    return el("table", {class: "lens"}, el("tbody", null, items.map(function (it) {
      return el("tr", null, el("td", {class: "tok-cell", title: JSON.stringify(String(it.token)) + " (id " + it.id + ")"},
        el("span", {class: "tok"}, saex.visible(it.token))), el("td", {class: "num", title: String(it.value)}, fmt(it.value)));
    })));
  }

  function renderLogitLens(node, l, why) {
    saex.clear(node);
    if (!l) { node.appendChild(saex.notComputed(why)); return; }
    node.appendChild(el("div", {class: "two"},
      el("div", null, el("h3", null, "top"), tokenList(l.top || [])),
      el("div", null, el("h3", null, "bottom"), tokenList(l.bottom || []))));
    node.appendChild(el("p", {class: "note"}, "feature direction · unembedding" +
      (l.final_norm ? " (with the final norm's gain)" : " (without the final norm)") + "; " + l.excluded +
      " high-norm tokens excluded"));
  }

  // ---- upstream tree -----------------------------------------------------------------------------------------
  function treeNode(n) {
    var label = el("span", {class: "node"}, el("span", {class: "hook"}, n.hook), " feature ",
      el("span", {class: "fid"}, String(n.feature)));
    if (n.effect !== null && n.effect !== undefined) label.appendChild(el("span", {class: "effect", title: String(n.effect)}, " effect " + fmt(n.effect)));
    if (n.cos !== null && n.cos !== undefined) label.appendChild(el("span", {class: "cos", title: String(n.cos)}, " cos " + fmt(n.cos, 3)));
    var li = el("li", null, label);
    var kids = n.children || [];
    if (kids.length) li.appendChild(el("ul", null, kids.map(treeNode)));
    return li;
  }

  function renderUpstream(node, u, why) {
    saex.clear(node);
    if (!u) { node.appendChild(saex.notComputed(why)); return; }
    node.appendChild(el("ul", {class: "tree"}, treeNode(u)));
    node.appendChild(el("p", {class: "note"}, "effect: mean drop in the parent's activation when the feature is ablated; " +
      "cos: cosine of the two directions. " + (u.method ? "Method: " + u.method + "; " : "") + u.contexts +
      " contexts; root max activation " + fmt(u.max_activation)));
  }

  window.saexFeature = function (f, nav) {
    if (f.id !== wanted) return;  // a late answer for a feature the reader has already left
    nav = nav || {};
    document.title = "feature " + f.id + " · " + (f.dictionary || "");
    $("feature-title").textContent = "Feature " + f.id;
    $("feature-sub").textContent = [f.dictionary, f.hook].filter(function (x) { return x; }).join(" · ");
    navLink($("prev"), nav.prev);
    navLink($("next"), nav.next);
    kvTable($("stats"), [["density", fmt(f.density, 4), String(f.density)], ["max activation", fmt(f.max, 4), String(f.max)]]);
    renderExplanation($("explanation"), f);
    renderScores($("scores"), f);
    var why = f.not_computed || {};  // panel -> why it is empty
    renderHistogram($("histogram"), f.histogram, why.histogram);
    renderOutputEffect($("output-effect"), f.output_effect, why.output_effect);
    renderLogitLens($("logit-lens"), f.logit_lens, why.logit_lens);
    renderUpstream($("upstream"), f.upstream, why.upstream);
    renderExamples($("examples"), f);
    $("message").hidden = true;
    $("content").hidden = false;
    document.body.setAttribute("data-ready", String(f.id));
  };

  document.addEventListener("DOMContentLoaded", function () {
    $("goto").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var v = $("goto-id").value.trim();
      if (/^\d+$/.test(v)) location.hash = "#" + v;
    });
    window.addEventListener("hashchange", load);
    load();
  });
})();
