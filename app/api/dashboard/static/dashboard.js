// Live parts of the dashboard: a running job's page refreshes itself, and buttons call the API with the login cookie.
"use strict";

function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Re-fetch the page every two seconds while its #live section says the job is active, and swap that section.
function followLivePage() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  const timer = setInterval(async () => {
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("live");
    if (!fresh) return;
    const open = [...live.querySelectorAll("details[open] summary")].map((s) => s.textContent);
    live.innerHTML = fresh.innerHTML;
    live.querySelectorAll("details summary").forEach((s) => { if (open.includes(s.textContent)) s.parentElement.open = true; });
    if (!fresh.dataset.live) {
      clearInterval(timer);
      location.reload(); // the job ended: show its evaluation report and drop the cancel button
    }
  }, 2000);
}

function wireApiButtons() {
  document.querySelectorAll("button[data-api]").forEach((button) => {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const response = await fetch(button.dataset.api, { method: button.dataset.method || "POST" });
      button.disabled = false;
      if (!response.ok) return notice(await errorMessage(response));
      if (button.dataset.then) location.assign(button.dataset.then);
      else location.reload();
    });
  });
}

function refusalTable(validation) {
  const table = document.createElement("table");
  table.innerHTML = "<caption></caption><thead><tr><th scope='col'>Line</th><th scope='col'>Code</th><th scope='col'>Problem</th></tr></thead><tbody></tbody>";
  table.caption.textContent = `The file was refused: ${validation.error_count ?? validation.errors.length} error(s)`;
  for (const error of validation.errors) {
    const row = table.tBodies[0].insertRow();
    for (const text of [error.line ?? "", error.code, error.message]) row.insertCell().textContent = text;
  }
  return table;
}

// Upload through the API with a progress bar; a refused file's errors are listed with their line numbers.
function wireUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  form.hidden = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const errors = document.getElementById("upload-errors");
    const progress = document.getElementById("upload-progress");
    errors.replaceChildren();
    notice("");
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    request.upload.onprogress = (e) => { progress.hidden = false; progress.value = e.loaded / (e.total || 1); };
    request.onload = () => {
      progress.hidden = true;
      let body = {};
      try { body = JSON.parse(request.responseText); } catch { /* not JSON: reported below */ }
      if (request.status === 200) return location.assign(`/files/${body.id}`);
      if (body.error && body.error.validation) return errors.append(refusalTable(body.error.validation));
      notice(body.error ? body.error.message : `${request.status} ${request.statusText}`);
    };
    request.onerror = () => { progress.hidden = true; notice("The upload did not reach the server."); };
    request.send(new FormData(form));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  followLivePage();
  wireApiButtons();
  wireUpload();
});
