// The dashboard's Deployments panel (contract/SERVING.md): one row per deployment with its status,
// version, device, replicas (ready/total), restarts and live figures (req/s and p99 over the last
// minute, from the deployment's stats), refreshed with the other panels; an Undeploy button per
// row, and the Deploy action of a completed training (its row in the task list, its task panel).
// Uses dashboard.js's api(), cell(), banner() and reportError() (loaded after this file; called
// only once the page has started).
"use strict";

const SERVING_ENDED = new Set(["stopped", "failed"]);
// Deployment names: safe in a URL path (protocol/serving.py NAME_RE).
const DEPLOYMENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const fmtRate = (v) => (v == null ? "" : `${(+v).toFixed(1)}`);
const fmtMs = (v) => (v == null ? "–" : `${(+v).toFixed(1)} ms`);

function readyReplicas(dep) {
  const replicas = dep.replicas || [];
  const total = (dep.settings || {}).replicas ?? replicas.length;
  return `${replicas.filter((r) => r.status === "ready").length}/${total}`;
}

// The row of one deployment: built once (the Undeploy button stays the same element, so a click
// is never lost to a refresh), its cells' text updated on every refresh.
const DEPLOYMENT_COLUMNS = ["name", "status", "version", "device", "replicas", "restarts", "rps", "p99", "requests", "task"];

function deploymentRow(body, dep) {
  let row = body.querySelector(`tr[data-name="${CSS.escape(dep.name)}"]`);
  if (row) return row;
  row = document.createElement("tr");
  row.className = "deployment";
  row.dataset.name = dep.name;
  for (const key of DEPLOYMENT_COLUMNS) cell(row, "").dataset.key = key;
  row.querySelector("td[data-key=status]").appendChild(document.createElement("span"));
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "cancel undeploy";
  btn.textContent = "Undeploy";
  btn.addEventListener("click", () => undeploy(row.dataset.name));
  cell(row, "").appendChild(btn);
  return row;
}

function fillDeploymentRow(row, dep) {
  const stats = dep.stats || {};
  const td = (key) => row.querySelector(`td[data-key=${key}]`);
  const set = (key, text) => { td(key).textContent = text; };
  set("name", dep.name);
  const badge = td("status").firstChild;
  badge.className = `status ${dep.status}`;
  badge.textContent = dep.status;
  badge.title = dep.reason || "";
  set("version", `v${dep.version}`);
  set("device", dep.device || "");
  set("replicas", readyReplicas(dep));
  set("restarts", String(dep.restarts ?? 0));
  set("rps", fmtRate(stats.requests_per_s));
  set("p99", fmtMs(stats.p99_ms));
  set("requests", `${stats.requests ?? 0}${stats.errors ? ` (${stats.errors} errors)` : ""}`);
  const task = td("task");
  if (task.dataset.taskId !== dep.task_id) {
    const link = document.createElement("a");
    link.href = taskHash(dep.task_id);
    link.textContent = dep.task_id;
    task.replaceChildren(link);
    task.dataset.taskId = dep.task_id;
  }
  row.dataset.status = dep.status;
  row.querySelector("button.undeploy").hidden = SERVING_ENDED.has(dep.status);
}

async function refreshDeployments() {
  const data = await api("/api/v2/serving");
  const deployments = [...(data.deployments || [])].sort((a, b) => (a.name < b.name ? -1 : 1));
  const body = $("#deployments tbody");
  const stale = new Set([...body.querySelectorAll("tr.deployment")]);
  deployments.forEach((dep, index) => {
    const row = deploymentRow(body, dep);
    stale.delete(row);
    fillDeploymentRow(row, dep);
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
  });
  for (const row of stale) row.remove();
  $("#deployments-empty").hidden = deployments.length > 0;
}

function servingMessage(text, error = false) {
  const out = $("#serving-result");
  out.className = error ? "error" : "";
  out.textContent = text;
}

async function undeploy(name) {
  if (!confirm(`Undeploy ${name}? Requests in flight are answered, then its replicas stop.`)) return;
  try {
    const dep = await api(`/api/v2/serving/${encodeURIComponent(name)}`, { method: "DELETE" });
    servingMessage(`${dep.name}: ${dep.status}`);
    banner("");
  } catch (err) {
    servingMessage(`undeploy ${name} refused: ${err.message}`, true);
  }
  await refreshDeployments().catch(reportError);
}

// A name for a training's deployment: its run name, else its task id, made URL-safe.
function suggestedName(task) {
  const base = String((task.params || {}).name || task.task_id).replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return base.slice(0, 64) || "model";
}

// Deploy a completed training: its best.pth and config.yaml, on the device it trained on.
async function deployTask(task) {
  const name = prompt(`Deploy training ${task.task_id} as:`, suggestedName(task));
  if (name === null) return;
  if (!DEPLOYMENT_NAME.test(name.trim())) {
    servingMessage(`"${name}" is no deployment name: letters, digits, _ . - (up to 64), starting with a letter or digit`, true);
    return;
  }
  const device = task.device && task.device !== "auto" ? task.device : "cpu";
  try {
    const dep = await api("/api/v2/serving/deploy", { method: "POST", body: { name: name.trim(), from_task: task.task_id, device } });
    servingMessage(`deploying ${dep.name} (${dep.status}, task ${dep.task_id})`);
    $("#serving-result").dataset.name = dep.name;
    banner("");
  } catch (err) {
    servingMessage(`deploy refused: ${err.message}`, true);
  }
  $("#serving-panel").scrollIntoView({ block: "nearest" });
  await refreshDeployments().catch(reportError);
}

const canDeploy = (task) => task.task_type === "training" && task.status === "completed";

// The Deploy button of a task (its row in the list, its task panel).
function deployButton(task) {
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "deploy";
  btn.textContent = "Deploy";
  btn.title = "serve this training's best weights (online predictions)";
  btn.addEventListener("click", () => deployTask(state.tasks.get(task.task_id) || task));
  return btn;
}
