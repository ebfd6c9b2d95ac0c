// The captioner web page: a plain client of POST /api/v1/caption (and /api/v1/feedback, in feedback.js). No
// framework, no build step, no third-party code; everything it loads comes from this server.
"use strict";

import { feedbackControls } from "./feedback.js";

(() => {
  const API = "/api/v1/caption";
  const KEY_STORAGE = "captioner.apiKey"; // sessionStorage: gone when the tab closes, never sent elsewhere

  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const fileInput = $("file");
  const dropzone = $("dropzone");
  const urlForm = $("url-form");
  const urlInput = $("url");
  const numSelect = $("num-captions");
  const apiKeyInput = $("api-key");
  const results = $("results");
  const errorBox = $("error");
  const statusLine = $("status");
  const figure = $("figure");
  const preview = $("preview");
  const captionList = $("captions");
  const meta = $("meta");

  // What is being captioned now ({kind: "file", file} or {kind: "url", url}), and the request in flight.
  let source = null;
  let inFlight = null;
  let objectUrl = null;

  // -- options ------------------------------------------------------------------------------------------

  const maxCaptions = Math.max(1, Number(app.dataset.maxCaptions) || 1);
  const defaultCaptions = Math.min(maxCaptions, Math.max(1, Number(app.dataset.defaultCaptions) || 1));
  for (let n = 1; n <= maxCaptions; n += 1) {
    const option = document.createElement("option");
    option.value = String(n);
    option.textContent = String(n);
    option.selected = n === defaultCaptions;
    numSelect.append(option);
  }
  numSelect.addEventListener("change", () => caption());

  try {
    apiKeyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    // Storage may be disabled (privacy settings); the field still works for this page view.
  }
  apiKeyInput.addEventListener("input", () => {
    try {
      if (apiKeyInput.value) sessionStorage.setItem(KEY_STORAGE, apiKeyInput.value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* see above */
    }
  });

  // -- inputs: chooser, drag and drop, paste, URL ----------------------------------------------------------

  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files.length) useFile(fileInput.files[0]);
  });

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const transfer = event.dataTransfer;
    if (!transfer) return;
    if (transfer.files && transfer.files.length) {
      useFile(transfer.files[0]);
      return;
    }
    // An image dragged from another web page arrives as a link, not a file.
    const link = (transfer.getData("text/uri-list") || transfer.getData("text/plain") || "").split("\n")[0].trim();
    if (/^https?:\/\//i.test(link)) {
      urlInput.value = link;
      useUrl(link);
    } else {
      showError("Drop an image file, or a link to an image.");
    }
  });

  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data) return;
    const image = Array.from(data.files || []).find((file) => file.type.startsWith("image/"));
    if (image) {
      event.preventDefault();
      useFile(image);
    }
  });

  urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const url = urlInput.value.trim();
    if (url) useUrl(url);
  });

  function useFile(file) {
    source = { kind: "file", file };
    setPreview(URL.createObjectURL(file), true);
    caption();
  }

  function useUrl(url) {
    source = { kind: "url", url };
    setPreview(url, false);
    caption();
  }

  function setPreview(src, isObjectUrl) {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = isObjectUrl ? src : null;
    // Until the captions arrive the image has no description; say so rather than leave it unlabelled.
    preview.alt = "The image being captioned";
    preview.src = src;
    figure.hidden = false;
  }

  // -- the request ------------------------------------------------------------------------------------------

  async function caption() {
    if (!source) return;
    if (inFlight) inFlight.abort(); // a newer choice wins; its answer is the one to show
    const controller = new AbortController();
    inFlight = controller;

    const numCaptions = Number(numSelect.value);
    const headers = { Accept: "application/json", ...authHeaders() };
    let body;
    if (source.kind === "file") {
      body = new FormData();
      body.append("image", source.file, source.file.name || "image");
      body.append("num_captions", String(numCaptions));
    } else {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify({ url: source.url, num_captions: numCaptions });
    }

    clearError();
    captionList.replaceChildren();
    meta.textContent = "";
    results.setAttribute("aria-busy", "true");
    statusLine.textContent = "Captioning…";
    const started = performance.now();
    try {
      let response;
      try {
        response = await fetch(API, { method: "POST", headers, body, signal: controller.signal });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw new Error(`Could not reach the server (${error.message}).`);
      }
      const payload = await readJson(response);
      if (!response.ok || !payload || payload.status !== "success") {
        throw new Error(errorMessage(response, payload));
      }
      render(payload, performance.now() - started);
    } catch (error) {
      if (error.name === "AbortError") return;
      showError(error.message);
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        results.removeAttribute("aria-busy");
      }
    }
  }

  function authHeaders() {
    const apiKey = apiKeyInput.value.trim();
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null; // e.g. an HTML error page from a proxy in front of the server
    }
  }

  function errorMessage(response, payload) {
    const error = payload && payload.error;
    let message = error && error.message ? error.message : `The server answered HTTP ${response.status}.`;
    if (error && error.code) message += ` (${error.code}, HTTP ${response.status})`;
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter && (response.status === 429 || response.status === 503)) {
      message += ` Try again in ${retryAfter} s.`;
    }
    if (response.status === 401) {
      message += " Enter a valid API key above.";
      apiKeyInput.focus();
    }
    return message;
  }

  // -- output -------------------------------------------------------------------------------------------

  function render(payload, elapsedMs) {
    const captions = Array.isArray(payload.captions) ? payload.captions : [];
    const items = captions.map((item, index) => captionItem(item, index, payload.image_sha256));
    captionList.replaceChildren(...items);
    const top = captions.length ? captions[0].text : "";
    preview.alt = top || "An image the model found no caption for";
    const count = captions.length === 1 ? "1 caption" : `${captions.length} captions`;
    statusLine.textContent = top ? `${count}. Top caption: ${top}` : "The model returned no caption for this image.";
    const parts = [`${Math.round(elapsedMs)} ms`, payload.cached ? "from the cache" : "computed now"];
    if (payload.model) parts.push(`model ${payload.model}`);
    if (payload.image_sha256) parts.push(`sha256 ${payload.image_sha256.slice(0, 12)}…`);
    meta.textContent = parts.join(" · ");
  }

  function captionItem(item, index, imageSha256) {
    const confidence = Math.min(1, Math.max(0, Number(item.confidence) || 0));
    const li = document.createElement("li");
    li.className = "caption";

    const text = document.createElement("p");
    text.className = "caption-text";
    text.id = `caption-${index}`;
    text.textContent = item.text;

    const bar = document.createElement("meter");
    bar.className = "confidence-bar";
    bar.min = 0;
    bar.max = 1;
    bar.value = confidence;
    bar.setAttribute("aria-label", `Confidence of caption ${index + 1}`);
    bar.textContent = percent(confidence);

    const value = document.createElement("span");
    value.className = "confidence-value";
    value.textContent = percent(confidence);
    value.title = `confidence ${confidence}`;

    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "button copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy caption ${index + 1}`);
    copy.setAttribute("aria-describedby", text.id);
    copy.addEventListener("click", () => copyText(item.text, copy));

    const row = document.createElement("div");
    row.className = "confidence";
    row.append(bar, value, copy);
    li.append(text, row);
    if (imageSha256) li.append(feedbackControls({ imageSha256, caption: item.text, index, authHeaders }));
    return li;
  }

  function percent(confidence) {
    if (confidence > 0 && confidence < 0.001) return "<0.1%";
    return `${(confidence * 100).toFixed(1)}%`;
  }

  async function copyText(text, button) {
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch (_) {
      // The async clipboard needs a secure context (https or localhost); fall back to a selection copy.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      try {
        copied = document.execCommand("copy");
      } catch (__) {
        copied = false;
      }
      area.remove();
      button.focus();
    }
    button.textContent = copied ? "Copied" : "Copy failed";
    statusLine.textContent = copied ? `Copied: ${text}` : "The browser did not allow copying; select the text instead.";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 2000);
  }

  function showError(message) {
    errorBox.textContent = message;
    statusLine.textContent = "No captions.";
    captionList.replaceChildren();
    meta.textContent = "";
    // A failed image has no picture worth showing (a text file would show as a broken image).
    figure.hidden = true;
    preview.alt = "";
  }

  function clearError() {
    errorBox.textContent = "";
  }
})();
