// The review buttons: post a verdict without leaving the page (the form posts without JavaScript too).
(function () {
  "use strict";
  var who = document.getElementById("who");
  try { who.value = localStorage.getItem("homeward-who") || ""; } catch (e) {}
  who.addEventListener("change", function () { try { localStorage.setItem("homeward-who", who.value); } catch (e) {} });
  document.querySelectorAll("form.actions").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var button = ev.submitter, card = form.closest(".candidate"), line = card.querySelector(".status-line");
      var data = new URLSearchParams(new FormData(form));
      data.set("verdict", button.value);
      data.set("who", who.value);
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      line.textContent = "saving…";
      fetch(form.action, { method: "POST", body: data,
        headers: { "Accept": "application/json", "X-Requested-With": "fetch", "X-Homeward-Form": data.get("form_key") } })
        .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
        .then(function (res) {
          if (!res[0]) { throw new Error(res[1].error || "not saved"); }
          line.innerHTML = "";
          var pill = document.createElement("span");
          pill.className = "pill " + res[1].verdict;
          pill.textContent = res[1].verdict === "confirmed" ? "confirmed ✓ saved" : "rejected ✓ saved";
          line.appendChild(pill);
          card.className = "candidate decided-" + res[1].verdict;
          form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
        })
        .catch(function (err) {
          line.textContent = "not saved: " + err.message;
          form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
        });
    });
  });
})();
