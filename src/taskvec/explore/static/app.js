// taskvec explore: the page. User text only ever reaches the page through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let currentJob = null; // this page's run; other pages have their own
const POLL_MS = 300;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function show(box, kind, text) {
  box.appendChild(el("div", text, kind));
}

function visibleToken(token) {
  // spaces and line breaks of tokens made visible
  return token.replace(/ /g, "\u2423").replace(/\n/g, "\\n");
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the explorer server cannot be reached (was it stopped?)");
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new Error(`unexpected answer from the server (HTTP ${response.status})`);
  }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

async function loadInfo() {
  const info = await api("/api/info");
  $("model-info").textContent = `model ${info.model}, ${info.num_layers} layers; at most ` +
    `${info.limits.demonstrations} demonstrations and ${info.limits.queries} queries`;
  const select = $("task");
  for (const t of info.tasks) {
    const option = el("option", `${t.name} (${t.category})`);
    option.value = t.name;
    select.appendChild(option);
  }
}

async function pickTask() {
  const name = $("task").value;
  $("messages").replaceChildren();
  $("task-description").textContent = "";
  if (!name) return;
  try {
    const prefill = await api(`/api/task/${encodeURIComponent(name)}`);
    $("demonstrations").value = prefill.demonstrations;
    $("queries").value = prefill.queries;
    $("task-description").textContent = `${prefill.description} (scoring: ${prefill.scoring})`;
  } catch (err) {
    show($("messages"), "error", err.message);
  }
}

function setRunning(running) {
  $("run").disabled = running;
  $("cancel").disabled = !running;
  $("progress").hidden = !running;
}

