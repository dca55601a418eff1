// The review page of flawscope serve: plain JavaScript, no build step, every asset served by the package.
"use strict";

const POLL_MS = 2000;
const PAGE = 48;
const state = { filter: "all", rows: [], limit: PAGE, openId: null, models: [], teachStatus: {} };
const $ = (id) => document.getElementById(id);

function token() { return localStorage.getItem("flawscope-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("token-box").hidden = false; }
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
    throw new Error(detail);
  }
  return body;
}

function query() {
  const params = new URLSearchParams({ limit: String(state.limit) });
  if (state.filter === "unreviewed") params.set("verdict", "none");
  else if (state.filter !== "all") params.set("label", state.filter);
  return "/v1/inspections?" + params.toString();
}

function fmt(value, digits = 3) { return value === null || value === undefined ? "–" : Number(value).toPrecision(digits); }
function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }
function labelBadge(row) {
  if (row.error) return '<span class="badge failed">FAILED</span>';
  return row.label === "NOT OK" ? '<span class="badge bad">NOT OK</span>' : '<span class="badge ok">OK</span>';
}
function verdictText(row) {
  if (!row.verdict) return "not reviewed";
  return row.verdict === "defect" ? "operator: defect" : "operator: good";
}
function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function card(row) {
  const element = document.createElement("article");
  element.className = "card";
  element.dataset.id = row.id;
  const thumb = row.error
    ? `<div class="thumb failed">${escapeHtml(String(row.error).slice(0, 120))}</div>`
    : `<div class="thumb" style="background-image:url('${row.overlay_url || row.image_url || ""}')"></div>`;
  element.innerHTML = `${thumb}<div class="body">
      <div>${labelBadge(row)} <span class="muted">#${row.id}</span></div>
      <div>score <b>${fmt(row.score)}</b> <span class="muted">/ ${fmt(row.threshold)}</span></div>
      <div class="muted">${escapeHtml(row.part_id || row.filename || "")}</div>
      <div class="verdict-tag">${verdictText(row)} · ${when(row.created)}</div></div>`;
  element.addEventListener("click", () => openDetail(row.id));
  return element;
}

function render() {
  const cards = $("cards");
  cards.replaceChildren(...state.rows.map(card));
  $("empty").hidden = state.rows.length > 0;
  $("more").hidden = state.rows.length < state.limit || state.limit >= 1000;
}

async function refresh() {
  try {
    const body = await api(query());
    state.rows = body.inspections;
    render();
    $("live").classList.remove("stale");
  } catch (error) {
    $("live").classList.add("stale");
  }
}

function loadOlder() {
  state.limit = Math.min(state.limit + PAGE, 1000);
  refresh();
}

function drawBoxes(row) {
  const frame = $("frame-image");
  frame.querySelectorAll(".box").forEach((box) => box.remove());
  if (!row.boxes || !row.width) return;
  for (const [x0, y0, x1, y1] of row.boxes) {
    const box = document.createElement("div");
    box.className = "box";
    box.style.left = (100 * x0 / row.width) + "%";
    box.style.top = (100 * y0 / row.height) + "%";
    box.style.width = (100 * (x1 - x0) / row.width) + "%";
    box.style.height = (100 * (y1 - y0) / row.height) + "%";
    frame.appendChild(box);
  }
}

function showDetail(row) {
  state.openId = row.id;
  $("detail-title").innerHTML = `${labelBadge(row)} Inspection #${row.id}`;
  $("detail-facts").textContent = [
    `model ${row.model} (${row.model_version})`, row.part_id ? `part ${row.part_id}` : "", row.station ? `station ${row.station}` : "",
    row.filename || "", when(row.created), `${fmt(row.latency_ms, 4)} ms`, row.error ? `error: ${row.error}` : "",
  ].filter(Boolean).join(" · ");
  const top = Math.max(row.score ?? 0, row.threshold ?? 0) * 1.25 || 1;
  $("scorebar-fill").style.width = (100 * Math.min((row.score ?? 0) / top, 1)) + "%";
  $("scorebar-fill").style.background = row.label === "NOT OK" ? "var(--bad)" : "var(--ok)";
  $("scorebar-threshold").style.left = (100 * (row.threshold ?? 0) / top) + "%";
  $("scorebar").title = `score ${fmt(row.score)} against threshold ${fmt(row.threshold)}`;
  for (const name of ["image", "overlay", "mask"]) {
    const img = $("detail-" + name);
    img.src = row[name + "_url"] || "";
    img.parentElement.parentElement.hidden = !row[name + "_url"];
  }
  drawBoxes(row);
  $("verdict-now").textContent = row.verdict
    ? `Verdict: ${row.verdict === "defect" ? "confirmed defect" : "good part"}${row.verdict_operator ? " by " + row.verdict_operator : ""}`
    : "Not reviewed yet.";
  const scored = !row.error;
  $("verdict-ok").disabled = !scored;
  $("verdict-defect").disabled = !scored;
  const model = state.models.find((entry) => entry.name === row.model);
  $("verdict-teach").hidden = !(model && model.updatable);
  $("verdict-teach").disabled = !scored || !row.image_url;
  $("detail").hidden = false;
}

