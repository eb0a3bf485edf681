// The view page's image viewer: one per figure[data-viewer] (phase, amplitude).
//
// It fetches the image's own values (float32, row-major: data-src, data-rows, data-cols)
// and draws them on a canvas through a colour map (the same 256-level tables the preview
// PNGs use, from the page's #colour-maps JSON) between two percentiles of the values:
// a contrast stretch a person sets. Zoom and pan come from Panzoom (static/vendor/,
// MIT licence): wheel or pinch to zoom, drag to pan, double-click to reset. The value
// under the cursor is shown with its position in micrometres when the pixel size is
// known. "line profile", then two clicks: the values along that line are plotted below.
// Each viewer's settings survive the page's live updates (kept per data-key).
(function () {
  "use strict";
  var maps = {};
  var mapsElement = document.getElementById("colour-maps");
  if (mapsElement) {
    maps = JSON.parse(mapsElement.textContent);
  }
  var kept = (window.ptychoflowViewers = window.ptychoflowViewers || {});
  var values = {}; // data-src -> Float32Array
  var sorted = {}; // data-src -> sorted finite sample, for percentiles

  function percentile(sample, pct) {
    if (!sample.length) {
      return 0;
    }
    var p = Math.min(100, Math.max(0, pct));
    var index = (p / 100) * (sample.length - 1);
    var low = Math.floor(index);
    var high = Math.min(sample.length - 1, low + 1);
    return sample[low] + (sample[high] - sample[low]) * (index - low);
  }

  function format(value) {
    if (!isFinite(value)) {
      return String(value);
    }
    var magnitude = Math.abs(value);
    return magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e4)
      ? value.toExponential(3)
      : value.toPrecision(4);
  }

  function setUp(figure) {
    if (figure.dataset.ready) {
      return;
    }
    figure.dataset.ready = "1";
    var key = figure.dataset.key;
    var src = figure.dataset.src;
    var rows = parseInt(figure.dataset.rows, 10);
    var cols = parseInt(figure.dataset.cols, 10);
    var pixelSize = parseFloat(figure.dataset.pixelSize) || 0;
    var unit = figure.dataset.unit || "";
    var canvas = figure.querySelector("[data-canvas]");
    var frame = figure.querySelector(".viewer-frame");
    var bar = figure.querySelector("[data-bar]");
    var readout = figure.querySelector("[data-value]");
    var cmapSelect = figure.querySelector("[data-cmap]");
    var lowInput = figure.querySelector("[data-low-pct]");
    var highInput = figure.querySelector("[data-high-pct]");
    var profileButton = figure.querySelector("[data-profile-toggle]");
    var profileBox = figure.querySelector("[data-profile]");
    var state = (kept[key] = kept[key] || {
      cmap: "grey",
      low: 1,
      high: 99,
      scale: 1,
      x: 0,
      y: 0,
      line: null,
    });
    cmapSelect.value = state.cmap;
    lowInput.value = state.low;
    highInput.value = state.high;
    var data = null;
    var context = canvas.getContext("2d");
    var image = context.createImageData(cols, rows);
    var pending = null;
    var panzoom = null;

    function position(row, col) {
      var where = "row " + row + ", column " + col;
      if (pixelSize) {
        where +=
          " (" + ((col * pixelSize) / 1e-6).toFixed(3) + " µm, " +
          ((row * pixelSize) / 1e-6).toFixed(3) + " µm)";
      }
      return where;
    }

    function draw() {
      if (!data) {
        return;
      }
      var sample = sorted[src];
      var low = percentile(sample, state.low);
      var high = percentile(sample, state.high);
      var span = high > low ? high - low : 1e-12;
      var table = maps[state.cmap] || maps.grey;
      var pixels = image.data;
      for (var i = 0; i < data.length; i++) {
        var v = data[i];
        var level = isFinite(v) ? Math.round(Math.min(1, Math.max(0, (v - low) / span)) * 255) : 0;
        pixels[4 * i] = table[3 * level];
        pixels[4 * i + 1] = table[3 * level + 1];
        pixels[4 * i + 2] = table[3 * level + 2];
        pixels[4 * i + 3] = 255;
      }
      context.putImageData(image, 0, 0);
      if (state.line && state.line.length === 2) {
        context.strokeStyle = "#ff4d4d";
        context.lineWidth = Math.max(0.5, cols / 300);
        context.beginPath();
        context.moveTo(state.line[0][1] + 0.5, state.line[0][0] + 0.5);
        context.lineTo(state.line[1][1] + 0.5, state.line[1][0] + 0.5);
        context.stroke();
      }
      var barContext = bar.getContext("2d");
      var barImage = barContext.createImageData(256, 1);
      for (var j = 0; j < 256; j++) {
        barImage.data[4 * j] = table[3 * j];
        barImage.data[4 * j + 1] = table[3 * j + 1];
        barImage.data[4 * j + 2] = table[3 * j + 2];
        barImage.data[4 * j + 3] = 255;
      }
      barContext.putImageData(barImage, 0, 0);
      figure.querySelector("[data-bar-low]").textContent = format(low);
      figure.querySelector("[data-bar-high]").textContent = format(high);
      figure.dataset.drawn = state.cmap + ":" + state.low + ":" + state.high;
    }

    function cell(event) {
      var rect = canvas.getBoundingClientRect();
      var col = Math.floor(((event.clientX - rect.left) / rect.width) * cols);
      var row = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
      if (row < 0 || col < 0 || row >= rows || col >= cols) {
        return null;
      }
      return [row, col];
    }

    function drawProfile() {
      if (!state.line || state.line.length !== 2 || !data) {
        profileBox.hidden = true;
        return;
      }
      var a = state.line[0];
      var b = state.line[1];
      var length = Math.hypot(b[0] - a[0], b[1] - a[1]);
      var count = Math.max(2, Math.ceil(length) + 1);
      var points = [];
      var lowest = Infinity;
      var highest = -Infinity;
      for (var i = 0; i < count; i++) {
        var t = i / (count - 1);
        var row = Math.round(a[0] + t * (b[0] - a[0]));
        var col = Math.round(a[1] + t * (b[1] - a[1]));
        var v = data[row * cols + col];
        points.push([t * length, v]);
        if (isFinite(v)) {
          lowest = Math.min(lowest, v);
          highest = Math.max(highest, v);
        }
      }
      var width = 480;
      var height = 160;
      var margin = 34;
      var span = highest > lowest ? highest - lowest : 1;
      var path = points
        .filter(function (p) {
          return isFinite(p[1]);
        })
        .map(function (p) {
          var x = margin + ((width - margin - 8) * p[0]) / (length || 1);
          var y = 8 + ((height - margin - 8) * (highest - p[1])) / span;
          return x.toFixed(1) + "," + y.toFixed(1);
        })
        .join(" ");
      var distance = pixelSize
        ? format((length * pixelSize) / 1e-6) + " µm"
        : format(length) + " pixels";
      var svgNs = "http://www.w3.org/2000/svg";
      var svg = document.createElementNS(svgNs, "svg");
      svg.setAttribute("viewBox", "0 0 " + width + " " + height);
      svg.setAttribute("class", "profile-plot");
      svg.setAttribute("role", "img");
      svg.setAttribute("aria-label", "line profile");
      function add(tag, attributes, text) {
        var element = document.createElementNS(svgNs, tag);
        Object.keys(attributes).forEach(function (name) {
          element.setAttribute(name, attributes[name]);
        });
        if (text !== undefined) {
          element.textContent = text;
        }
        svg.appendChild(element);
        return element;
      }
      add("rect", { class: "frame", x: margin, y: 8, width: width - margin - 8, height: height - margin - 8 });
      add("polyline", { class: "curve", points: path });
      add("text", { class: "axis", x: 2, y: 16 }, format(highest));
      add("text", { class: "axis", x: 2, y: height - margin }, format(lowest));
      add("text", { class: "axis", x: margin, y: height - margin + 14 }, "0");
      add("text", { class: "axis", x: width - 8, y: height - margin + 14, "text-anchor": "end" }, distance);
      add(
        "text",
        { class: "axis", x: width / 2, y: height - 6, "text-anchor": "middle" },
        "distance along the line; values in " + (unit || "no unit") + ", " + count + " samples"
      );
      profileBox.textContent = "";
      var caption = document.createElement("div");
      caption.className = "meta";
      caption.textContent =
        "line profile from " + position(a[0], a[1]) + " to " + position(b[0], b[1]);
      profileBox.appendChild(caption);
      profileBox.appendChild(svg);
      profileBox.hidden = false;
      profileBox.dataset.samples = String(count);
    }

    function setProfileMode(on) {
      figure.dataset.profiling = on ? "1" : "";
      profileButton.setAttribute("aria-pressed", on ? "true" : "false");
      if (panzoom) {
        panzoom.setOptions({ disablePan: on, cursor: on ? "crosshair" : "move" });
      }
      canvas.style.cursor = on ? "crosshair" : "move";
    }

    cmapSelect.addEventListener("change", function () {
      state.cmap = cmapSelect.value;
      draw();
    });
    function contrast() {
      var low = parseFloat(lowInput.value);
      var high = parseFloat(highInput.value);
      if (isFinite(low) && isFinite(high) && low < high) {
        state.low = low;
        state.high = high;
        draw();
      }
    }
    lowInput.addEventListener("input", contrast);
    highInput.addEventListener("input", contrast);
    profileButton.addEventListener("click", function () {
      var on = !figure.dataset.profiling;
      if (on) {
        state.line = [];
      }
      setProfileMode(on);
    });
    figure.querySelector("[data-reset]").addEventListener("click", function () {
      state.line = null;
      state.cmap = cmapSelect.value = "grey";
      state.low = lowInput.value = 1;
      state.high = highInput.value = 99;
      setProfileMode(false);
      if (panzoom) {
        panzoom.reset({ animate: false });
      }
      draw();
      drawProfile();
    });
    canvas.addEventListener("mousemove", function (event) {
      var where = cell(event);
      if (!where || !data) {
        return;
      }
      var value = data[where[0] * cols + where[1]];
      readout.textContent = position(where[0], where[1]) + ": " + format(value) + (unit ? " " + unit : "");
    });
    canvas.addEventListener("click", function (event) {
      if (!figure.dataset.profiling) {
        return;
      }
      var where = cell(event);
      if (!where) {
        return;
      }
      state.line = (state.line || []).concat([where]).slice(-2);
      if (state.line.length === 2) {
        setProfileMode(false);
        draw();
        drawProfile();
      }
    });

    if (window.Panzoom) {
      panzoom = window.Panzoom(canvas, {
        maxScale: 40,
        minScale: 1,
        step: 0.6, // one wheel notch zooms by exp(step / 3), about 1.22x
        contain: "outside",
        startScale: state.scale,
        startX: state.x,
        startY: state.y,
      });
      frame.addEventListener("wheel", panzoom.zoomWithWheel);
      frame.addEventListener("dblclick", function () {
        panzoom.reset({ animate: false });
      });
      canvas.addEventListener("panzoomchange", function (event) {
        state.scale = event.detail.scale;
        state.x = event.detail.x;
        state.y = event.detail.y;
        figure.dataset.scale = String(event.detail.scale);
      });
    }

    function loaded(array) {
      data = array;
      draw();
      drawProfile();
      figure.dataset.loaded = "1";
    }
    if (values[src]) {
      loaded(values[src]);
      return;
    }
    pending = fetch(src, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(response.status + " " + response.statusText);
        }
        return response.arrayBuffer();
      })
      .then(function (buffer) {
        var array = new Float32Array(buffer);
        if (array.length !== rows * cols) {
          throw new Error("expected " + rows * cols + " values, got " + array.length);
        }
        var step = Math.max(1, Math.floor(array.length / 200000));
        var sample = [];
        for (var i = 0; i < array.length; i += step) {
          if (isFinite(array[i])) {
            sample.push(array[i]);
          }
        }
        sample.sort(function (a, b) {
          return a - b;
        });
        values[src] = array;
        sorted[src] = sample;
        loaded(array);
      })
      .catch(function (error) {
        readout.textContent = "could not load the image's values: " + error.message;
      });
    return pending;
  }

  function setUpAll() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-viewer]"), setUp);
  }

  document.addEventListener("live:updated", setUpAll);
  setUpAll();
})();
