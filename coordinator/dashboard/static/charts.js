/*
 * charts.js - a small SVG line/bar chart renderer for the PocketTune
 * coordinator dashboard. Written for PocketTune; no dependencies, no build
 * step (plain ES2017, runs directly in the browser).
 *
 * API (window.PocketTuneCharts):
 *   render(container, spec)
 *       Replaces the contents of `container` with an <svg class="pt-chart">
 *       (viewBox 640 x spec.height|260, width 100%). Safe to call repeatedly on
 *       the same container (live updates): no listeners are attached.
 *       Returns the new <svg> element.
 *   renderAll(root = document)
 *       For every [data-chart] element under root (root included), parses the
 *       child <script type="application/json"> as the spec and renders it into
 *       a child div.pt-chart-canvas (created if absent); the script is kept.
 *       Called automatically on DOMContentLoaded. Returns the number rendered.
 *
 *   spec = {
 *     title?:  string,                     drawn top-left
 *     kind?:   "line" | "bar",             default "line"; bar = grouped bars,
 *                                          categorical x in order of appearance
 *     xLabel?, yLabel?: string,
 *     xType?:  "number" | "time",          time = Unix epoch seconds, local HH:MM
 *                                          (HH:MM:SS when the span < 10 minutes)
 *     yFormat?: "number" | "bytes" | "percent" | "seconds",
 *     yMin?:   number,                     forced lower bound of the y axis
 *     height?: number,                     viewBox height (default 260)
 *     series:  [{ name, points: [[x, y], ...], color? }]
 *   }
 *   y = null (or NaN/Infinity) skips the point and breaks the line there.
 *   Every plotted point is exactly one element with class "pt-point" (a circle
 *   for line charts, a rect for bar charts) carrying data-series, data-x and
 *   data-y (raw values) and a <title> "series: x → y".
 *   CSS hooks: pt-chart, pt-title, pt-legend, pt-grid, pt-axis, pt-axis-label,
 *   pt-series, pt-line, pt-point, pt-empty (inline presentation attributes give
 *   sensible defaults; any stylesheet rule overrides them).
 */
