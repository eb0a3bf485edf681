// The scan page's view filters: show the views of one state, sort them by name or by
// angle (offered when every view's angle is known). Applied again after each live update.
(function () {
  "use strict";
  var form = document.querySelector("[data-view-filters]");
  if (!form) {
    return;
  }
  var stateSelect = form.querySelector("[data-filter-state]");
  var sortSelect = form.querySelector("[data-sort]");
  var shown = form.querySelector("[data-shown]");
  var angleOption = sortSelect.querySelector("[data-needs-angle]");
  var saved = window.sessionStorage ? window.sessionStorage : null;
  var storageKey = "ptychoflow-filters:" + window.location.pathname;
  if (saved && saved.getItem(storageKey)) {
    try {
      var previous = JSON.parse(saved.getItem(storageKey));
      stateSelect.value = previous.state || "";
      sortSelect.value = previous.sort || "name";
    } catch (ignored) {
      // a damaged entry: start from the defaults
    }
  }

  function apply() {
    var container = document.querySelector(".cards");
    if (!container) {
      return;
    }
    var cards = Array.prototype.slice.call(container.querySelectorAll("section.card"));
    var anglesKnown = cards.length > 0 && cards.every(function (card) {
      return card.dataset.angle !== undefined && card.dataset.angle !== "";
    });
    angleOption.disabled = !anglesKnown;
    angleOption.textContent = anglesKnown ? "angle" : "angle (not known for these views)";
    if (!anglesKnown && sortSelect.value === "angle") {
      sortSelect.value = "name";
    }
    var byAngle = sortSelect.value === "angle";
    cards.sort(function (a, b) {
      if (byAngle) {
        return parseFloat(a.dataset.angle) - parseFloat(b.dataset.angle);
      }
      return a.dataset.view < b.dataset.view ? -1 : a.dataset.view > b.dataset.view ? 1 : 0;
    });
    var wanted = stateSelect.value;
    var count = 0;
    cards.forEach(function (card) {
      var visible = !wanted || card.dataset.state === wanted;
      card.hidden = !visible;
      count += visible ? 1 : 0;
      container.appendChild(card);
    });
    shown.textContent = count + " of " + cards.length + " views shown";
    if (saved) {
      saved.setItem(storageKey, JSON.stringify({ state: stateSelect.value, sort: sortSelect.value }));
    }
  }

  stateSelect.addEventListener("change", apply);
  sortSelect.addEventListener("change", apply);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
  });
  document.addEventListener("live:updated", apply);
  apply();
})();
