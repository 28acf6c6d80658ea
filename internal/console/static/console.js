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
    // A failed refresh keeps the last numbers, and says they are old.
    var staleNote = document.getElementById("live-stale");
    var since = null;
    var stale = function (why) {
      if (!staleNote) {
        return;
      }
      since = since || new Date();
      staleNote.textContent = "Not updated since " + since.toLocaleTimeString() +
        ": the console could not read the campaign (" + why + "). Trying again every 2 s.";
      staleNote.hidden = false;
    };
    var fresh = function () {
      since = null;
      if (staleNote) {
        staleNote.hidden = true;
      }
    };
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
          if (!r.ok) {
            stale("HTTP " + r.status);
            return null;
          }
          return r.text();
        })
        .then(function (html) {
          if (html) {
            live.innerHTML = html; // same-origin, server-escaped template output
            fresh();
          }
        })
        .catch(function () { stale("no answer"); })
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
