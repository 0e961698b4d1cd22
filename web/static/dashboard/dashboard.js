// The RFUAV dashboard: device status, start forms, the task list, the deployments (serving.js)
// and one task's live log and charts. Everything goes through the HTTP API (API.md); the log is
// the task's SSE stream read with fetch(), not EventSource, because EventSource cannot send the
// Authorization header.
"use strict";

const FINAL = new Set(["completed", "failed", "cancelled"]);
const REFRESH_MS = 2000;
const MAX_LOG_LINES = 2000;
const MAX_COMPARE = 4;       // trainings on one compare chart
const LOGS_PAGE = 20000;     // events per GET .../logs request of the compare view
const $ = (sel) => document.querySelector(sel);

const state = {
  token: localStorage.getItem("rfuav.token") || "",
  selected: null,      // task id shown in the task panel
  stream: null,        // AbortController of the current log stream
  lastSeq: 0,          // highest event seq shown (SSE id), for resuming
  finalEvent: null,    // the selected task's final status event, once seen
  tasks: new Map(),    // task id -> TaskResponse
  best: null,          // {epoch, val_acc} of the selected task's epoch whose confusion matrix is shown
  compare: new Set(),  // training task ids ticked for the compare view (at most MAX_COMPARE)
};

class ApiError extends Error {
  constructor(code, msg) { super(msg); this.code = code; }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}

