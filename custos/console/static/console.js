// Custos console: progressive enhancements only; every page works without this script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // "Copy" buttons next to a secret shown once.
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      if (!field) return;
      field.select();
      try { await navigator.clipboard.writeText(field.value); button.textContent = "Copied"; }
      catch (e) { button.textContent = "Select and copy"; }
    });
  }
  // Forms that ask first (revocation).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Long-running forms (a verification) say they are busy and cannot be sent twice.
  for (const form of document.querySelectorAll("form[data-busy]")) {
    form.addEventListener("submit", () => {
      const button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = form.dataset.busy; }
    });
  }
});
