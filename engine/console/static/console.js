// faceengine console: live alerts over server-sent events, acknowledge without a reload,
// confirmations for destructive actions, camera status refresh. No framework, no build step.
"use strict";

function csrfOf(form) {
  const f = form.querySelector('input[name="csrf"]');
  return f ? f.value : "";
}

function startLive(list) {
  const max = parseInt(list.dataset.max, 10) || 50;
  const status = document.getElementById("live-status");
  const es = new EventSource(list.dataset.stream);
  es.addEventListener("open", () => { status.textContent = "live"; status.className = "status ok"; });
  es.addEventListener("error", () => { status.textContent = "reconnecting"; status.className = "status bad"; });
  es.addEventListener("failure", (ev) => {
    status.textContent = "stopped: " + ev.data; status.className = "status bad"; es.close();
    if (ev.data === "UNAUTHENTICATED") window.location = "/login";
  });
  es.addEventListener("match", (ev) => {
    const tpl = document.createElement("template");
    tpl.innerHTML = ev.data.trim();
    const card = tpl.content.firstElementChild;
    if (!card) return;
    card.dataset.received = String(Date.now());
    card.classList.add("new");
    const old = document.getElementById(card.id);
    if (old) {  // a better shot of the same alert: refresh it in place, keep the form the operator may be using
      old.querySelector(".faces").replaceWith(card.querySelector(".faces"));
      old.querySelector(".score").replaceWith(card.querySelector(".score"));
      old.querySelector(".time").replaceWith(card.querySelector(".time"));
      old.dataset.ts = card.dataset.ts;
      return;
    }
    list.prepend(card);
    while (list.children.length > max) list.lastElementChild.remove();
    window.setTimeout(() => card.classList.remove("new"), 8000);
  });
}

document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (form.classList.contains("confirm") && !window.confirm(form.dataset.confirm)) {
    ev.preventDefault();
    return;
  }
  if (!form.classList.contains("ackform")) return;
  ev.preventDefault();
  const body = new FormData(form);
  if (ev.submitter && ev.submitter.name) body.set(ev.submitter.name, ev.submitter.value);
  const box = form.closest(".ack");
  try {
    const r = await fetch(form.getAttribute("action"), {method: "POST", body,  // form.action is the button named action
      headers: {"X-CSRF-Token": csrfOf(form), "X-Requested-With": "console"}, credentials: "same-origin"});
    const text = await r.text();
    if (!r.ok) throw new Error(text || r.statusText);
    const tpl = document.createElement("template");
    tpl.innerHTML = text.trim();
    box.replaceWith(tpl.content.firstElementChild);
  } catch (err) {
    let p = box.querySelector(".error");
    if (!p) { p = document.createElement("p"); p.className = "error"; box.appendChild(p); }
    p.textContent = String(err.message || err);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("cards");
  if (list) startLive(list);
  const cams = document.getElementById("cameras");
  if (cams) {
    window.setInterval(async () => {
      const r = await fetch(cams.dataset.refresh, {credentials: "same-origin"});
      if (r.ok) cams.innerHTML = await r.text();
    }, 5000);
  }
});
