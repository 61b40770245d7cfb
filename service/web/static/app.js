// The voxagent page: plain JavaScript over the public API (the same calls a script would make).
// The API key lives in sessionStorage only: it is gone when the tab closes and never sent anywhere
// but this service. Files (scans, masks, snapshots, CSV) are fetched with the key and handed to the
// viewer or the browser as blob: URLs, since an <a href> or <img src> cannot carry the key header.
"use strict";

const KEY = "voxagent.apiKey";
const POLL_MS = 400;
const MASK_COLOURS = ["red", "green", "blue", "warm", "winter", "violet"];
const $ = (sel) => document.querySelector(sel);

const state = { scans: [], viewers: [], job: null, pollTimer: null, blobUrls: [] };

// ---- API -------------------------------------------------------------------------------------

class Problem extends Error {
  constructor(status, title, detail, body) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.body = body;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

async function problemOf(response) {
  // RFC 9457 problem+json from the service; anything else is shown as its status line.
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (body && typeof body === "object") {
    let detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return new Problem(response.status, body.title || response.statusText, detail, body);
  }
  return new Problem(response.status, response.statusText, `HTTP ${response.status}`, null);
}

function showProblem(err, context) {
  const box = $("#problem");
  box.replaceChildren();
  const head = document.createElement("strong");
  const status = err instanceof Problem ? ` (${err.status})` : "";
  head.textContent = `${context ? context + ": " : ""}${err.title || "Error"}${status}`;
  const detail = document.createElement("p");
  detail.textContent = err.detail || err.message || String(err);
  box.append(head, detail);
  if (err instanceof Problem && err.status === 401) {
    const hint = document.createElement("p");
    hint.textContent = "Enter a valid API key above (voxagent keys create --tenant NAME).";
    box.append(hint);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "Dismiss";
  close.addEventListener("click", () => { box.hidden = true; });
  box.append(close);
  box.hidden = false;
  box.tabIndex = -1;
  box.focus();
}

function clearProblem() {
  $("#problem").hidden = true;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function setProgress(text) {
  $("#progress").textContent = text;
}

// ---- key -------------------------------------------------------------------------------------

function showKeyState() {
  $("#key-state").textContent = apiKey() ? "key set for this session" : "no key (the service may need one)";
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("#api-key").value.trim();
  if (value) sessionStorage.setItem(KEY, value);
  $("#api-key").value = "";
  showKeyState();
  refreshRecent();
});
$("#key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showKeyState();
});

// ---- scans and submit ------------------------------------------------------------------------

function defaultName(file, index) {
  const stem = file.name.replace(/\.(nii\.gz|nii|zip)$/i, "").replace(/[^A-Za-z0-9_]/g, "_");
  const name = /^[A-Za-z_]/.test(stem) ? stem : `scan${index + 1}`;
  return name.slice(0, 40) || `scan${index + 1}`;
}

function renderScanTable() {
  const body = $("#scan-table tbody");
  body.replaceChildren();
  state.scans.forEach((scan, i) => {
    const name = el("input", { type: "text", value: scan.name, "aria-label": `Name of ${scan.file.name}`,
      pattern: "[A-Za-z_][A-Za-z0-9_]*", required: "" });
    name.addEventListener("input", () => { scan.name = name.value; });
    const modality = el("select", { "aria-label": `Modality of ${scan.file.name}` });
    for (const m of ["", "T1", "T2", "FLAIR", "DWI", "ADC", "T1c", "CT", "PD", "SWI"]) {
      modality.append(el("option", { value: m, text: m || "(unknown)" }));
    }
    modality.value = scan.modality;
    modality.addEventListener("change", () => { scan.modality = modality.value; });
    const date = el("input", { type: "date", value: scan.date, "aria-label": `Date of ${scan.file.name}` });
    date.addEventListener("change", () => { scan.date = date.value; });
    const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove ${scan.file.name}` });
    remove.addEventListener("click", () => { state.scans.splice(i, 1); renderScanTable(); });
    body.append(el("tr", {}, el("td", { text: scan.file.name }), el("td", {}, name), el("td", {}, modality),
      el("td", {}, date), el("td", {}, remove)));
  });
  $("#scan-table").hidden = state.scans.length === 0;
}

$("#files").addEventListener("change", (ev) => {
  for (const file of ev.target.files) {
    const guess = /t1/i.test(file.name) ? "T1" : /flair/i.test(file.name) ? "FLAIR" : /t2/i.test(file.name) ? "T2" : "";
    state.scans.push({ file, name: defaultName(file, state.scans.length), modality: guess, date: "" });
  }
  ev.target.value = "";
  renderScanTable();
});

$("#example").addEventListener("change", (ev) => {
  if (ev.target.value) $("#prompt").value = ev.target.value;
});

async function uploadScan(scan) {
  const form = new FormData();
  form.append("file", scan.file, scan.file.name);
  if (scan.modality) form.append("modality", scan.modality);
  if (scan.date) form.append("date", scan.date);
  return apiJson("/v1/volumes", { method: "POST", body: form });
}

$("#analysis-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearProblem();
  if (state.scans.length === 0) {
    showProblem(new Problem(0, "No scan", "Add at least one scan (NIfTI or DICOM zip)."), "Upload");
    return;
  }
  const submit = $("#submit");
  submit.disabled = true;
  try {
    const volumes = [];
    for (const [i, scan] of state.scans.entries()) {
      setProgress(`Uploading scan ${i + 1} of ${state.scans.length} (${scan.file.name})...`);
      let info;
      try {
        info = await uploadScan(scan);
      } catch (err) {
        showProblem(err, `Upload of ${scan.file.name} refused`);
        setProgress("");
        return;
      }
      volumes.push({ id: info.id, name: scan.name || null, modality: scan.modality || null, date: scan.date || null });
    }
    setProgress("Submitting...");
    const job = await apiJson("/v1/analyses", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: $("#prompt").value, volumes }),
    });
    location.hash = `job=${job.id}`;
    follow(job);
  } catch (err) {
    showProblem(err, "Analysis not started");
    setProgress("");
  } finally {
    submit.disabled = false;
  }
});

// ---- following a job -------------------------------------------------------------------------

function describeProgress(job) {
  if (job.status === "queued") return "Queued";
  if (job.status === "running") {
    const p = job.progress;
    return p ? `Running: step ${p.step} of at most ${p.max_steps}` : "Running";
  }
  return `Finished: ${job.status}`;
}

function follow(job) {
  clearTimeout(state.pollTimer);
  state.following = job.id;
  setProgress(describeProgress(job));
  if (["succeeded", "failed", "cancelled"].includes(job.status)) {
    renderJob(job);
    refreshRecent();
    return;
  }
  state.pollTimer = setTimeout(async () => {
    try {
      follow(await apiJson(`/v1/analyses/${encodeURIComponent(job.id)}`));
    } catch (err) {
      showProblem(err, "Lost track of the analysis");
    }
  }, POLL_MS);
}

async function openJob(id) {
  clearProblem();
  try {
    follow(await apiJson(`/v1/analyses/${encodeURIComponent(id)}`));
  } catch (err) {
    showProblem(err, `Analysis ${id}`);
  }
}

// ---- result ----------------------------------------------------------------------------------

function formatValue(v) {
  if (typeof v === "number" && !Number.isInteger(v)) return String(Number(v.toPrecision(6)));
  return String(v);
}

function scanNames(job) {
  // the service's rule (api_schemas.requests.AnalysisRequest.scan_names): given names, else scan, scan2...
  const used = new Set(job.volumes.filter((v) => v.name).map((v) => v.name));
  let n = 1;
  return job.volumes.map((v) => {
    if (v.name) return v.name;
    for (;;) {
      const cand = n === 1 ? "scan" : `scan${n}`;
      n += 1;
      if (!used.has(cand)) return cand;
    }
  });
}

function blobUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.blobUrls.push(url);
  return url;
}

async function download(path, filename) {
  try {
    const blob = await (await api(path)).blob();
    saveBlob(blob, filename);
  } catch (err) {
    showProblem(err, `Download of ${filename}`);
  }
}

function saveBlob(blob, filename) {
  const a = el("a", { href: blobUrl(blob), download: filename });
  document.body.append(a);
  a.click();
  a.remove();
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function metricsCsv(job) {
  const rows = [["job_id", "metric", "value", "unit", "step"]];
  for (const m of job.result.metrics) rows.push([job.id, m.name, m.value, m.unit, m.step]);
  return rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
}

function stepLink(step, text) {
  if (step === null || step === undefined) return document.createTextNode(text);
  return el("a", { href: `#step-${step}`, class: "step-link", onclick: (ev) => {
    ev.preventDefault();
    const target = document.getElementById(`step-${step}`);
    target.open = true;
    target.scrollIntoView({ block: "center" });
    target.querySelector("summary").focus();
  } }, text);
}

