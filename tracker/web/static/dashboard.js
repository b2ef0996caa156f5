// tracker's dashboard: plain JavaScript, no build step. The pages work without it; it adds the selection count of
// the stuck list and live updates from /v1/stream (when the server has it). Lists never move under the reader:
// changes wait behind an "N new" button that the reader presses to apply them.
(function () {
  "use strict";

  var body = document.body;
  var kind = body.getAttribute("data-live") || "";
  var streamUrl = body.getAttribute("data-stream") || "";
  var customer = body.getAttribute("data-customer") || "";

  function bindSelection() {
    var form = document.getElementById("bulk");
    var count = document.getElementById("bulk-count");
    if (!form || !count) return;
    function update() {
      var boxes = form.querySelectorAll("input[name=customer]:checked");
      var alerts = 0;
      for (var i = 0; i < boxes.length; i++) alerts += parseInt(boxes[i].getAttribute("data-alerts") || "0", 10);
      count.textContent = boxes.length
        ? boxes.length + " selected, " + alerts + " open alert" + (alerts === 1 ? "" : "s") + " (you confirm next)"
        : "";
    }
    form.addEventListener("change", update);
    update();
  }

  bindSelection();
  if (!kind || !streamUrl || typeof window.EventSource !== "function") return;

  var button = document.getElementById("live-apply");
  var waiting = {};
  var count = 0;
  var refreshing = false;
  var again = false;

  function matchesFilters(data) {
    var params = new URLSearchParams(window.location.search);
    var provider = params.get("provider");
    return !(provider && data.provider && data.provider !== provider);
  }

  function relevant(type, data) {
    if (!matchesFilters(data)) return false;
    if (kind === "stuck") {
      return type === "alert" || data.from === "pending" || data.to === "pending" || data.state === "pending";
    }
    if (kind === "alerts") return type === "alert";
    return true;
  }

  function refresh(done) {
    // Fetch this page again and swap its data region; a page that can no longer be read is reloaded whole.
    if (refreshing) { again = true; return; }
    refreshing = true;
    window.fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok || response.url.indexOf("/sign-in") !== -1) throw new Error("reload");
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live-region");
        var current = document.getElementById("live-region");
        if (!fresh || !current) throw new Error("reload");
        current.replaceWith(document.adoptNode(fresh));
        bindSelection();
        if (done) done();
      })
      .catch(function () { window.location.reload(); })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function show() {
    if (!button) return;
    button.textContent = count + " new change" + (count === 1 ? "" : "s") + " \u2014 show";
    button.hidden = count === 0;
  }

  if (button) {
    button.addEventListener("click", function () {
      waiting = {};
      count = 0;
      refresh(function () {
        show();
        var main = document.getElementById("main");
        if (main) main.focus();
      });
    });
  }

  function onMessage(type) {
    return function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (!data || typeof data !== "object") return;
      if (kind === "customer") {
        if (String(data.customer_id) === customer) refresh();
        return;
      }
      if (!relevant(type, data)) return;
      var key = type === "alert" ? "a" + data.alert_id : "c" + data.customer_id;
      if (!waiting[key]) { waiting[key] = true; count += 1; }
      show();
    };
  }

  // The stream filters what it can: this customer, or the list's provider.
  var provider = new URLSearchParams(window.location.search).get("provider");
  if (kind === "customer") streamUrl += "?customer_id=" + encodeURIComponent(customer);
  else if (provider) streamUrl += "?provider=" + encodeURIComponent(provider);
  var source;
  try { source = new window.EventSource(streamUrl); } catch (e) { return; }
  source.addEventListener("transition", onMessage("transition"));
  source.addEventListener("alert", onMessage("alert"));
  // The browser reconnects by itself after a dropped connection; a refused one stays closed. Either way, quietly.
  source.onerror = function () {};
  window.addEventListener("pagehide", function () { source.close(); });
})();
