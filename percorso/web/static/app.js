// percorso dashboard: draws the charts whose data the server put in JSON script blocks, and
// exports the journey map as PNG. No inline scripts anywhere (see the Content-Security-Policy).
(function () {
  "use strict";
  var PALETTE = ["#2f6fdf", "#12805c", "#b54708", "#7a5af8", "#c4320a", "#0e9384", "#667085", "#dd2590"];

  // Numbers as the page's language writes them (8.000 in Italian, 8,000 in English), on axes and
  // in tooltips as in the tables beside the charts.
  var LOCALE = (document.documentElement.lang || "en") === "it" ? "it-IT" : "en-GB";
  function num(v) {
    return typeof v === "number" ? v.toLocaleString(LOCALE, { maximumFractionDigits: 1 }) : String(v);
  }

  function localised(option) {
    [].concat(option.xAxis || [], option.yAxis || []).forEach(function (axis) {
      if (axis.type !== "value") return;
      axis.axisLabel = axis.axisLabel || {};
      if (!axis.axisLabel.formatter) axis.axisLabel.formatter = function (v) { return num(v); };
    });
    if (option.tooltip && !option.tooltip.formatter && !option.tooltip.valueFormatter) {
      option.tooltip.valueFormatter = function (v) { return num(v); };
    }
    return option;
  }

  function data(el) {
    var source = document.getElementById(el.getAttribute("data-source"));
    return source ? JSON.parse(source.textContent) : null;
  }

  // Tooltips are drawn on the canvas (richText), never as HTML: labels are customer data.
  function base() {
    return { color: PALETTE, tooltip: { trigger: "axis", renderMode: "richText" }, grid: { left: 48, right: 16, top: 24, bottom: 40 } };
  }

  var builders = {
    bar: function (d) {
      var o = base();
      o.xAxis = { type: "category", data: d.labels, axisLabel: { interval: 0, width: 90, overflow: "truncate" } };
      o.yAxis = { type: "value" };
      o.series = [{ type: "bar", data: d.values, label: { show: true, position: "top" } }];
      return o;
    },
    grouped: function (d) {
      var o = base();
      o.legend = { top: 0, type: "scroll", data: d.series.map(function (s) { return s.name; }) };
      o.grid.top = 48;
      o.xAxis = { type: "category", data: d.labels, axisLabel: { interval: 0, width: 90, overflow: "truncate" } };
      o.yAxis = { type: "value" };
      o.series = d.series.map(function (s) { return { name: s.name, type: "bar", data: s.data }; });
      return o;
    },
    stacked: function (d) {
      var o = base();
      o.legend = { top: 0, data: d.names };
      o.grid.top = 40;
      o.xAxis = { type: "category", data: d.periods };
      o.yAxis = { type: "value" };
      o.series = d.series.map(function (key, i) {
        return { name: d.names[i], type: "line", stack: "all", areaStyle: {}, symbol: "none",
                 data: d.rows.map(function (r) { return r[key] || 0; }) };
      });
      return o;
    },
    emotion: function (d) {
      var o = base();
      o.grid = { left: 8, right: 8, top: 16, bottom: 8, containLabel: false };
      o.xAxis = { type: "category", data: d.labels, show: false, boundaryGap: true };
      o.yAxis = { type: "value", min: -1, max: 1, show: false };
      o.legend = d.before ? { top: 0, right: 8, data: [d.now, d.then] } : undefined;
      o.series = [{
        name: d.now, type: "line", smooth: true, connectNulls: false, symbolSize: 10,
        data: d.scores.map(function (s, i) { return { value: s, itemStyle: { opacity: d.evidence[i] === "low" ? 0.5 : 1 } }; }),
        markLine: { silent: true, symbol: "none", label: { show: false }, lineStyle: { type: "dashed", color: "#98a2b3" }, data: [{ yAxis: 0 }] },
        label: { show: true, formatter: function (p) { return p.value == null ? "" : (p.value > 0 ? "+" : "") + Number(p.value).toFixed(2); } }
      }];
      if (d.before) {
        o.series.push({ name: d.then, type: "line", smooth: true, symbolSize: 6, lineStyle: { type: "dashed" }, data: d.before });
      }
      return o;
    },
    funnel: function (d) {
      var o = base();
      o.tooltip.trigger = "item";
      o.xAxis = { type: "category", data: d.labels, axisLabel: { interval: 0, width: 110, overflow: "truncate" } };
      o.yAxis = { type: "value" };
      o.series = [
        // Each bar: the contacts who reached the step, and above them, faint, those of the step
        // before who did not (in progress, excluded or dropped): the two add up to the step before.
        { name: d.names[0], type: "bar", stack: "f", data: d.converted, label: { show: true, position: "inside" } },
        { name: d.names[1], type: "bar", stack: "f", data: d.lost, itemStyle: { color: "#fda29b", opacity: 0.55 } }
      ];
      o.legend = { top: 0, data: d.names };
      o.grid.top = 36;
      return o;
    },
    heat: function (d) {
      // Clicks over the page: columns are shares of the page's width, rows 50 px bands; drawn
      // transparent over the page shown beneath, so only the hot cells colour it.
      var max = 1;
      d.cells.forEach(function (c) { if (c.clicks > max) max = c.clicks; });
      var cols = [], rows = [];
      for (var i = 0; i < d.columns; i++) cols.push(i);
      for (var j = 0; j < d.rows; j++) rows.push(j);
      return {
        animation: false,
        tooltip: { renderMode: "richText", formatter: function (p) { return num(p.value[2]) + " " + (d.unit || "clicks"); } },
        grid: { left: 0, right: 0, top: 0, bottom: 0 },
        xAxis: { type: "category", data: cols, show: false },
        yAxis: { type: "category", data: rows, show: false, inverse: true },
        visualMap: { show: false, min: 0, max: max, inRange: { color: ["rgba(255,255,0,0.25)", "rgba(255,140,0,0.55)", "rgba(220,0,0,0.75)"] } },
        series: [{ type: "heatmap", data: d.cells.map(function (c) { return [c.column, c.row, c.clicks]; }) }]
      };
    },
    histogram: function (d) {
      var o = base();
      o.xAxis = { type: "category", data: d.labels };
      o.yAxis = { type: "value" };
      o.series = [{ type: "bar", data: d.values, barCategoryGap: "10%" }];
      return o;
    },
    line: function (d) {
      var o = base();
      o.xAxis = { type: "category", data: d.labels };
      o.yAxis = d.percent === false ? { type: "value", scale: true } :
        { type: "value", axisLabel: { formatter: function (v) { return Math.round(v * 100) + "%"; } } };
      o.series = [{ type: "line", data: d.values, smooth: true, name: (d.names || [])[0] }];
      if (d.provisional) {
        // periods still open: a dashed line, as their numbers may still grow
        o.series.push({ type: "line", data: d.provisional, smooth: true, name: (d.names || [])[1],
                        lineStyle: { type: "dashed" }, itemStyle: { opacity: 0.6 } });
        o.legend = { bottom: 0 };
      }
      return o;
    },
    // Paths: labels are cut to their column's width with an ellipsis (the tooltip has the whole
    // name) and hidden where they would overlap; (other) and (end) are grey, not a colour of their own.
    sankey: function (d, el) {
      var labels = {};
      d.nodes.forEach(function (n) { labels[n.id] = n.text || n.label; });
      var measure = d.measure || "transitions";
      var columns = 1;
      d.nodes.forEach(function (n) { columns = Math.max(columns, Math.abs(n.step) + 1); });
      var width = Math.max(60, Math.floor(((el && el.clientWidth) || 900) / (columns + 1)) - 24);
      var grey = { other: "#d0d5dd", end: "#98a2b3" };
      return {
        tooltip: { trigger: "item", renderMode: "richText",
                   formatter: function (p) {
                     if (p.dataType === "edge") return labels[p.data.source] + " → " + labels[p.data.target] + ": " + num(p.data.value);
                     return labels[p.name] || p.name;
                   } },
        series: [{ type: "sankey", left: 8, right: width + 16, nodeAlign: "left", nodeGap: 10,
                   emphasis: { focus: "adjacency" }, labelLayout: { hideOverlap: true },
                   data: d.nodes.map(function (n) {
                     var node = { name: n.id };
                     if (grey[n.kind]) node.itemStyle = { color: grey[n.kind] };
                     return node;
                   }),
                   links: d.links.map(function (l) { return { source: l.source, target: l.target, value: l[measure] }; }),
                   lineStyle: { color: "gradient", curveness: 0.5, opacity: 0.35 },
                   label: { fontSize: 11, width: width, overflow: "truncate", ellipsis: "…",
                            formatter: function (p) { return labels[p.name] || p.name; } } }]
      };
    },
    graph: function (d) {
      return {
        tooltip: { trigger: "item", renderMode: "richText" },
        series: [{ type: "graph", layout: "none", roam: true, symbolSize: [150, 44], symbol: "roundRect",
                   label: { show: true, fontSize: 11 }, edgeSymbol: ["none", "arrow"], edgeLabel: { show: true, fontSize: 10, formatter: "{c}" },
                   data: d.nodes, links: d.links, itemStyle: { color: "#eef4ff", borderColor: "#2f6fdf" },
                   lineStyle: { color: "#98a2b3", width: 1.5 } }]
      };
    },
    // An automation's steps: the server lays them out (x/y), we only draw. Text is set as
    // plain text from data (never HTML): step names come from definitions people edit. Edge
    // counts sit on invisible points at each edge's middle, so they read level, not along the line.
    flow: function (d) {
      var look = {
        wait: { color: "#f2f4f7", borderColor: "#667085" },
        decision: { color: "#f4f3ff", borderColor: "#7a5af8" },
        action: { color: "#eef4ff", borderColor: "#2f6fdf" },
        exit: { color: "#fef3f2", borderColor: "#c4320a" },
        end: { color: "#fff", borderColor: "#98a2b3" }
      };
      var text = function (p) { return (p.data && p.data.text) || ""; };
      var at = {};
      var nodes = d.nodes.map(function (n) {
        at[n.id] = n;
        return { name: n.id, x: n.x, y: n.y, value: n.entered, text: n.text,
                 symbolSize: n.group === "end" ? [90, 30] : [180, 54], itemStyle: look[n.group] || look.action };
      });
      d.links.forEach(function (l, i) {
        var a = at[l.source], b = at[l.target];
        if (!a || !b || !l.text) return;
        var loop = l.loop ? 70 : 0;
        nodes.push({ name: "edge-label-" + i, x: (a.x + b.x) / 2 + loop, y: (a.y + b.y) / 2, text: l.text,
                     symbolSize: 1, itemStyle: { color: "transparent", borderWidth: 0 }, tooltip: { show: false },
                     label: { show: true, fontSize: 10, lineHeight: 12, color: "#475467", backgroundColor: "#fff",
                              padding: [1, 3] } });
      });
      return {
        tooltip: { trigger: "item", renderMode: "richText", formatter: text },
        series: [{
          type: "graph", layout: "none", roam: true, symbol: "roundRect",
          label: { show: true, fontSize: 11, lineHeight: 15, formatter: text },
          edgeSymbol: ["none", "arrow"], edgeSymbolSize: 8,
          data: nodes,
          links: d.links.map(function (l) {
            return { source: l.source, target: l.target, text: l.text,
                     lineStyle: { color: "#98a2b3", width: 1 + 4 * (l.share || 0), type: l.loop ? "dashed" : "solid",
                                  curveness: l.loop ? 0.4 : 0 } };
          })
        }]
      };
    }
  };

  function draw(root) {
    if (!window.echarts) return;
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      var build = builders[el.getAttribute("data-chart")];
      var d = data(el);
      if (!build || !d) return;
      var chart = window.echarts.getInstanceByDom(el) || window.echarts.init(el, null, { renderer: "svg" });
      chart.setOption(localised(build(d, el)), true);
      el.setAttribute("data-drawn", "1");
      chart.on("click", function (p) {
        var link = el.getAttribute("data-click");
        var last = Number(el.getAttribute("data-click-max") || Infinity);
        // a bar lists who dropped after its step; its faint top, who dropped after the step before
        var step = p.dataIndex != null ? p.dataIndex + 1 - (p.seriesIndex === 1 ? 1 : 0) : 0;
        if (link && step >= 1 && step <= last) window.location.href = link.replace("{step}", String(step));
      });
    });
  }

  // PNG export: the server's SVG of the map, rasterised at twice its size on a canvas.
  function exportPng(event) {
    var a = event.target.closest("[data-export=png]");
    if (!a) return;
    event.preventDefault();
    fetch(a.href, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("export failed: " + r.status);
      return r.text();
    }).then(function (svg) {
      var doc = new DOMParser().parseFromString(svg, "image/svg+xml").documentElement;
      var w = parseFloat(doc.getAttribute("width")), h = parseFloat(doc.getAttribute("height"));
      var url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
      var img = new Image();
      img.onload = function () {
        var canvas = document.createElement("canvas");
        canvas.width = w * 2; canvas.height = h * 2;
        var ctx = canvas.getContext("2d");
        ctx.scale(2, 2);
        ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
        ctx.drawImage(img, 0, 0, w, h);
        URL.revokeObjectURL(url);
        canvas.toBlob(function (blob) {
          var link = document.createElement("a");
          link.href = URL.createObjectURL(blob);
          link.download = (document.querySelector(".journey-map") || {}).dataset ? "journey-map.png" : "map.png";
          document.body.appendChild(link); link.click(); link.remove();
        }, "image/png");
      };
      img.src = url;
    });
  }

  // Confirmation for destructive forms (erase a contact): the text comes from data-confirm.
  function confirmSubmit(event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (e) { draw(e.target); });
  document.addEventListener("click", exportPng);
  document.addEventListener("submit", confirmSubmit, true);
  // A heatmap's stage is the page at its band's width, shown at the card's width: the live page
  // framed beneath the clicks is scaled by the same factor as the image and the grid.
  function scaleStages() {
    document.querySelectorAll(".heat-stage[data-width]").forEach(function (stage) {
      var scale = stage.clientWidth / Number(stage.getAttribute("data-width"));
      if (scale > 0) stage.style.setProperty("--heat-scale", String(scale));
    });
  }
  document.addEventListener("DOMContentLoaded", scaleStages);
  window.addEventListener("resize", scaleStages);
  window.addEventListener("resize", function () {
    document.querySelectorAll("[data-drawn]").forEach(function (el) {
      var c = window.echarts && window.echarts.getInstanceByDom(el);
      if (c) c.resize();
    });
  });
})();