function renderJob(job) {
  state.job = job;
  const result = job.result || { status: job.status, text: "", metrics: [], outputs: [], trace: [], warnings: [] };
  $("#result").hidden = false;
  $("#job-id").textContent = job.id;
  $("#job-status").textContent = `${job.status}${result.status && result.status !== job.status ? ` (${result.status})` : ""}`;
  $("#job-model").textContent = result.model ? `model ${result.model}` : "";
  const answer = result.text || (job.error ? "" : "(no answer)");
  $("#answer").textContent = answer + (job.error ? `${answer ? " " : ""}Error: ${job.error}` : "");
  $("#warnings").replaceChildren(...(result.warnings || []).map((w) => el("li", { text: w })));

  const tbody = $("#metrics tbody");
  tbody.replaceChildren();
  if (!result.metrics.length) {
    tbody.append(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No metrics." })));
  }
  for (const m of result.metrics) {
    tbody.append(el("tr", { "data-metric": m.name },
      el("th", { scope: "row", text: m.name }),
      el("td", { class: "num" }, stepLink(m.step, formatValue(m.value))),
      el("td", { text: m.unit || "" }),
      el("td", {}, stepLink(m.step, m.step === null || m.step === undefined ? "" : `step ${m.step}`))));
  }

  const downloads = $("#downloads");
  downloads.replaceChildren();
  for (const out of result.outputs) {
    const link = job.links[`output:${out.name}`];
    if (!link) continue;
    downloads.append(el("li", {}, el("button", { type: "button", "data-download": out.name,
      onclick: () => download(link, `${out.name}.nii.gz`) }, `NIfTI: ${out.name}`)));
  }
  if (result.metrics.length) {
    downloads.append(el("li", {}, el("button", { type: "button", "data-download": "metrics.csv",
      onclick: () => saveBlob(new Blob([metricsCsv(job)], { type: "text/csv" }), `${job.id}-metrics.csv`) },
      "CSV of metrics")));
  }
  if (!downloads.children.length) downloads.append(el("li", { class: "muted", text: "Nothing to download." }));
  addDicomDownloads(job, result, downloads);

  const trace = $("#trace");
  trace.replaceChildren();
  for (const step of result.trace) {
    const body = [el("pre", {}, el("code", { text: step.code }))];
    if (step.feedback.length) {
      body.push(el("p", { class: "label", text: "Read back:" }),
        el("ul", { class: "feedback" }, ...step.feedback.map((f) => el("li", {}, el("code", { text: f })))));
    }
    if (step.error) body.push(el("p", { class: "error", text: `Error: ${step.error}` }));
    const details = el("details", { id: `step-${step.index}`, open: "" },
      el("summary", { text: `Step ${step.index} (${step.duration_s.toFixed(2)} s)` }), ...body);
    trace.append(el("li", { value: String(step.index) }, details));
  }

  renderSnapshots(job, result);
  renderViewers(job, result);
  $("#result").scrollIntoView({ block: "start" });
  $("#result-h").tabIndex = -1;
  $("#result-h").focus({ preventScroll: true });
}

async function addDicomDownloads(job, result, list) {
  // DICOM SEG (the masks) and SR (metrics, answer), written into the source study of each scan that was
  // uploaded as a DICOM series; the volume's metadata says which ones were.
  if (!["succeeded", "failed"].includes(job.status)) return;
  const names = scanNames(job);
  for (const [i, vol] of job.volumes.entries()) {
    let info;
    try {
      info = await apiJson(`/v1/volumes/${encodeURIComponent(vol.id)}`);
    } catch (_) {
      continue;
    }
    if (!info.dicom) continue;
    const name = names[i];
    const query = `?scan=${encodeURIComponent(name)}`;
    const base = `/v1/analyses/${encodeURIComponent(job.id)}/dicom`;
    const hasMask = result.outputs.some((o) => o.kind === "mask" && (o.source === name || (!o.source && names.length === 1)));
    const kinds = hasMask ? ["seg", "sr"] : ["sr"];
    list.querySelector("li.muted")?.remove();
    for (const kind of kinds) {
      list.append(el("li", {}, el("button", { type: "button", "data-download": `dicom-${kind}-${name}`,
        onclick: () => download(`${base}/${kind}${query}`, `${job.id}_${name}_${kind}.dcm`) },
        `DICOM ${kind.toUpperCase()}: ${name}`)));
    }
  }
}

async function renderSnapshots(job, result) {
  const box = $("#snapshots");
  box.replaceChildren();
  for (const out of result.outputs) {
    const link = job.links[`snapshot:${out.name}`];
    if (!link || out.kind !== "mask") continue;
    const img = el("img", { alt: `Snapshot of ${out.name}: three planes through the mask over its scan` });
    box.append(el("figure", {}, img, el("figcaption", { text: out.name })));
    try {
      img.src = blobUrl(await (await api(link)).blob());
    } catch (err) {
      img.alt = `Snapshot of ${out.name} unavailable: ${err.message}`;
    }
  }
  if (!box.children.length) box.append(el("p", { class: "muted", text: "No masks." }));
}

// ---- viewer (NiiVue) -------------------------------------------------------------------------

function opacity() {
  return Number($("#opacity").value) / 100;
}

function linkViewers() {
  const linked = $("#link-crosshair").checked;
  for (const v of state.viewers) {
    v.broadcastTo(linked ? state.viewers.filter((o) => o !== v) : [], { "2d": true, "3d": true });
  }
}

async function renderViewers(job, result) {
  const box = $("#viewers");
  box.replaceChildren();
  state.viewers = [];
  if (typeof window.niivue === "undefined") {
    box.append(el("p", { class: "problem", text: "The viewer (NiiVue) did not load: run `make install` on the server." }));
    return;
  }
  const names = scanNames(job);
  for (const [i, vol] of job.volumes.entries()) {
    const name = names[i];
    const masks = result.outputs.filter((o) => o.kind === "mask" && job.links[`output:${o.name}`]
      && (o.source === name || (!o.source && names.length === 1)));
    const canvas = el("canvas", { id: `viewer-${i}`, "aria-label": `Scan ${name} with ${masks.length} mask(s)`,
      tabindex: "0" });
    const legend = el("ul", { class: "legend" }, ...masks.map((m, k) =>
      el("li", {}, el("span", { class: `swatch ${MASK_COLOURS[k % MASK_COLOURS.length]}` }), m.name)));
    const figure = el("figure", { class: "viewer", "data-scan": name },
      el("div", { class: "canvas-box" }, canvas), el("figcaption", {}, el("strong", { text: name }), legend));
    box.append(figure);
    try {
      const nv = new window.niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, isResizeCanvas: true });
      await nv.attachToCanvas(canvas);
      const scanBlob = await (await api(`/v1/volumes/${encodeURIComponent(vol.id)}/file`)).blob();
      const list = [{ url: blobUrl(scanBlob), name: `${name}.nii.gz` }];
      for (const [k, m] of masks.entries()) {
        const blob = await (await api(job.links[`output:${m.name}`])).blob();
        list.push({ url: blobUrl(blob), name: `${m.name}.nii.gz`, colormap: MASK_COLOURS[k % MASK_COLOURS.length],
          opacity: opacity(), cal_min: 0.5, cal_max: 1 });
      }
      await nv.loadVolumes(list);
      nv.setSliceType(nv.sliceTypeMultiplanar);
      state.viewers.push(nv);
      figure.dataset.loaded = "true";
    } catch (err) {
      figure.append(el("p", { class: "problem", text: `Viewer: ${err.message || err}` }));
    }
  }
  linkViewers();
}