// One API call: returns the envelope's data or throws ApiError(code, msg).
async function api(path, { method = "GET", body } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `service unreachable: ${err.message}`);
  }
  let env;
  try { env = await resp.json(); } catch { throw new ApiError(resp.status, `HTTP ${resp.status}: not JSON`); }
  if (!resp.ok) throw new ApiError(resp.status, env.msg || `HTTP ${resp.status}`);
  return env.data;
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function reportError(err) {
  if (err.code === 401) banner("The service wants an API token: enter it at the top right.");
  else if (err.code === 0 || err.code === 503) banner(err.message);
  else banner(`${err.message}`);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

const fmtBytes = (n) => (n == null ? "" : n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)}G` : `${(n / (1 << 20)).toFixed(0)}M`);
const fmtAge = (s) => (s == null ? "" : s >= 3600 ? `${(s / 3600).toFixed(1)}h` : s >= 60 ? `${(s / 60).toFixed(1)}m` : `${Math.round(s)}s`);

// ---- status panel -----------------------------------------------------------------------

async function refreshHealth() {
  const h = $("#health");
  try {
    const data = await api("/api/v1/health");
    h.textContent = `${data.status} · v${data.version}`;
    h.className = `badge ${data.status}`;
    $("#executor").textContent = executorText(data.executor);
  } catch (err) {
    h.textContent = "unreachable";
    h.className = "badge unreachable";
    throw err;
  }
}

// What runs the jobs: this host (warm or cold starts) or a Ray cluster and its free resources.
function executorText(ex) {
  if (!ex) return "";
  if (ex.executor !== "ray") return `executor: local (${ex.mode} start)`;
  const c = ex.cluster || {};
  const free = (k) => `${k} ${(c.available || {})[k] ?? 0}/${(c.total || {})[k] ?? 0}`;
  return `executor: Ray (${ex.address}) · ${c.nodes ?? "?"} nodes · free ${free("CPU")}, ${free("GPU")}`;
}

// The device menus: cuda (the least-loaded GPU), cpu, then each GPU the service reports.
function fillDeviceMenus(gpu) {
  const names = ["cuda", "cpu", ...(gpu.devices || []).map((d) => d.device_name)];
  for (const select of document.querySelectorAll("select[name=device]")) {
    if (select.dataset.devices === names.join(" ")) continue; // unchanged: leave an open menu alone
    const current = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name, false, name === current)));
    select.dataset.devices = names.join(" ");
  }
}

async function refreshGpu() {
  const gpu = await api("/api/v2/resources/gpu");
  fillDeviceMenus(gpu);
  const box = $("#gpu");
  box.replaceChildren();
  if (!gpu.available || !gpu.devices.length) {
    box.textContent = `No GPU: jobs run on the CPU (PyTorch ${gpu.pytorch_version ?? "?"}).`;
    return;
  }
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>id</th><th>name</th><th>memory free / total</th><th>util %</th><th>tasks</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const d of gpu.devices) {
    const r = document.createElement("tr");
    cell(r, String(d.id));
    cell(r, d.device_name || d.name);
    cell(r, `${(d.free_memory_gb ?? 0).toFixed(1)} / ${(d.total_memory_gb ?? 0).toFixed(1)} GB`);
    cell(r, String(d.utilization ?? ""));
    const t = d.current_tasks || {};
    cell(r, `${t.training ?? 0} train, ${t.inference ?? 0} infer`);
    body.appendChild(r);
  }
  table.appendChild(body);
  box.appendChild(table);
}

async function refreshResources() {
  const res = await api("/api/v2/resources");
  const body = $("#resources tbody");
  body.replaceChildren();
  for (const [dev, limits] of Object.entries(res.limits || {})) {
    const usage = (res.device_usage || {})[dev] || {};
    const r = document.createElement("tr");
    cell(r, dev);
    for (const type of ["training", "inference", "preprocessing"]) {
      cell(r, limits[type] == null ? "" : `${usage[type] ?? 0} / ${limits[type]}`);
    }
    body.appendChild(r);
  }
  const queued = res.queue_length ?? "?";
  $("#queue").textContent = `running ${res.running ?? "?"}, queued ${queued}`;
}

async function refreshRunners() {
  const data = await api("/api/v2/runners");
  const body = $("#runners tbody");
  body.replaceChildren();
  for (const run of data.runners || []) {
    const procs = run.processes || [];
    const main = procs.find((p) => p.pid === run.pid) || procs[0] || {};
    const r = document.createElement("tr");
    cell(r, String(run.pid));
    cell(r, run.task_id);
    cell(r, run.task_type);
    cell(r, run.node ? `${run.device} on ${run.node}` : run.device);
    cell(r, procs.reduce((s, p) => s + (p.cpu_percent || 0), 0).toFixed(0));
    cell(r, fmtBytes(procs.reduce((s, p) => s + (p.rss || 0), 0)));
    cell(r, String(main.threads ?? ""));
    cell(r, String(Math.max(0, procs.length - 1)));
    cell(r, fmtAge(run.age));
    body.appendChild(r);
  }
}

// ---- tasks ------------------------------------------------------------------------------

async function refreshTasks() {
  const data = await api("/api/v2/tasks");
  // Every "<type>_tasks" group: the contract's three and any addition (diagnostic).
  const all = Object.entries(data)
    .filter(([key, group]) => key.endsWith("_tasks") && Array.isArray(group))
    .flatMap(([, group]) => group)
    .sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  state.tasks = new Map(all.map((t) => [t.task_id, t]));
  const body = $("#tasks tbody");
  const rows = new Map([...body.querySelectorAll("tr.task")].map((r) => [r.dataset.taskId, r]));
  all.forEach((task, index) => {
    let row = rows.get(task.task_id);
    if (!row) {
      row = document.createElement("tr");
      row.className = "task";
      row.dataset.taskId = task.task_id;
      // The id is a link to the task's page (#task=<id>); a click elsewhere on the row opens it too.
      row.addEventListener("click", (ev) => {
        if (!ev.target.closest("button, a, input")) selectTask(task.task_id);
      });
    }
    rows.delete(task.task_id);
    fillTaskRow(row, task);
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
  });
  for (const stale of rows.values()) stale.remove();
  for (const id of state.compare) if (!state.tasks.has(id)) state.compare.delete(id);
  updateCompareTools();
  // The record turns final when the runner is reaped, a moment after its final event: never
  // let a poll from that moment take the panel back to "running".
  if (state.selected && state.tasks.has(state.selected) && !state.finalEvent) showTaskStatus(state.tasks.get(state.selected));
}

function fillTaskRow(row, task) {
  row.classList.toggle("selected", task.task_id === state.selected);
  // Rebuild a row only when what it shows changed: a row replaced under the pointer between
  // mousedown and mouseup would swallow the click.
  const shown = JSON.stringify([task.status, task.progress, task.device, task.job, task.created_at]);
  if (row.dataset.shown === shown) return;
  row.dataset.shown = shown;
  row.replaceChildren();
  row.dataset.status = task.status;
  const pick = cell(row, "", "pick");
  if (task.task_type === "training") {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "compare-pick";
    box.title = "compare this training's validation curves with others";
    box.checked = state.compare.has(task.task_id);
    box.addEventListener("change", () => pickForCompare(task.task_id, box.checked));
    pick.appendChild(box);
  }
  const link = document.createElement("a");
  link.href = taskHash(task.task_id);
  link.textContent = task.task_id;
  cell(row, "", "id").appendChild(link);
  cell(row, task.job && task.job !== task.task_type ? `${task.task_type}/${task.job}` : task.task_type);
  const status = cell(row, "");
  const badge = document.createElement("span");
  badge.className = `status ${task.status}`;
  badge.textContent = task.status;
  status.appendChild(badge);
  const prog = cell(row, "");
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = task.progress || 0;
  prog.appendChild(bar);
  prog.append(` ${task.progress || 0}%`);
  cell(row, task.device || "");
  cell(row, (task.created_at || "").replace("T", " ").slice(0, 19));
  const actions = cell(row, "");
  if (!FINAL.has(task.status)) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "cancel";
    btn.textContent = "Cancel";
    btn.addEventListener("click", () => cancelTask(task.task_id));
    actions.appendChild(btn);
  }
  if (canDeploy(task)) actions.appendChild(deployButton(task));  // serving.js
}

async function cancelTask(id) {
  try {
    await api(`/api/v2/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    banner("");
    await refreshTasks();
  } catch (err) {
    reportError(err);
  }
}