async function poll(jobId, onProgress) {
  for (;;) {
    const status = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
    onProgress(status);
    if (["done", "error", "cancelled"].includes(status.state)) return status;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function run() {
  const messages = $("messages");
  messages.replaceChildren();
  setRunning(true);
  $("status").textContent = "submitting";
  try {
    const job = await api("/api/run", {
      task: $("task").value || null, demonstrations: $("demonstrations").value, queries: $("queries").value,
      method: $("method").value,
    });
    currentJob = job.id;
    const status = await poll(job.id, (s) => {
      $("progress").value = s.fraction;
      $("status").textContent = s.message;
    });
    if (status.state === "done") {
      render(status.result, job.id);
      $("status").textContent = `done in ${status.result.seconds} s`;
    } else if (status.state === "cancelled") {
      $("status").textContent = "cancelled";
    } else {
      $("status").textContent = "";
      show(messages, "error", status.error);
    }
  } catch (err) {
    $("status").textContent = "";
    show(messages, "error", err.message);
  } finally {
    setRunning(false);
  }
}

async function cancel() {
  if (!currentJob) return;
  try {
    await api(`/api/jobs/${encodeURIComponent(currentJob)}/cancel`, {});
  } catch (err) {
    show($("messages"), "error", err.message);
  }
}

function answerCell(text, correct) {
  return el("td", text, correct === true ? "ok" : correct === false ? "bad" : "");
}

function render(result, jobId) {
  for (const notice of result.notices) show($("messages"), "notice", notice);
  const method = result.method; // the answers column's method: its key in each answer, label and where it acts
  const count = (key) => result.answers.filter((a) => a.correct[key] === true).length;
  const scored = result.answers.filter((a) => a.correct.icl !== null).length;
  const best = `Best ${method.key === "task_vector" ? "" : "task-vector "}layer ${result.best_layer} of ` +
    `${result.num_layers} (by ${result.best_layer_basis}).`;
  $("summary").textContent = scored
    ? `correct of ${scored} scored: ICL ${count("icl")}, ${method.label} ${count(method.key)}, ` +
      `zero-shot ${count("zero_shot")}. ${best}`
    : best;
  $("tv-header").textContent = `${method.label} @ ${method.where}`;
  const body = $("answers").tBodies[0];
  body.replaceChildren();
  for (const a of result.answers) {
    const row = el("tr");
    row.append(el("td", a.query), el("td", a.gold ?? ""), answerCell(a.icl, a.correct.icl),
      answerCell(a[method.key], a.correct[method.key]), answerCell(a.zero_shot, a.correct.zero_shot));
    body.appendChild(row);
  }
  $("download").href = `/api/jobs/${encodeURIComponent(jobId)}/task_vector`;
  $("download").download = `${method.key}.safetensors`;
  $("download").textContent = `Download the ${method.label} (.safetensors)`;
  renderHeatmap(result);
  renderProjection(result);
  $("results").hidden = false;
}

function renderHeatmap(result) {
  const h = result.heatmap;
  const table = $("heatmap");
  table.replaceChildren();
  const head = el("tr");
  head.append(el("th", "layer"));
  for (const q of h.queries) head.append(el("th", q));
  head.append(el("th", "accuracy"));
  table.append(head);
  h.layers.forEach((layer, i) => {
    const row = el("tr", undefined, layer === result.best_layer ? "best" : "");
    row.dataset.layer = layer;
    row.append(el("th", layer === result.best_layer ? `\u2605 ${layer}` : `${layer}`));
    h.predictions[i].forEach((prediction, j) => {
      const correct = h.correct[i][j];
      const prob = h.gold_prob[i][j];
      const cell = el("td", prediction, "cell" + (correct === false ? " wrong" : "") + (correct === null ? " unscored" : ""));
      cell.dataset.correct = correct === null ? "" : String(correct);
      cell.dataset.prob = prob === null ? "" : prob.toFixed(4);
      if (prob !== null) {
        cell.style.backgroundColor = `hsl(120, 55%, ${Math.round(97 - 47 * prob)}%)`;
        cell.title = `p(gold first token) = ${prob.toFixed(3)}`;
      }
      row.append(cell);
    });
    const accuracy = h.accuracy[i];
    row.append(el("td", accuracy === null ? "" : accuracy.toFixed(2)));
    table.append(row);
  });
}

function renderProjection(result) {
  const table = $("projection");
  table.replaceChildren();
  result.projection.forEach((tokens, layer) => {
    const row = el("tr", undefined, layer === result.best_layer ? "best" : "");
    row.append(el("th", layer === result.best_layer ? `\u2605 ${layer}` : `${layer}`));
    for (const t of tokens) {
      const cell = el("td", visibleToken(t.token));
      cell.title = `logit ${t.logit}`;
      row.append(cell);
    }
    table.append(row);
  });
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function applyFile() {
  const messages = $("apply-messages");
  messages.replaceChildren();
  $("apply-answers").hidden = true;
  const file = $("tv-file").files[0];
  if (!file) {
    show(messages, "error", "choose a task vector file (.safetensors) to apply");
    return;
  }
  $("apply").disabled = true;
  $("apply-status").textContent = "applying";
  try {
    const job = await api("/api/apply", { file: await readFile(file), queries: $("apply-queries").value });
    const status = await poll(job.id, (s) => { $("apply-status").textContent = s.message; });
    if (status.state !== "done") {
      $("apply-status").textContent = "";
      show(messages, "error", status.error || status.state);
      return;
    }
    const result = status.result;
    for (const notice of result.notices) show(messages, "notice", notice);
    const method = result.method;
    $("apply-status").textContent = `${method.label} applied at ${method.where} ` +
      `(vector of ${result.model ?? "unknown model"})`;
    $("apply-tv-header").textContent = `${method.label} @ ${method.where}`;
    const body = $("apply-answers").tBodies[0];
    body.replaceChildren();
    for (const a of result.answers) {
      const row = el("tr");
      row.append(el("td", a.query), el("td", a.gold ?? ""), answerCell(a.task_vector, a.correct.task_vector),
        answerCell(a.zero_shot, a.correct.zero_shot));
      body.appendChild(row);
    }
    $("apply-answers").hidden = false;
  } catch (err) {
    $("apply-status").textContent = "";
    show(messages, "error", err.message);
  } finally {
    $("apply").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("task").addEventListener("change", pickTask);
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  $("apply").addEventListener("click", applyFile);
  loadInfo().catch((err) => show($("messages"), "error", err.message));
});
