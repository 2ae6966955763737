// Helpers shared by the saex dashboard pages.
// Every piece of data text goes into the page through textContent, createTextNode or setAttribute:
// never innerHTML, so a token such as "<script>" is shown as text and can run nothing.
"use strict";

var saex = (function () {
  var SVG = "http://www.w3.org/2000/svg";

  // el("td", {class: "x", title: t}, child, "text", ...): children are nodes or strings (made text nodes).
  function el(tag, attrs) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, String(attrs[k]));
    });
  }

  function append(node, child) {
    if (child === null || child === undefined) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // A number for display: 4 significant digits, exponent form for the very small and large.
  function fmt(x, digits) {
    if (x === null || x === undefined) return "—";
    if (typeof x !== "number") return String(x);
    if (x === 0) return "0";
    var d = digits || 4, a = Math.abs(x);
    if (a < 1e-3 || a >= 1e6) return x.toExponential(d - 1);
    return String(Number(x.toPrecision(d)));
  }

  // Whitespace and control characters made visible: newline ↵, tab →, carriage return ␍, others as
  // control pictures; an empty token as ∅.
  function visible(token) {
    if (token === null || token === undefined) return "∅";
    var s = String(token);
    if (s === "") return "∅";
    return s.replace(/[\u0000-\u001f\u007f]/g, function (c) {
      if (c === "\n") return "↵";
      if (c === "\t") return "→";
      if (c === "\r") return "␍";
      if (c === "\u007f") return "␡";
      return String.fromCharCode(0x2400 + c.charCodeAt(0));
    });
  }

  function notComputed(what) {
    return el("p", {class: "not-computed"}, "not computed" + (what ? " (" + what + ")" : ""));
  }

  // Load a data script on demand (file:// pages cannot fetch()); onerror gets no argument.
  function loadScript(src, onerror) {
    var s = document.createElement("script");
    s.src = src;
    s.onerror = function () { s.remove(); if (onerror) onerror(); };
    s.onload = function () { s.remove(); };
    document.head.appendChild(s);
  }

  function featurePath(id) {
    return "data/f/" + Math.floor(id / 1000) + "/" + id + ".js";
  }

  return {el: el, svg: svg, clear: clear, fmt: fmt, visible: visible, notComputed: notComputed,
          loadScript: loadScript, featurePath: featurePath};
})();