// ---- one task: status, log, charts ------------------------------------------------------

const charts = {
  epochLoss: new LineChart($("#chart-epoch-loss"), [{ name: "train_loss", color: "#2458c6" }, { name: "val_loss", color: "#d9822b" }]),
  epochAcc: new LineChart($("#chart-epoch-acc"), [{ name: "train_acc", color: "#2458c6" }, { name: "val_acc", color: "#1f7a3a" }]),
  stepLoss: new LineChart($("#chart-step-loss"), [{ name: "loss", color: "#7a3fb0" }], { x: "step" }),
};

// The confusion matrix and per-class table of the epoch with the best val_acc so far (the
// epoch of best.pth: a later epoch replaces it only when strictly better).
function showClassReport(event) {
  const m = event.metrics || {};
  if (!Array.isArray(event.confusion) || !Number.isFinite(m.val_acc)) return;
  if (state.best && !(m.val_acc > state.best.val_acc)) return;
  state.best = { epoch: m.epoch ?? event.epoch, val_acc: m.val_acc };
  renderConfusion($("#confusion"), event.confusion, event.class_names);
  renderPerClass($("#per-class"), event.per_class, event.class_names);
  $("#confusion").dataset.epoch = String(state.best.epoch);
  $("#confusion-epoch").textContent = `epoch ${state.best.epoch} (best val_acc ${m.val_acc.toFixed(2)}%)`;
  $("#class-report").hidden = false;
}

function showTaskStatus(task) {
  const s = $("#task-status");
  s.textContent = task.status;
  s.className = `status ${task.status}`;
  $("#task-panel").dataset.status = task.status;
  $("#task-message").textContent = task.message || "";
  $("#task-cancel").hidden = FINAL.has(task.status);
  $("#task-deploy").hidden = !canDeploy(task);
}

const taskHash = (id) => `#task=${encodeURIComponent(id)}`;

// The task named by the page's address (#task=<id>), or null.
function hashTask() {
  const m = /^#task=(.+)$/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch { return null; }
}

function selectTask(id) {
  if (state.stream) state.stream.abort();
  state.selected = id;
  // The address names the task shown (replaceState: no hashchange, no history entry).
  if (location.hash !== taskHash(id)) history.replaceState(null, "", taskHash(id));
  state.lastSeq = 0;
  state.finalEvent = null;
  $("#task-panel").hidden = false;
  $("#task-title").textContent = id;
  $("#task-log").replaceChildren();
  Object.values(charts).forEach((c) => c.reset());
  state.best = null;
  $("#class-report").hidden = true;
  for (const r of document.querySelectorAll("#tasks tr.task")) r.classList.toggle("selected", r.dataset.taskId === id);
  const task = state.tasks.get(id);
  if (task) showTaskStatus(task);
  followLog(id);
}

