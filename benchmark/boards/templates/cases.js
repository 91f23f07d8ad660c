/* Per-case drill-down: the cases are parsed once from the embedded JSON; the list renders one page
   at a time and a case's variants only when it is opened. Plain DOM, no library, works from file://. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("fb-cases").textContent);
  var PAGE = 25;
  var RUNS = DATA.runs;
  RUNS.forEach(function (r) {  // a short name per run: the model, with the prompt mode when a model appears twice
    var twice = RUNS.filter(function (o) { return o.model === r.model; }).length > 1;
    r.short = r.model + (twice ? " · " + r.mode : "");
  });
  var state = { q: "", run: RUNS.length ? String(RUNS[0].i) : "0", sort: "m", flip: false, text: "", page: 0, open: null };
  var TOKEN = /\S+|\s+/g;

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "class") e.className = attrs[k]; else if (k === "text") e.textContent = attrs[k];
      else if (k === "style") e.setAttribute("style", attrs[k]); else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function num(x, d) { return x == null ? "—" : x.toFixed(d == null ? 3 : d); }
  function key(c) { return c.t + " · " + c.q; }

  // ----- controls -----
  var qSel = document.getElementById("f-q"), runSel = document.getElementById("f-run");
  var groups = [];
  DATA.cases.forEach(function (c) { if (groups.indexOf(key(c)) < 0) groups.push(key(c)); });
  qSel.appendChild(el("option", { value: "", text: "all (" + groups.length + ")" }));
  groups.forEach(function (g) { qSel.appendChild(el("option", { value: g, text: g })); });
  RUNS.forEach(function (r) { runSel.appendChild(el("option", { value: String(r.i), text: r.label })); });
  function on(id, ev, fn) { document.getElementById(id).addEventListener(ev, fn); }
  on("f-q", "change", function (e) { state.q = e.target.value; state.page = 0; draw(); });
  on("f-run", "change", function (e) { state.run = e.target.value; state.page = 0; draw(); });
  on("f-sort", "change", function (e) { state.sort = e.target.value; state.page = 0; draw(); });
  on("f-flip", "change", function (e) { state.flip = e.target.checked; state.page = 0; draw(); });
  on("f-text", "input", function (e) { state.text = e.target.value.toLowerCase(); state.page = 0; draw(); });
  on("p-prev", "click", function () { if (state.page > 0) { state.page--; draw(); } });
  on("p-next", "click", function () { state.page++; draw(); });

  function stat(c, run, k) { var s = c.st[run]; return s ? s[k] : null; }
  function selected() {
    var run = state.run;
    var list = DATA.cases.filter(function (c) {
      if (state.q && key(c) !== state.q) return false;
      if (state.flip && !Object.keys(c.st).some(function (r) { return c.st[r].f; })) return false;
      if (state.text && c.c.toLowerCase().indexOf(state.text) < 0) return false;
      return true;
    });
    var s = state.sort;
    if (s === "c") list.sort(function (a, b) { return a.c < b.c ? -1 : a.c > b.c ? 1 : 0; });
    else list.sort(function (a, b) {
      var x = stat(a, run, s), y = stat(b, run, s);
      x = x == null ? -1 : x; y = y == null ? -1 : y;
      if (y !== x) return y - x;
      var u = stat(a, run, "m") || 0, v = stat(b, run, "m") || 0;
      return v - u;
    });
    return list;
  }

  function head() {
    var h = document.getElementById("case-head");
    h.textContent = "";
    var row = el("tr", null, [el("th", { text: "case" }), el("th", { text: "task · question" }), el("th", { text: "variants" })]);
    RUNS.forEach(function (r) {
      row.appendChild(el("th", { text: (RUNS.length > 1 ? r.short + ": " : "") + "flip" }));
      row.appendChild(el("th", { text: "spread" }));
      row.appendChild(el("th", { text: "max |Δ|" }));
      row.appendChild(el("th", { text: "invalid" }));
    });
    h.appendChild(row);
  }

  function draw() {
    var list = selected();
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var body = document.getElementById("case-body");
    body.textContent = "";
    var ncol = 3 + 4 * RUNS.length;
    list.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (c) {
      var id = key(c) + "|" + c.c;
      var tr = el("tr", { "class": "case" + (state.open === id ? " open" : ""), "data-case": c.c },
        [el("td", { text: c.c }), el("td", { text: key(c) }), el("td", { "class": "num", text: String(c.v.length) })]);
      RUNS.forEach(function (r) {
        var s = c.st[String(r.i)];
        tr.appendChild(el("td", null, s && s.f ? [el("span", { "class": "flip", text: "flip" })] : [s ? "–" : "n/a"]));
        tr.appendChild(el("td", { "class": "num", text: s ? num(s.s) : "" }));
        tr.appendChild(el("td", { "class": "num", text: s ? num(s.m) : "" }));
        tr.appendChild(el("td", { "class": "num", text: s ? String(s.x) : "" }));
      });
      tr.addEventListener("click", function () { state.open = state.open === id ? null : id; draw(); });
      body.appendChild(tr);
      if (state.open === id) body.appendChild(el("tr", { "class": "detailrow" }, [el("td", { "class": "detail", colspan: String(ncol) }, [detail(c)])]));
    });
    document.getElementById("f-count").textContent = list.length + " of " + DATA.cases.length + " cases";
    document.getElementById("p-info").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("p-prev").disabled = state.page === 0;
    document.getElementById("p-next").disabled = state.page >= pages - 1;
  }

  // ----- one case -----
  function segments(base, ops) {
    // [[text, changed], ...] of a variant: the reference tokens with the diff applied.
    var tokens = base.match(TOKEN) || [], out = [], pos = 0;
    ops.forEach(function (op) {
      if (op[0] > pos) out.push([tokens.slice(pos, op[0]).join(""), false]);
      if (op[2]) out.push([op[2], true]);
      pos = op[1];
    });
    if (pos < tokens.length) out.push([tokens.slice(pos).join(""), false]);
    return out;
  }
  function refSegments(base, variants) {
    var tokens = base.match(TOKEN) || [], changed = {};
    variants.forEach(function (v) { v.d.forEach(function (op) { for (var i = op[0]; i < op[1]; i++) changed[i] = 1; }); });
    var out = [];
    tokens.forEach(function (t, i) {
      var ch = !!changed[i] && /\S/.test(t);
      if (out.length && out[out.length - 1][1] === ch) out[out.length - 1][0] += t; else out.push([t, ch]);
    });
    return out;
  }
  function promptNode(segs) {
    return el("div", { "class": "prompt" }, segs.map(function (s) { return s[1] ? el("mark", { text: s[0] }) : s[0]; }));
  }
  function changes(base, ops) {
    var tokens = base.match(TOKEN) || [];
    return ops.map(function (op) { return tokens.slice(op[0], op[1]).join("").trim() + " → " + op[2].trim(); })
      .filter(function (s, i, all) { return s !== " → " && all.indexOf(s) === i; }).join(", ");
  }
  function bars(res, options) {
    var probs = res[0] || [];
    var box = el("div");
    options.forEach(function (o, k) {
      var p = probs[k];
      box.appendChild(el("div", { "class": "bar" + (res[1] === o ? " chosen" : "") }, [
        el("span", { "class": "lab", title: o, text: o }),
        el("span", { "class": "track" }, [el("span", { "class": "fill", style: "display:block;width:" + (p == null ? 0 : (100 * p).toFixed(1)) + "%" })]),
        el("span", { "class": "num", text: num(p, 2) })]));
    });
    return box;
  }
  function detail(c) {
    var refIndex = -1;
    c.v.forEach(function (v, i) { if (v.n === c.ref) refIndex = i; });
    var runs = RUNS.filter(function (r) { return c.r[String(r.i)]; });
    var grid = el("div", { "class": "variants" });
    var order = c.v.map(function (v, i) { return i; });
    order.sort(function (a, b) { return (b === refIndex) - (a === refIndex) || a - b; });  // the reference first
    order.forEach(function (i) {
      var v = c.v[i];
      var isRef = i === refIndex;
      var card = el("div", { "class": "variant" + (isRef ? " ref" : ""), "data-variant": v.n }, [
        el("div", { "class": "vname" }, [v.n.replace(/\|/g, " · ") + " ", isRef ? el("span", { "class": "refb", text: "reference" }) : null]),
        isRef ? el("div", { "class": "changes", text: "words that vary across variants highlighted" })
              : el("div", { "class": "changes", text: changes(c.base, v.d) || "same prompt as the reference" }),
        promptNode(isRef ? refSegments(c.base, c.v) : segments(c.base, v.d))]);
      var side = el("div", { "class": "sidebyside" });
      runs.forEach(function (r) {
        var res = c.r[String(r.i)][i];
        var box = el("div", { "class": "runres" });
        if (runs.length > 1) box.appendChild(el("div", { "class": "rname", text: r.short }));
        if (!res) { box.appendChild(el("div", { "class": "muted small", text: "not in this run" })); side.appendChild(box); return; }
        var ref = refIndex >= 0 ? c.r[String(r.i)][refIndex] : null;
        var flipped = !isRef && ref && res[3] && ref[3] && JSON.stringify(res[2]) !== JSON.stringify(ref[2]);
        box.appendChild(bars(res, DATA.options[res[5]] || []));
        box.appendChild(el("div", { "class": "small" }, [
          "answer ", el("b", { text: res[1] == null ? "—" : String(res[1]) }),
          " · outcome " + num(res[4]) + " ",
          !res[3] ? el("span", { "class": "inval", text: "invalid" }) : null,
          flipped ? el("span", { "class": "flip", text: "flip" }) : null]));
        if (res[6] != null) box.appendChild(el("details", null, [el("summary", { "class": "small", text: "generated text" }), el("div", { "class": "gen", text: res[6] })]));
        side.appendChild(box);
      });
      card.appendChild(side);
      grid.appendChild(card);
    });
    return el("div", null, [el("div", { "class": "small muted", text: "case " + c.c + " · " + key(c) + " · " + c.v.length + " variants" }), grid]);
  }

  head();
  draw();
  window.fairbenchCases = { data: DATA, state: state, draw: draw };
})();