$("#opacity").addEventListener("input", () => {
  const value = opacity();
  $("#opacity-value").textContent = `${Math.round(value * 100)} %`;
  $("#opacity").setAttribute("aria-valuetext", `${Math.round(value * 100)} %`);
  for (const nv of state.viewers) {
    for (let i = 1; i < nv.volumes.length; i++) nv.setOpacity(i, value);
  }
});
$("#link-crosshair").addEventListener("change", linkViewers);

// ---- recent analyses -------------------------------------------------------------------------

async function refreshRecent() {
  const list = $("#recent-list");
  try {
    const jobs = await apiJson("/v1/analyses?limit=10");
    list.replaceChildren(...jobs.map((j) => el("li", {},
      el("a", { href: `#job=${j.id}` }, `${j.prompt || "(program)"}`), ` \u2014 ${j.status}, ${j.created_at}`)));
    if (!jobs.length) list.replaceChildren(el("li", { class: "muted", text: "No analyses yet." }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted", text: `Cannot list analyses: ${err.message}` }));
  }
}
$("#refresh-recent").addEventListener("click", refreshRecent);

// ---- batch -----------------------------------------------------------------------------------

async function openBatch(id) {
  clearProblem();
  clearTimeout(state.batchTimer);
  try {
    const batch = await apiJson(`/v1/batches/${encodeURIComponent(id)}`);
    $("#batch-view").hidden = false;
    const done = batch.total - (batch.counts.queued || 0) - (batch.counts.running || 0);
    const counts = Object.entries(batch.counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ");
    $("#batch-progress").textContent = `Batch ${batch.id}: ${batch.status}, ${done} of ${batch.total} finished (${counts})`;
    $("#batch-bar").max = batch.total;
    $("#batch-bar").value = done;
    const results = await apiJson(`/v1/batches/${encodeURIComponent(id)}/results`);
    const tbody = $("#batch-metrics tbody");
    tbody.replaceChildren();
    results.items.forEach((job, i) => {
      const label = batch.labels[i] || `item ${i + 1}`;
      const metrics = (job.result && job.result.metrics) || [];
      const open = el("a", { href: `#job=${job.id}` }, job.id);
      if (!metrics.length) tbody.append(el("tr", {}, el("td", { text: label }), el("td", {}, open),
        el("td", { text: job.status }), el("td", { colspan: "3", class: "muted", text: "no metrics" })));
      for (const m of metrics) {
        tbody.append(el("tr", {}, el("td", { text: label }), el("td", {}, open.cloneNode(true)),
          el("td", { text: job.status }), el("td", { text: m.name }), el("td", { class: "num", text: formatValue(m.value) }),
          el("td", { text: m.unit || "" })));
      }
    });
    $("#batch-csv").onclick = () => download(`/v1/batches/${encodeURIComponent(id)}/metrics.csv`, `${id}-metrics.csv`);
    if (batch.status === "running") state.batchTimer = setTimeout(() => openBatch(id), 1000);
  } catch (err) {
    showProblem(err, `Batch ${id}`);
  }
}

$("#batch-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = `batch=${$("#batch-id").value.trim()}`;
});

// ---- routing ---------------------------------------------------------------------------------

function route() {
  const m = /^#(job|batch)=([A-Za-z0-9_.-]+)$/.exec(location.hash);
  if (!m) return;
  if (m[1] === "job" && state.following !== m[2]) openJob(m[2]);
  if (m[1] === "batch") {
    $("#batch-id").value = m[2];
    openBatch(m[2]);
  }
}

window.addEventListener("hashchange", route);
showKeyState();
refreshRecent();
route();