function handleEvent(id, event) {
  if (id !== state.selected) return;
  if (typeof event.seq === "number") {
    if (event.seq <= state.lastSeq) return;  // a replayed duplicate after a reconnect
    state.lastSeq = event.seq;
  }
  const log = $("#task-log");
  const li = document.createElement("li");
  li.className = event.level || "INFO";
  li.value = event.seq || log.children.length + 1;
  li.textContent = `${(event.timestamp || "").slice(11, 19)} ${event.level} ${event.message}`;
  log.appendChild(li);
  while (log.children.length > MAX_LOG_LINES) log.firstChild.remove();
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;

  const m = event.metrics;
  if (m) {
    if (event.stage === "epoch_end" || (m.val_loss !== undefined && m.epoch !== undefined)) {
      const epoch = m.epoch ?? event.epoch;
      charts.epochLoss.add("train_loss", epoch, m.train_loss);
      charts.epochLoss.add("val_loss", epoch, m.val_loss);
      charts.epochAcc.add("train_acc", epoch, m.train_acc);
      charts.epochAcc.add("val_acc", epoch, m.val_acc);
      if (event.stage === "epoch_end") showClassReport(event);
    } else if (typeof event.step === "number") {
      charts.stepLoss.add("loss", event.step, m.loss ?? m.train_loss);
    }
  }
  if (event.kind === "status" && event.status) {
    const task = { ...(state.tasks.get(id) || {}), status: event.status, message: event.message };
    if (FINAL.has(event.status)) state.finalEvent = event;
    showTaskStatus(task);
  }
}

// Read the task's SSE stream; resume after a disconnect from the last seq until it ends.
async function followLog(id) {
  const controller = new AbortController();
  state.stream = controller;
  const logState = $("#log-state");
  let ended = false;
  while (!controller.signal.aborted && !ended) {
    logState.textContent = "(live)";
    try {
      const resp = await fetch(`/api/v2/tasks/${encodeURIComponent(id)}/events`, {
        headers: headers({ Accept: "text/event-stream", ...(state.lastSeq ? { "Last-Event-ID": String(state.lastSeq) } : {}) }),
        signal: controller.signal,
      });
      if (!resp.ok) {
        const env = await resp.json().catch(() => ({}));
        throw new ApiError(resp.status, env.msg || `HTTP ${resp.status}`);
      }
      if (resp.status === 204) { ended = true; break; }  // resumed after the final event
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;  // a heartbeat comment or an id-only frame
          try { handleEvent(id, JSON.parse(data)); } catch (err) { console.warn("bad event", err, data); }
        }
      }
      // The server closes the stream when the task has ended; otherwise it was a disconnect.
      ended = state.finalEvent !== null && state.selected === id;
      if (!ended) {
        try {
          const fresh = await api(`/api/v2/tasks/${encodeURIComponent(id)}`);
          state.tasks.set(id, fresh);
          ended = FINAL.has(fresh.status);
        } catch (err) { /* reconnect below */ }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err.code === 404 || err.code === 401) { logState.textContent = `(${err.message})`; reportError(err); return; }
    }
    if (!ended && !controller.signal.aborted) {
      logState.textContent = "(reconnecting…)";
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  if (ended) logState.textContent = "(ended)";
}

// ---- compare trainings -------------------------------------------------------------------

const compareCharts = {};

function pickForCompare(id, on) {
  if (on && state.compare.size >= MAX_COMPARE) {
    updateCompareTools();  // unticks it again
    return;
  }
  if (on) state.compare.add(id);
  else state.compare.delete(id);
  updateCompareTools();
}

// The ticks, the button and the hint follow state.compare.
function updateCompareTools() {
  const n = state.compare.size;
  for (const box of document.querySelectorAll("#tasks input.compare-pick")) {
    const id = box.closest("tr").dataset.taskId;
    box.checked = state.compare.has(id);
    box.disabled = !box.checked && n >= MAX_COMPARE;
  }
  $("#compare").disabled = n < 2;
  $("#compare").textContent = n ? `Compare ${n}` : "Compare";
  $("#compare-hint").textContent = n === 0 ? "tick two to four trainings to compare their validation curves"
    : n === 1 ? "tick one more training (up to four)" : `${n} of at most ${MAX_COMPARE} trainings ticked`;
}

// Every stored event of a task (GET .../logs, page by page).
async function taskLogs(id) {
  let events = [];
  for (let after = 0; ;) {
    const page = await api(`/api/v2/tasks/${encodeURIComponent(id)}/logs?after=${after}&limit=${LOGS_PAGE}`);
    events = events.concat(page);
    if (page.length < LOGS_PAGE) return events;
    after = page[page.length - 1].seq;
  }
}

