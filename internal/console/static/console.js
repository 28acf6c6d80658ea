// ghlcancel console: live campaign progress and the dead-letter selection.
// Served from 'self' under a strict CSP: no inline code anywhere.
"use strict";

(function () {
  // The campaign page refreshes its live part every 2 s until complete,
  // sending its last sample so the server computes the rate between polls.
  var live = document.getElementById("live");
  if (live) {
    var url = live.getAttribute("data-live");
    var timer = null;
    var inFlight = false;
    var poll = function () {
      timer = null;
      var inner = document.getElementById("live-inner");
      if (inFlight || document.hidden || !inner || inner.getAttribute("data-complete") === "true") {
        return;
      }
      inFlight = true;
      var q = "&prev_done=" + encodeURIComponent(inner.getAttribute("data-sample-done")) +
        "&prev_at=" + encodeURIComponent(inner.getAttribute("data-sample-at"));
      fetch(url + q, { credentials: "same-origin", headers: { "X-Console-Fetch": "1" } })
        .then(function (r) {
          if (r.status === 401) {
            window.location.reload(); // the session ended: back to sign-in
            return null;
          }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html) {
            live.innerHTML = html; // same-origin, server-escaped template output
          }
        })
        .catch(function () { /* keep the last numbers; try again */ })
        .finally(function () {
          inFlight = false;
          if (!document.hidden) {
            timer = setTimeout(poll, 2000);
          }
        });
    };
    timer = setTimeout(poll, 2000);
    document.addEventListener("visibilitychange", function () {
      if (document.hidden && timer) {
        clearTimeout(timer);
        timer = null;
      } else if (!document.hidden && !timer && !inFlight) {
        poll();
      }
    });
  }

  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (b) { b.checked = all.checked; });
    });
  }
})();