async function openDetail(id) { showDetail(await api(`/v1/inspections/${id}`)); }
function closeDetail() { $("detail").hidden = true; state.openId = null; }

async function sendVerdict(verdict, teach = false) {
  if (state.openId === null) return;
  try {
    const row = await api(`/v1/inspections/${state.openId}/verdict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict, teach }),
    });
    showDetail(row);
    if (teach) $("verdict-now").textContent += " · queued to teach the model";
    refresh();
    refreshStats();
  } catch (error) {
    $("verdict-now").textContent = "Not stored: " + error.message;
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("upload-input").files[0];
  const status = $("upload-status");
  if (!file) { status.textContent = "Choose an image first."; return; }
  const form = new FormData();
  form.append("image", file, file.name);
  if ($("upload-model").value) form.append("model", $("upload-model").value);
  status.className = ""; status.textContent = "Inspecting…";
  try {
    const row = await api("/v1/inspect", { method: "POST", body: form });
    status.textContent = `#${row.id}: ${row.label} (score ${fmt(row.score)}, ${fmt(row.latency_ms, 3)} ms)`;
    await refresh();
    refreshStats();
  } catch (error) {
    status.className = "error"; status.textContent = error.message;
    refresh();
  }
}

function drawHistogram(canvas, histogram) {
  const context = canvas.getContext("2d");
  const width = canvas.width = canvas.clientWidth * devicePixelRatio;
  const height = canvas.height = canvas.clientHeight * devicePixelRatio;
  context.clearRect(0, 0, width, height);
  const counts = histogram.counts || [];
  if (!counts.length) return;
  const top = Math.max(...counts) || 1;
  const low = histogram.edges[0], high = histogram.edges.at(-1);
  const barWidth = width / counts.length;
  counts.forEach((count, index) => {
    const middle = (histogram.edges[index] + histogram.edges[index + 1]) / 2;
    context.fillStyle = histogram.threshold !== null && middle > histogram.threshold ? "#c4320a" : "#12805c";
    const barHeight = (height - 4) * count / top;
    context.fillRect(index * barWidth + 1, height - barHeight, barWidth - 2, barHeight);
  });
  if (histogram.threshold !== null) {
    const x = width * (histogram.threshold - low) / (high - low);
    context.fillStyle = "#1d2430";
    context.fillRect(x - devicePixelRatio, 0, 2 * devicePixelRatio, height);
  }
}

function drawRate(canvas, points) {
  const context = canvas.getContext("2d");
  const width = canvas.width = canvas.clientWidth * devicePixelRatio;
  const height = canvas.height = canvas.clientHeight * devicePixelRatio;
  context.clearRect(0, 0, width, height);
  if (!points.length) return;
  const top = Math.max(0.05, ...points.map((p) => p.rate));
  context.strokeStyle = "#c4320a";
  context.lineWidth = 2 * devicePixelRatio;
  context.beginPath();
  points.forEach((point, index) => {
    const x = points.length === 1 ? width / 2 : width * index / (points.length - 1);
    const y = height - 4 - (height - 8) * point.rate / top;
    if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
}

function teachControls(name) {
  const model = state.models.find((entry) => entry.name === name);
  if (!model) return "";
  const version = `<div class="muted">version ${escapeHtml(model.version)}${model.parent ? " (made from " + escapeHtml(model.parent) + ")" : ""}</div>`;
  const update = model.updatable
    ? `<button class="update-model" data-model="${escapeHtml(name)}" ${model.queued_to_teach ? "" : "disabled"}>Update model (${model.queued_to_teach} queued)</button>`
    : "";
  return `${version}<div class="teach">${update}
      <button class="recalibrate-model" data-model="${escapeHtml(name)}" title="Set the threshold again from the operators' verdicts">Recalibrate</button>
      <button class="rollback-model" data-model="${escapeHtml(name)}" ${model.parent ? "" : "disabled"}>Roll back</button>
      <span class="teach-status" role="status">${escapeHtml(state.teachStatus[name] || "")}</span></div>`;
}

async function changeModel(button, action) {
  const name = button.dataset.model;
  const show = (text) => {
    state.teachStatus[name] = text;
    const status = button.parentElement.querySelector(".teach-status");
    if (status) status.textContent = text;
  };
  show({ update: "Updating…", recalibrate: "Recalibrating…", rollback: "Rolling back…" }[action]);
  try {
    const body = await api(`/v1/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    if (action === "update") show(`Taught ${body.update.images} images in ${fmt(body.update.seconds, 2)} s: now ${body.model.version}`);
    else if (action === "recalibrate") show(`Threshold ${fmt(body.recalibration.threshold)} from ${body.recalibration.good} good and ${body.recalibration.defective} defective verdicts: now ${body.model.version}`);
    else show(`Now serving ${body.version}`);
  } catch (error) {
    show(error.message);
  }
  await loadModels();
  refreshStats();
}

function modelPanel(name, figures) {
  const panel = document.createElement("section");
  const verdicts = figures.verdicts;
  const drift = figures.drift;
  const driftText = drift.status === "unknown" ? `unknown: ${drift.reason}`
    : `${drift.status} (KS ${fmt(drift.ks_statistic, 2)}, p ${fmt(drift.p_value, 2)}, ${drift.n_recent} parts)`;
  panel.innerHTML = `<h3>${escapeHtml(name)}</h3>${teachControls(name)}
    <div class="figures">
      <span>inspections</span><b>${figures.inspections}</b>
      <span>NOT OK</span><b>${figures.not_ok} (${figures.not_ok_rate === null ? "–" : (100 * figures.not_ok_rate).toFixed(1) + " %"})</b>
      <span>failed</span><b>${figures.failed}</b>
      <span>threshold</span><b>${fmt(figures.threshold)}</b>
    </div>
    <h4>Scores (line: threshold)</h4><canvas class="histogram"></canvas>
    <h4>NOT OK rate over time</h4><canvas class="rate"></canvas>
    <h4>Operator verdicts</h4>
    <div class="figures">
      <span>confirmed defects</span><b>${verdicts.confirmed_defects}</b>
      <span>false alarms</span><b>${verdicts.false_alarms}</b>
      <span>misses reported</span><b>${verdicts.misses}</b>
      <span>confirmed OK</span><b>${verdicts.confirmed_ok}</b>
    </div>
    <h4>Drift of good parts' scores</h4><div class="drift-${drift.status}">${escapeHtml(driftText)}</div>`;
  return panel;
}

async function refreshStats() {
  try {
    state.models = await api("/v1/models");
    const stats = await api("/v1/stats");
    const aside = $("stats");
    const panels = Object.entries(stats.models).map(([name, figures]) => modelPanel(name, figures));
    aside.replaceChildren(...panels);
    Object.values(stats.models).forEach((figures, index) => {
      drawHistogram(panels[index].querySelector(".histogram"), figures.histogram);
      drawRate(panels[index].querySelector(".rate"), figures.not_ok_rate_over_time);
    });
  } catch (error) {
    $("stats").textContent = "Statistics unavailable: " + error.message;
  }
}

async function loadModels() {
  state.models = await api("/v1/models");
  const select = $("upload-model");
  select.replaceChildren(...state.models.map((model) => new Option(model.name, model.name)));
  select.hidden = state.models.length < 2;
}

function setup() {
  $("upload-form").addEventListener("submit", upload);
  $("upload-input").addEventListener("change", () => { $("upload-name").textContent = $("upload-input").files[0]?.name || "Choose an image…"; });
  $("token-input").value = token();
  $("token-input").addEventListener("change", (event) => localStorage.setItem("flawscope-token", event.target.value));
  $("filters").addEventListener("click", (event) => {
    const filter = event.target.dataset?.filter;
    if (!filter) return;
    state.filter = filter;
    state.limit = PAGE;
    document.querySelectorAll("#filters button").forEach((button) => button.classList.toggle("active", button === event.target));
    refresh();
  });
  $("more").addEventListener("click", loadOlder);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
  $("verdict-ok").addEventListener("click", () => sendVerdict("ok"));
  $("verdict-defect").addEventListener("click", () => sendVerdict("defect"));
  $("verdict-teach").addEventListener("click", () => sendVerdict("ok", true));
  $("stats").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button?.classList.contains("update-model")) changeModel(button, "update");
    else if (button?.classList.contains("recalibrate-model")) changeModel(button, "recalibrate");
    else if (button?.classList.contains("rollback-model")) changeModel(button, "rollback");
  });
  loadModels();
  refresh();
  refreshStats();
  setInterval(refresh, POLL_MS);
  setInterval(refreshStats, 5 * POLL_MS);
}

setup();