// The ticked trainings' val_acc and val_loss per epoch on two charts, one series per task.
async function showCompare() {
  const ids = [...state.compare];
  const panel = $("#compare-panel");
  const msg = $("#compare-message");
  panel.hidden = false;
  $("#compare-tasks").textContent = ids.join(", ");
  msg.textContent = "loading…";
  try {
    const logs = await Promise.all(ids.map(taskLogs));
    const named = (id) => state.tasks.get(id)?.params?.name;
    const series = ids.map((id, i) => ({ name: id, label: named(id) ? `${id} (${named(id)})` : id, color: PALETTE[i % PALETTE.length] }));
    compareCharts.acc ??= new LineChart($("#compare-val-acc"), [], { width: 560 });
    compareCharts.loss ??= new LineChart($("#compare-val-loss"), [], { width: 560 });
    compareCharts.acc.setSeries(series);
    compareCharts.loss.setSeries(series);
    const empty = [];
    ids.forEach((id, i) => {
      const epochs = epochMetrics(logs[i]);
      if (!epochs.size) empty.push(id);
      for (const [epoch, m] of epochs) {
        compareCharts.acc.add(id, epoch, m.val_acc);
        compareCharts.loss.add(id, epoch, m.val_loss);
      }
    });
    msg.textContent = empty.length ? `no finished epoch yet: ${empty.join(", ")}` : "";
    panel.scrollIntoView({ block: "nearest" });
  } catch (err) {
    msg.textContent = `could not load the logs: ${err.message}`;
  }
}

// ---- forms ------------------------------------------------------------------------------

function formBody(form) {
  const body = {};
  for (const input of form.querySelectorAll("[name]")) {
    const kind = input.dataset.type;
    if (kind === "list") {
      body[input.name] = body[input.name] || [];
      if (input.checked) body[input.name].push(input.value);
      continue;
    }
    if (kind === "bool") { body[input.name] = input.checked; continue; }
    const raw = input.value.trim();
    if (raw === "") continue;  // unset optional field: the service's default applies
    body[input.name] = kind === "int" ? parseInt(raw, 10) : kind === "float" ? parseFloat(raw) : raw;
  }
  return body;
}

async function submitForm(ev) {
  ev.preventDefault();
  const form = ev.target;
  const out = $("#form-result");
  out.className = "";
  out.textContent = "submitting…";
  try {
    const data = await api(form.dataset.route, { method: "POST", body: formBody(form) });
    out.textContent = `started ${data.task_id} (${data.status})`;
    out.dataset.taskId = data.task_id;
    banner("");
    await refreshTasks();
    selectTask(data.task_id);
  } catch (err) {
    out.className = "error";
    out.textContent = `refused: ${err.message}`;
  }
}

function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const f of document.querySelectorAll(".task-form")) f.hidden = f.id !== `form-${name}`;
}

async function loadModels() {
  try {
    const info = await api("/api/v1/info");
    const select = $("#form-training select[name=model]");
    const current = select.value;
    select.replaceChildren(...(info.supported_models || [current]).map((name) => new Option(name, name, false, name === current)));
  } catch (err) { /* keep the default list; the refresh loop reports the error */ }
}

// ---- start ------------------------------------------------------------------------------

async function refreshLoop() {
  try {
    await refreshHealth();
    await Promise.all([refreshTasks(), refreshResources(), refreshRunners(), refreshDeployments()]);
    banner("");
  } catch (err) {
    reportError(err);
  }
  setTimeout(refreshLoop, REFRESH_MS);
}

function start() {
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token").value.trim();
    localStorage.setItem("rfuav.token", state.token);
    refreshGpu().catch(reportError);
    loadModels();
  });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  for (const f of document.querySelectorAll(".task-form")) f.addEventListener("submit", submitForm);
  $("#task-cancel").addEventListener("click", () => state.selected && cancelTask(state.selected));
  $("#task-deploy").addEventListener("click", () => state.tasks.has(state.selected) && deployTask(state.tasks.get(state.selected)));
  $("#compare").addEventListener("click", showCompare);
  $("#compare-close").addEventListener("click", () => { $("#compare-panel").hidden = true; });
  // A task's page: its link in the list, a bookmark, a reload, the back button.
  window.addEventListener("hashchange", () => {
    const id = hashTask();
    if (id && id !== state.selected) selectTask(id);
  });
  if (hashTask()) selectTask(hashTask());
  loadModels();
  refreshGpu().catch(reportError);
  setInterval(() => refreshGpu().catch(() => {}), 10000);
  refreshLoop();
}

start();
