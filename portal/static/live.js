// Live updates without a reload: every second, ask the server for this page's live
// part with the ETag we have; a 304 means nothing changed, a 200 brings the new part
// (rendered and escaped by the server), which replaces the old one.
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region || !window.fetch) {
    return;
  }
  var etag = region.getAttribute("data-etag") || "";
  var period = parseInt(region.getAttribute("data-poll"), 10) || 1000;
  var badge = document.getElementById("live-status");

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
        if (badge) {
          badge.classList.toggle("stale", !(response.ok || response.status === 304));
        }
        if (response.status !== 200) {
          return null;
        }
        etag = response.headers.get("ETag") || "";
        return response.text().then(function (text) {
          region.innerHTML = text;
          region.setAttribute("data-etag", etag);
        });
      })
      .catch(function () {
        if (badge) {
          badge.classList.add("stale");
        }
      })
      .then(function () {
        window.setTimeout(poll, period);
      });
  }

  window.setTimeout(poll, period);
})();