(function (global) {
  'use strict';

  var NS = 'http://www.w3.org/2000/svg';
  var WIDTH = 640;
  var DEFAULT_HEIGHT = 260;
  var PAD = 8;
  var FONT_SIZE = 11;
  var FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif';
  var PALETTE = ['#2563eb', '#ea580c', '#16a34a', '#dc2626', '#9333ea', '#0891b2'];
  var COLORS = {
    title: '#111827', text: '#4b5563', tick: '#6b7280', axis: '#9ca3af',
    grid: '#e5e7eb', zero: '#9ca3af', empty: '#9ca3af', legend: '#374151'
  };
  var TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
    7200, 10800, 21600, 43200, 86400, 172800, 604800];
  var clipSeq = 0;

  // ---------------------------------------------------------------- helpers

  function isNum(v) { return typeof v === 'number' && isFinite(v); }
  function clamp(v, lo, hi) { return v < lo ? lo : v > hi ? hi : v; }
  function rnd(v) { return Math.round(v * 10) / 10; }
  function crisp(v) { return Math.round(v) + 0.5; }
  function pad2(n) { return (n < 10 ? '0' : '') + n; }

  function textWidth(s, size) {
    return String(s).length * (size || FONT_SIZE) * 0.6;
  }

  function truncate(s, maxChars) {
    s = String(s);
    return s.length > maxChars ? s.slice(0, Math.max(1, maxChars - 1)) + '\u2026' : s;
  }

  function el(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v !== null && v !== undefined) node.setAttribute(k, String(v));
      });
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, attrs) {
    var t = el('text', Object.assign({ x: rnd(x), y: rnd(y) }, attrs || {}), parent);
    t.textContent = content;
    return t;
  }

  function line(parent, x1, y1, x2, y2, attrs) {
    return el('line', Object.assign({ x1: x1, y1: y1, x2: x2, y2: y2 }, attrs || {}), parent);
  }

  // ------------------------------------------------------------ formatting

  function decimalsFor(step) {
    if (!(step > 0) || !isFinite(step)) return 0;
    return clamp(Math.ceil(-Math.log10(step) - 1e-9), 0, 12);
  }

  function fixed(v, dec) {
    var s = v.toFixed(clamp(dec, 0, 20));
    return /^-0(\.0*)?$/.test(s) ? s.slice(1) : s;
  }

  function trimZeros(s) {
    return s.indexOf('.') >= 0 && s.indexOf('e') < 0 ? s.replace(/\.?0+$/, '') : s;
  }

  function expo(v, digits) {
    var parts = v.toExponential(digits).split('e');
    return trimZeros(parts[0]) + 'e' + parts[1].replace('+', '');
  }

  var SI = ['', 'k', 'M', 'G', 'T', 'P', 'E'];
  var BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB'];

  function thousandsIndex(absMax) {
    if (!(absMax >= 1000)) return 0;
    return clamp(Math.floor(Math.log10(absMax) / 3 + 1e-9), 0, 6);
  }

  // A compact, human readable rendering of one value (tooltips, categories).
  function formatNumber(v) {
    if (!isNum(v)) return String(v);
    var a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e21 || a < 1e-4) return expo(v, 3);
    if (a >= 1e4) {
      var i = thousandsIndex(a);
      return trimZeros(fixed(v / Math.pow(1000, i), 2)) + SI[i];
    }
    return trimZeros(v.toPrecision(5));
  }

  function formatBytes(v) {
    if (!isNum(v)) return String(v);
    var i = thousandsIndex(Math.abs(v));
    var x = v / Math.pow(1000, i);
    var dec = i === 0 ? 0 : Math.abs(x) < 100 ? 1 : 0;
    if (i === 0 && Math.abs(x) < 10 && x !== Math.round(x)) dec = 1;
    return trimZeros(fixed(x, dec)) + ' ' + BYTE_UNITS[i];
  }

  function formatPercent(v) {
    if (!isNum(v)) return String(v);
    return trimZeros(fixed(v * 100, 1)) + '%';
  }

  function formatSeconds(v) {
    if (!isNum(v)) return String(v);
    var a = Math.abs(v);
    if (a === 0) return '0 s';
    if (a < 1) return trimZeros(fixed(v * 1000, a < 0.01 ? 2 : 0)) + ' ms';
    if (a < 60) return trimZeros(fixed(v, 1)) + ' s';
    if (a < 3600) return trimZeros(fixed(v / 60, 1)) + ' min';
    return trimZeros(fixed(v / 3600, 1)) + ' h';
  }

  function valueFormatter(yFormat) {
    if (yFormat === 'bytes') return formatBytes;
    if (yFormat === 'percent') return formatPercent;
    if (yFormat === 'seconds') return formatSeconds;
    return formatNumber;
  }

  // Seconds axes are ticked in a display unit so that ticks land on round
  // numbers of that unit (e.g. 0, 2, 4 min rather than 0, 100, 200 s).
  function secondsUnit(absMax) {
    if (absMax >= 7200) return { div: 3600, name: 'h' };
    if (absMax >= 120) return { div: 60, name: 'min' };
    if (absMax < 1) return { div: 0.001, name: 'ms' };
    return { div: 1, name: 's' };
  }

  // Tick label formatter: all labels of one axis share unit and decimals.
  function tickFormatter(kind, ticks, step, unit) {
    var absMax = 0;
    ticks.forEach(function (t) { absMax = Math.max(absMax, Math.abs(t)); });
    if (!(step > 0)) {
      return valueFormatter(kind);
    }
    if (kind === 'percent') {
      var pdec = decimalsFor(step * 100);
      return function (v) { return fixed(v * 100, pdec) + '%'; };
    }
    if (kind === 'seconds') {
      var u = unit || { div: 1, name: 's' };
      var sdec = decimalsFor(step / u.div);
      return function (v) { return fixed(v / u.div, sdec) + ' ' + u.name; };
    }
    if (kind === 'bytes') {
      var bi = thousandsIndex(absMax);
      var bdiv = Math.pow(1000, bi);
      var bdec = decimalsFor(step / bdiv);
      return function (v) { return fixed(v / bdiv, bdec) + ' ' + BYTE_UNITS[bi]; };
    }
    if (absMax >= 1e21 || (absMax > 0 && step < 1e-6)) {
      return function (v) { return v === 0 ? '0' : expo(v, 2); };
    }
    if (absMax >= 1e4) {
      var ni = thousandsIndex(absMax);
      var ndiv = Math.pow(1000, ni);
      var ndec = decimalsFor(step / ndiv);
      return function (v) { return fixed(v / ndiv, ndec) + SI[ni]; };
    }
    var dec = decimalsFor(step);
    return function (v) { return fixed(v, dec); };
  }

  function formatTime(t, withSeconds, withDate) {
    var d = new Date(t * 1000);
    if (isNaN(d.getTime())) return String(t);
    var s = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    if (withSeconds) s += ':' + pad2(d.getSeconds());
    if (withDate) {
      s = d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + s;
    }
    return s;
  }

  function formatDay(t, withYear) {
    var d = new Date(t * 1000);
    if (withYear) return d.getFullYear() + '-' + pad2(d.getMonth() + 1);
    return pad2(d.getMonth() + 1) + '-' + pad2(d.getDate());
  }

  // ------------------------------------------------------------------ scales

  function niceStep(span, count) {
    var raw = span / Math.max(1, count);
    if (!(raw > 0) || !isFinite(raw)) return 0;
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var n = raw / mag;
    var f = n >= 7.07 ? 10 : n >= 3.16 ? 5 : n >= 1.41 ? 2 : 1;
    return f * mag;
  }

  // Ticks on multiples of a 1/2/5 x 10^k step; the domain is widened to them.
  function niceTicks(lo, hi, count, minStep) {
    var step = niceStep(hi - lo, count);
    if (minStep && step > 0 && step < minStep) step = minStep;
    if (!step) return { lo: lo, hi: hi, step: 0, ticks: lo === hi ? [lo] : [lo, hi] };
    var dec = decimalsFor(step);
    var round = function (v) { return parseFloat(v.toFixed(dec)); };
    var k0 = Math.floor(lo / step);
    var k1 = Math.ceil(hi / step);
    if (!isFinite(k0) || !isFinite(k1) || k1 - k0 > 60) {
      return { lo: lo, hi: hi, step: 0, ticks: [lo, hi] };
    }
    var ticks = [];
    for (var k = k0; k <= k1; k++) ticks.push(round(k * step));
    return { lo: Math.min(lo, ticks[0]), hi: Math.max(hi, ticks[ticks.length - 1]), step: step, ticks: ticks };
  }

  // Linear map that stays finite even for spans near Number.MAX_VALUE.
  function linear(d0, d1, r0, r1) {
    var den = d1 / 2 - d0 / 2;
    if (!(den > 0) || !isFinite(den)) {
      return function () { return (r0 + r1) / 2; };
    }
    return function (v) { return r0 + (r1 - r0) * ((v / 2 - d0 / 2) / den); };
  }

  function yAxisModel(values, yMin, includeZero, yFormat, plotH) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (v < lo) lo = v; if (v > hi) hi = v; });
    var forced = isNum(yMin) ? yMin : null;
    if (!values.length) { lo = forced !== null ? forced : 0; hi = lo + 1; }
    if (includeZero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    if (forced !== null) {
      lo = forced;
      if (!(hi > lo)) hi = lo + (Math.abs(lo) * 0.1 || 1);
    }
    // All equal (or equal up to float precision): pad around the value.
    if (!(hi - lo > Math.max(Math.abs(lo), Math.abs(hi)) * 1e-9)) {
      var p = Math.abs(lo) * 0.1;
      if (!(p > 0) || lo - p === lo) p = Math.max(1, Math.abs(lo) * 1e-6);
      lo -= p; hi += p;
    }
    var unit = yFormat === 'seconds' ? secondsUnit(Math.max(Math.abs(lo), Math.abs(hi))) : null;
    var div = unit ? unit.div : 1;
    var count = clamp(Math.floor(plotH / 36), 2, 6);
    var nt = niceTicks(lo / div, hi / div, count);
    var ticks = nt.ticks.map(function (t) { return t * div; });
    var dlo = nt.lo * div, dhi = nt.hi * div;
    if (forced !== null) {
      dlo = forced;
      ticks = ticks.filter(function (t) { return t >= forced - Math.abs(nt.step * div) * 1e-9; });
    }
    return {
      lo: dlo, hi: dhi, ticks: ticks,
      format: tickFormatter(yFormat, ticks, nt.step * div, unit)
    };
  }

  function numberXTicks(lo, hi, plotW, integer) {
    var eps = (hi - lo) * 1e-9;
    for (var target = 8; target >= 2; target--) {
      var nt = niceTicks(lo, hi, target, integer ? 1 : 0);
      var ticks = nt.ticks.filter(function (t) { return t >= lo - eps && t <= hi + eps; });
      if (!ticks.length) continue;
      var fmt = tickFormatter('number', ticks, nt.step);
      var labels = ticks.map(fmt);
      var maxW = 0;
      labels.forEach(function (s) { maxW = Math.max(maxW, textWidth(s)); });
      if (ticks.length <= 9 && ticks.length * (maxW + 14) <= plotW) {
        return { ticks: ticks, labels: labels };
      }
    }
    return { ticks: [lo, hi], labels: [formatNumber(lo), formatNumber(hi)] };
  }

  function timeLabelTemplate(span) {
    return span < 600 ? '00:00:00' : span >= 2 * 86400 ? '0000-00' : '00:00';
  }

  function timeXTicks(lo, hi, plotW) {
    var span = hi - lo;
    var withSec = span < 600;
    var yearly = span >= 365 * 86400;
    var labelW = textWidth(timeLabelTemplate(span)) + 18;
    var maxTicks = clamp(Math.floor(plotW / labelW), 2, 7);
    var step = 0;
    for (var i = 0; i < TIME_STEPS.length; i++) {
      if (span / TIME_STEPS[i] <= maxTicks - 1) { step = TIME_STEPS[i]; break; }
    }
    if (!step) step = Math.max(1, niceStep(span / 86400, maxTicks - 1)) * 86400;
    var daily = step >= 86400;
    var tz = new Date(lo * 1000).getTimezoneOffset() * 60;
    var first = Math.ceil((lo - tz) / step) * step + tz;
    var ticks = [], labels = [];
    for (var t = first, n = 0; t <= hi + 1e-9 && n < 60; t += step, n++) {
      ticks.push(t);
      labels.push(daily ? formatDay(t, yearly) : formatTime(t, withSec, false));
    }
    return { ticks: ticks, labels: labels };
  }

  // ---------------------------------------------------------------- data prep

  function normalizeSeries(spec) {
    var raw = Array.isArray(spec.series) ? spec.series : [];
    return raw.map(function (s, i) {
      s = s && typeof s === 'object' ? s : {};
      var name = s.name === null || s.name === undefined ? 'series ' + (i + 1) : String(s.name);
      var color = typeof s.color === 'string' && s.color.trim() && s.color.length < 100
        ? s.color.trim() : PALETTE[i % PALETTE.length];
      // Past the palette, colours repeat; a dash pattern keeps lines apart.
      var dash = !s.color && i >= PALETTE.length ? (i < 2 * PALETTE.length ? '6 3' : '2 3') : null;
      var points = [];
      (Array.isArray(s.points) ? s.points : []).forEach(function (p) {
        if (Array.isArray(p)) points.push([p[0], p[1]]);
        else if (p && typeof p === 'object') points.push([p.x, p.y]);
      });
      return { name: name, color: color, dash: dash, points: points };
    });
  }

  function validCategory(x) {
    if (typeof x === 'number') return isFinite(x);
    return typeof x === 'string' || typeof x === 'boolean';
  }

  // ------------------------------------------------------------------ drawing

  function drawHeader(svg, W, title, series) {
    var bottom = 0;
    var titleW = 0;
    if (title) {
      var maxChars = Math.floor((W - 2 * PAD) / (12 * 0.6));
      var shown = truncate(title, maxChars);
      text(svg, PAD, PAD + 12, shown, {
        'class': 'pt-title', fill: COLORS.title, 'font-size': 12, 'font-weight': 600
      });
      titleW = textWidth(shown, 12) + 24;
      bottom = PAD + 16;
    }
    if (series.length > 1) {
      var gap = 14;
      var maxRow = W - 2 * PAD;
      var items = series.map(function (s) {
        var label = truncate(s.name, 32);
        return { s: s, label: label, w: 14 + textWidth(label) };
      });
      var total = items.reduce(function (acc, it) { return acc + it.w; }, 0) + gap * (items.length - 1);
      var rows = [];
      if (title && total <= maxRow - titleW) {
        rows.push({ items: items, w: total, y: PAD + 12 });
      } else {
        var y = title ? bottom + 14 : PAD + 12;
        var cur = { items: [], w: 0, y: y };
        items.forEach(function (it) {
          var need = cur.items.length ? cur.w + gap + it.w : it.w;
          if (cur.items.length && need > maxRow) {
            rows.push(cur);
            y += 16;
            cur = { items: [it], w: it.w, y: y };
          } else {
            cur.items.push(it);
            cur.w = need;
          }
        });
        rows.push(cur);
      }
      var g = el('g', { 'class': 'pt-legend', fill: COLORS.legend }, svg);
      rows.forEach(function (row) {
        var x = W - PAD - row.w;
        row.items.forEach(function (it) {
          var item = el('g', { 'class': 'pt-legend-item', 'data-series': it.s.name }, g);
          el('rect', {
            'class': 'pt-swatch', x: rnd(x), y: row.y - 9, width: 10, height: 10, rx: 2,
            fill: it.s.color
          }, item);
          text(item, x + 14, row.y, it.label);
          if (it.label !== it.s.name) el('title', null, item).textContent = it.s.name;
          x += it.w + gap;
        });
      });
      bottom = rows[rows.length - 1].y + 4;
    }
    return bottom;
  }

  function build(spec) {
    spec = spec && typeof spec === 'object' ? spec : {};
    var kind = spec.kind === 'bar' ? 'bar' : 'line';
    var xType = spec.xType === 'time' ? 'time' : 'number';
    var yFormat = ['bytes', 'percent', 'seconds'].indexOf(spec.yFormat) >= 0 ? spec.yFormat : 'number';
    var W = WIDTH;
    var H = isNum(spec.height) && spec.height >= 100 && spec.height <= 4000
      ? Math.round(spec.height) : DEFAULT_HEIGHT;
    var title = spec.title === null || spec.title === undefined ? '' : String(spec.title);
    var xLabel = spec.xLabel ? String(spec.xLabel) : '';
    var yLabel = spec.yLabel ? String(spec.yLabel) : '';
    var series = normalizeSeries(spec);
    var fy = valueFormatter(yFormat);

    var svg = el('svg', {
      'class': 'pt-chart', viewBox: '0 0 ' + W + ' ' + H, width: '100%',
      preserveAspectRatio: 'xMidYMid meet', role: 'img', 'aria-label': title || 'chart',
      style: 'width:100%;height:auto;display:block', 'font-family': FONT, 'font-size': FONT_SIZE
    });

    // ---- data
    var cats = [], catIndex = new Map(), xsAll = [], yVals = [];
    var prepared = series.map(function (s) {
      var plotted = [], segs = [];
      if (kind === 'bar') {
        s.points.forEach(function (p) {
          if (!validCategory(p[0])) return;
          var key = typeof p[0] + ':' + String(p[0]);
          if (!catIndex.has(key)) { catIndex.set(key, cats.length); cats.push(p[0]); }
          if (isNum(p[1])) plotted.push({ x: p[0], y: p[1], c: catIndex.get(key) });
        });
      } else {
        var pts = [];
        s.points.forEach(function (p, i) { if (isNum(p[0])) pts.push({ x: p[0], y: p[1], i: i }); });
        pts.sort(function (a, b) { return a.x - b.x || a.i - b.i; });
        var cur = null;
        pts.forEach(function (p) {
          if (isNum(p.y)) {
            if (!cur) { cur = []; segs.push(cur); }
            cur.push(p);
            plotted.push(p);
          } else {
            cur = null;
          }
        });
      }
      plotted.forEach(function (p) { yVals.push(p.y); xsAll.push(p.x); });
      return { name: s.name, color: s.color, dash: s.dash, plotted: plotted, segs: segs };
    });
    var hasData = yVals.length > 0;

    // ---- vertical layout
    var headerBottom = drawHeader(svg, W, title, series);
    var plotTop = Math.max(headerBottom + 12, 12);
    var plotBottom = H - PAD - (xLabel ? 16 : 0) - 18;
    var plotH = Math.max(20, plotBottom - plotTop);
    plotBottom = plotTop + plotH;

    var grid = el('g', { 'class': 'pt-grid', stroke: COLORS.grid, 'stroke-width': 1, 'shape-rendering': 'crispEdges' }, svg);
    var axis = el('g', { 'class': 'pt-axis', fill: COLORS.tick }, svg);

    function drawAxisLabels(plotLeft, plotRight) {
      if (yLabel) {
        var cy = (plotTop + plotBottom) / 2;
        text(axis, 0, 0, truncate(yLabel, Math.floor(plotH / 6.6)), {
          'class': 'pt-axis-label', fill: COLORS.text, 'text-anchor': 'middle',
          transform: 'translate(' + (PAD + 10) + ',' + rnd(cy) + ') rotate(-90)'
        });
      }
      if (xLabel) {
        text(axis, (plotLeft + plotRight) / 2, H - PAD, truncate(xLabel, 90), {
          'class': 'pt-axis-label', fill: COLORS.text, 'text-anchor': 'middle'
        });
      }
    }

    function drawFrame(plotLeft, plotRight) {
      var g = el('g', { stroke: COLORS.axis, 'stroke-width': 1, 'shape-rendering': 'crispEdges' }, axis);
      line(g, crisp(plotLeft), plotTop, crisp(plotLeft), plotBottom + 0.5, { 'class': 'pt-axis-line' });
      line(g, plotLeft, crisp(plotBottom), plotRight, crisp(plotBottom), { 'class': 'pt-axis-line' });
    }

    if (!hasData) {
      var eLeft = (yLabel ? 26 : PAD) + 24, eRight = W - 16;
      drawFrame(eLeft, eRight);
      drawAxisLabels(eLeft, eRight);
      text(svg, (eLeft + eRight) / 2, (plotTop + plotBottom) / 2 + 4, 'no data yet', {
        'class': 'pt-empty', fill: COLORS.empty, 'font-size': 12, 'text-anchor': 'middle'
      });
      return svg;
    }

    // ---- y axis and horizontal layout
    var yModel = yAxisModel(yVals, spec.yMin, kind === 'bar', yFormat, plotH);
    var yLabels = yModel.ticks.map(yModel.format);
    var maxYW = 0;
    yLabels.forEach(function (s) { maxYW = Math.max(maxYW, textWidth(s)); });
    var plotLeft = Math.round((yLabel ? 26 : PAD) + maxYW + 8);

    var xLo = 0, xHi = 1, xTicks = null, fx;
    var plotRight = W - 16;
    if (kind === 'line') {
      xLo = Infinity; xHi = -Infinity;
      xsAll.forEach(function (x) { if (x < xLo) xLo = x; if (x > xHi) xHi = x; });
      if (xType === 'time') {
        if (xHi - xLo < 10) {
          var mid = xLo / 2 + xHi / 2, half = xHi === xLo ? 60 : 5;
          xLo = mid - half; xHi = mid + half;
        }
        var withDate = xHi - xLo >= 86400;
        fx = function (x) { return formatTime(x, true, withDate); };
        plotRight = W - Math.max(16, Math.ceil(textWidth(timeLabelTemplate(xHi - xLo)) / 2) + 6);
      } else {
        if (!(xHi > xLo)) {
          var pad = Math.max(1, Math.abs(xLo) * 1e-3);
          xLo -= pad; xHi += pad;
        }
        fx = formatNumber;
        plotRight = W - Math.max(16, Math.ceil(Math.max(textWidth(formatNumber(xLo)), textWidth(formatNumber(xHi))) / 2) + 6);
      }
    }
    var plotW = Math.max(20, plotRight - plotLeft);
    plotRight = plotLeft + plotW;

    var ys = linear(yModel.lo, yModel.hi, plotBottom, plotTop);

    // ---- grid + y ticks
    yModel.ticks.forEach(function (t, i) {
      var y = ys(t);
      if (y < plotTop - 0.5 || y > plotBottom + 0.5) return;
      if (Math.abs(y - plotBottom) > 0.5) line(grid, plotLeft, crisp(y), plotRight, crisp(y));
      text(axis, plotLeft - 6, y + 4, yLabels[i], { 'text-anchor': 'end' });
    });
    if (yModel.lo < 0 && yModel.hi > 0) {
      line(grid, plotLeft, crisp(ys(0)), plotRight, crisp(ys(0)), { 'class': 'pt-zero', stroke: COLORS.zero });
    }

    var clipId = 'pt-clip-' + (++clipSeq);
    var clip = el('clipPath', { id: clipId }, el('defs', null, svg));
    el('rect', { x: plotLeft - 6, y: plotTop - 6, width: plotW + 12, height: plotH + 12 }, clip);

    if (kind === 'line') {
      var xs = linear(xLo, xHi, plotLeft, plotRight);
      var integer = xType === 'number' && xsAll.every(function (x) { return x === Math.round(x); });
      xTicks = xType === 'time' ? timeXTicks(xLo, xHi, plotW) : numberXTicks(xLo, xHi, plotW, integer);
      var tickG = el('g', { stroke: COLORS.axis, 'shape-rendering': 'crispEdges' }, axis);
      xTicks.ticks.forEach(function (t, i) {
        var x = xs(t);
        if (Math.abs(x - plotLeft) > 0.5) line(grid, crisp(x), plotTop, crisp(x), plotBottom);
        line(tickG, crisp(x), plotBottom, crisp(x), plotBottom + 4);
        var w = textWidth(xTicks.labels[i]);
        var anchor = x + w / 2 > W - 2 ? 'end' : 'middle';
        text(axis, anchor === 'end' ? W - 2 : x, plotBottom + 15, xTicks.labels[i], { 'text-anchor': anchor });
      });
      drawFrame(plotLeft, plotRight);

      var linesG = el('g', {
        'class': 'pt-lines', 'clip-path': 'url(#' + clipId + ')', fill: 'none', 'stroke-width': 2,
        'stroke-linejoin': 'round', 'stroke-linecap': 'round'
      }, svg);
      prepared.forEach(function (s) {
        if (!s.segs.length) return;
        var g = el('g', { 'class': 'pt-series', 'data-series': s.name, stroke: s.color, 'stroke-dasharray': s.dash }, linesG);
        s.segs.forEach(function (seg) {
          el('polyline', {
            'class': 'pt-line',
            points: seg.map(function (p) { return rnd(xs(p.x)) + ',' + rnd(ys(p.y)); }).join(' ')
          }, g);
        });
      });
      var pointsG = el('g', { 'class': 'pt-points', 'clip-path': 'url(#' + clipId + ')' }, svg);
      prepared.forEach(function (s) {
        var density = plotW / Math.max(1, s.plotted.length);
        var r = density < 5 ? 1.5 : density < 10 ? 2.25 : 3;
        s.plotted.forEach(function (p) {
          var c = el('circle', {
            'class': 'pt-point', cx: rnd(xs(p.x)), cy: rnd(ys(p.y)), r: r, fill: s.color,
            stroke: '#ffffff', 'stroke-width': 1,
            'data-series': s.name, 'data-x': String(p.x), 'data-y': String(p.y)
          }, pointsG);
          el('title', null, c).textContent = s.name + ': ' + fx(p.x) + ' \u2192 ' + fy(p.y);
        });
      });
    } else {
      // ---- bars: categorical x in order of first appearance
      var nums = cats.filter(isNum);
      var catSpan = nums.length ? Math.max.apply(null, nums) - Math.min.apply(null, nums) : 0;
      var catLabel = function (x, full) {
        if (typeof x === 'number') {
          if (xType === 'time') return full ? formatTime(x, true, catSpan >= 86400) : formatTime(x, catSpan < 600, false);
          return formatNumber(x);
        }
        return String(x);
      };
      var band = plotW / Math.max(1, cats.length);
      var labels = cats.map(function (x) { return truncate(catLabel(x, false), 16); });
      var maxLW = 0;
      labels.forEach(function (s) { maxLW = Math.max(maxLW, textWidth(s)); });
      var every = Math.max(1, Math.ceil((maxLW + 8) / band));
      labels.forEach(function (s, i) {
        if (i % every) return;
        text(axis, plotLeft + band * (i + 0.5), plotBottom + 15, s, { 'text-anchor': 'middle' });
      });
      drawFrame(plotLeft, plotRight);

      var active = prepared.filter(function (s) { return s.plotted.length; });
      var bw = Math.max(1, Math.min(36, band * 0.8 / Math.max(1, active.length)));
      var groupW = bw * active.length;
      var gapW = active.length > 1 && bw >= 6 ? 1.5 : bw >= 4 ? 0.5 : 0;
      var base = ys(clamp(0, yModel.lo, yModel.hi));
      var barsG = el('g', { 'class': 'pt-bars', 'clip-path': 'url(#' + clipId + ')' }, svg);
      active.forEach(function (s, j) {
        var g = el('g', { 'class': 'pt-series', 'data-series': s.name, fill: s.color }, barsG);
        s.plotted.forEach(function (p) {
          var x = plotLeft + band * p.c + (band - groupW) / 2 + j * bw + gapW / 2;
          var y = clamp(ys(p.y), plotTop - 6, plotBottom + 6);
          var rect = el('rect', {
            'class': 'pt-point', x: rnd(x), y: rnd(Math.min(y, base)),
            width: rnd(Math.max(0.5, bw - gapW)), height: rnd(Math.abs(base - y)),
            'data-series': s.name, 'data-x': String(p.x), 'data-y': String(p.y)
          }, g);
          el('title', null, rect).textContent = s.name + ': ' + catLabel(p.x, true) + ' \u2192 ' + fy(p.y);
        });
      });
    }
    drawAxisLabels(plotLeft, plotRight);
    return svg;
  }

  function errorSvg(message) {
    var svg = el('svg', {
      'class': 'pt-chart', viewBox: '0 0 ' + WIDTH + ' 60', width: '100%',
      style: 'width:100%;height:auto;display:block', 'font-family': FONT, 'font-size': FONT_SIZE
    });
    text(svg, WIDTH / 2, 34, message, { 'class': 'pt-empty', fill: COLORS.empty, 'text-anchor': 'middle' });
    return svg;
  }

  // --------------------------------------------------------------- public API

  function render(container, spec) {
    if (!container || typeof container.appendChild !== 'function') {
      throw new TypeError('PocketTuneCharts.render: container must be a DOM element');
    }
    if (typeof spec === 'string') {
      try { spec = JSON.parse(spec); } catch (e) { spec = null; }
    }
    var svg;
    try {
      svg = build(spec);
    } catch (e) {
      if (global.console) global.console.error('PocketTuneCharts: could not draw chart', e);
      svg = errorSvg('chart could not be drawn');
    }
    while (container.firstChild) container.removeChild(container.firstChild);
    container.appendChild(svg);
    return svg;
  }

  function renderAll(root) {
    root = root || document;
    var nodes = [];
    if (root.nodeType === 1 && root.matches('[data-chart]')) nodes.push(root);
    Array.prototype.forEach.call(root.querySelectorAll('[data-chart]'), function (n) { nodes.push(n); });
    var count = 0;
    nodes.forEach(function (node) {
      var script = null, canvas = null;
      Array.prototype.forEach.call(node.children, function (c) {
        if (!script && c.tagName.toLowerCase() === 'script' &&
            (c.getAttribute('type') || '').toLowerCase() === 'application/json') {
          script = c;
        } else if (!canvas && c.classList.contains('pt-chart-canvas')) {
          canvas = c;
        }
      });
      if (!script) return;
      var spec;
      try {
        spec = JSON.parse(script.textContent || '{}');
      } catch (e) {
        if (global.console) global.console.warn('PocketTuneCharts: invalid chart JSON', e);
        spec = null;
      }
      if (!canvas) {
        canvas = document.createElement('div');
        canvas.className = 'pt-chart-canvas';
        node.appendChild(canvas);
      }
      if (spec === null) {
        while (canvas.firstChild) canvas.removeChild(canvas.firstChild);
        canvas.appendChild(errorSvg('invalid chart data'));
      } else {
        render(canvas, spec);
      }
      count++;
    });
    return count;
  }

  global.PocketTuneCharts = { render: render, renderAll: renderAll };

  if (typeof document !== 'undefined') {
    if (document.readyState === 'loading') {
      document.addEventListener('DOMContentLoaded', function () { renderAll(document); });
    } else {
      renderAll(document);
    }
  }
})(typeof window !== 'undefined' ? window : this);
