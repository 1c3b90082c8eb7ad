// The board's own behaviour, kept small: the live switch, confirmations, the JSON editor's check.
// No inline scripts anywhere (the pages' Content-Security-Policy allows only files from here).
(function () {
  "use strict";
  var KEY = "apalis-live";

  function liveOn() { return localStorage.getItem(KEY) !== "off"; }

  function showLive() {
    var on = liveOn();
    document.querySelectorAll(".live-toggle").forEach(function (el) {
      el.classList.toggle("off", !on);
      var label = el.querySelector(".label");
      if (label) { label.textContent = on ? "Live" : "Live off"; }
      el.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }

  // A live reload is skipped while the switch is off, while a form in the live part has focus,
  // or while a menu in it is open: nothing a person is doing is swapped away under them.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var live = document.getElementById("live");
    if (!live || evt.detail.elt !== live) { return; }
    var active = document.activeElement;
    var busy = active && live.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
    if (!liveOn() || busy || live.querySelector("details[open]")) { evt.preventDefault(); }
  });

  document.addEventListener("click", function (evt) {
    var toggle = evt.target.closest && evt.target.closest(".live-toggle");
    if (toggle) {
      localStorage.setItem(KEY, liveOn() ? "off" : "on");
      showLive();
    }
  });

  // Forms that change or delete tasks ask first (data-confirm holds the question).
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { evt.preventDefault(); }
  }, true);

  // The push editor: the arguments must parse as JSON before the form can be sent.
  function checkJson(area) {
    var form = area.form;
    var state = form.querySelector(".json-state");
    var button = form.querySelector("button[type=submit]");
    var text = area.value.trim();
    var ok = false, message = "";
    if (!text) {
      message = "Type the task's arguments as JSON.";
    } else {
      try { JSON.parse(text); ok = true; message = "Valid JSON."; }
      catch (err) { message = "Not JSON: " + err.message; }
    }
    if (state) {
      state.textContent = message;
      state.classList.toggle("bad", !ok && !!text);
      state.classList.toggle("good", ok);
    }
    if (button) { button.disabled = !ok; }
    area.setCustomValidity(ok ? "" : message);
    return ok;
  }

  document.addEventListener("input", function (evt) {
    if (evt.target.matches && evt.target.matches("textarea[data-json]")) { checkJson(evt.target); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    showLive();
    document.querySelectorAll("textarea[data-json]").forEach(checkJson);
  });
  document.addEventListener("htmx:afterSwap", showLive);
})();
