// Live updates without a reload: every second, ask the server for this page's live
// part with the ETag we have; a 304 means nothing changed, a 200 brings the new part
// (rendered and escaped by the server), which replaces the old one unless it is the same
// text. After a swap, "live:updated" is dispatched on the document (the viewer and the
// scan page's filters re-apply themselves). When the server cannot be reached the badge
// says since when ("disconnected since 16:41:05"), and "live" again once it answers.
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region || !window.fetch) {
    return;
  }
  var etag = region.getAttribute("data-etag") || "";
  var period = parseInt(region.getAttribute("data-poll"), 10) || 1000;
  var badge = document.getElementById("live-status");
  var lastText = null;
  var lostSince = null;

  function two(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function connected(ok) {
    if (!badge) {
      return;
    }
    if (ok) {
      lostSince = null;
      badge.classList.remove("stale");
      badge.textContent = "live";
      badge.title = "this page updates itself";
      return;
    }
    if (lostSince === null) {
      lostSince = new Date();
    }
    badge.classList.add("stale");
    badge.textContent =
      "disconnected since " +
      two(lostSince.getHours()) + ":" + two(lostSince.getMinutes()) + ":" + two(lostSince.getSeconds());
    badge.title = "the portal does not answer; this page shows what it knew then and keeps trying";
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function poll() {
    fetch(fragmentUrl(), {
      cache: "no-store",
      credentials: "same-origin",
      headers: etag ? { "If-None-Match": etag } : {},
    })
      .then(function (response) {
        connected(response.ok || response.status === 304);
        if (response.status !== 200) {
          return null;
        }
        etag = response.headers.get("ETag") || "";
        return response.text().then(function (text) {
          region.setAttribute("data-etag", etag);
          if (text === lastText) {
            return;
          }
          lastText = text;
          region.innerHTML = text;
          document.dispatchEvent(new CustomEvent("live:updated"));
        });
      })
      .catch(function () {
        connected(false);
      })
      .then(function () {
        window.setTimeout(poll, period);
      });
  }

  window.setTimeout(poll, period);
})();
