// Rating a caption on the page: thumbs up ("Good", 5), down ("Wrong", 1), or a corrected caption (sent with 1), each
// through POST /api/v1/feedback like any other client. One rating per caption shown.
"use strict";

const FEEDBACK_API = "/api/v1/feedback";
const GOOD = 5;
const BAD = 1;

// The controls under one caption. `authHeaders()` gives the headers of the current API key, if any.
export function feedbackControls({ imageSha256, caption, index, authHeaders }) {
  const number = index + 1;
  const box = document.createElement("div");
  box.className = "feedback";

  // Words, not thumb emoji: they read the same everywhere, with or without an emoji font.
  const up = button("Good", `Good caption: caption ${number}`);
  const down = button("Wrong", `Wrong caption: caption ${number}`);
  const edit = button("Edit", `Correct caption ${number}`);
  edit.setAttribute("aria-expanded", "false");

  const form = document.createElement("form");
  form.className = "correction";
  form.hidden = true;
  const input = document.createElement("input");
  input.type = "text";
  input.id = `correction-${index}`;
  input.value = caption;
  input.maxLength = 1000;
  input.required = true;
  const label = document.createElement("label");
  label.htmlFor = input.id;
  label.textContent = `Corrected caption ${number}`;
  label.className = "offscreen";
  const submit = button("Send", `Send the corrected caption ${number}`);
  submit.type = "submit";
  form.append(label, input, submit);

  const status = document.createElement("span");
  status.className = "feedback-status";
  status.setAttribute("role", "status");

  const controls = [up, down, edit, submit];
  up.addEventListener("click", () => send({ rating: GOOD }, up, "Thanks: marked as a good caption."));
  down.addEventListener("click", () => send({ rating: BAD }, down, "Thanks: marked as a wrong caption."));
  edit.addEventListener("click", () => {
    form.hidden = !form.hidden;
    edit.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) input.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const correction = input.value.trim();
    if (correction) send({ rating: BAD, correction }, edit, "Thanks: correction sent.");
  });

  async function send(fields, chosen, thanks) {
    for (const control of controls) control.disabled = true;
    status.textContent = "Sending…";
    try {
      const headers = { ...authHeaders(), "Content-Type": "application/json", Accept: "application/json" };
      const body = JSON.stringify({ image_sha256: imageSha256, caption, ...fields });
      const response = await fetch(FEEDBACK_API, { method: "POST", headers, body });
      if (response.status !== 202) throw new Error(await refusal(response));
      chosen.setAttribute("aria-pressed", "true");
      form.hidden = true;
      edit.setAttribute("aria-expanded", "false");
      status.textContent = thanks;
    } catch (error) {
      for (const control of controls) control.disabled = false; // nothing was kept: let the user try again
      status.textContent = `Feedback not sent: ${error.message}`;
    }
  }

  box.append(up, down, edit, status, form);
  return box;
}

function button(text, label) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "button feedback-button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  return element;
}

async function refusal(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    // not JSON: a proxy's page
  }
  const error = payload && payload.error;
  return error ? `${error.message} (${error.code}, HTTP ${response.status})` : `HTTP ${response.status}`;
}
