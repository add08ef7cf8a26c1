// The stageline console: plain JavaScript, no framework, no build step.
// Reads: /console/api/* (JSON). Commands: the CodePipeline API itself (POST / with
// X-Amz-Target, JSON 1.1), SigV4-signed here when the server has access keys.
// Live: an EventSource on /console/api/events; each "change" refetches the current view.
"use strict";

const TARGET = "CodePipeline_20150709.";
const state = {
  auth: false, region: "us-east-1", creds: null, route: null, es: null, timer: null,
  open: new Set(), closed: new Set(), // attempts whose output the user opened or closed
};
const $main = () => document.getElementById("main");

// --- small helpers ----------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const short = (id) => (id ? id.slice(0, 8) : "–");
const badge = (status) => h("span", { class: `badge s-${status || "none"}` }, status || "not run");
const enc = encodeURIComponent;

function toast(message, error = false) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 6000);
}

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) throw Object.assign(new Error("login"), { login: true });
  if (!r.ok) throw new Error(`${body.__type || r.status}: ${body.message || ""}`);
  return body;
}

function signed(method, path, body, headers) {
  if (!state.auth || !state.creds) return headers;
  return SigV4.sign({
    method, path, body, headers, accessKeyId: state.creds.akid, secret: state.creds.secret,
    region: state.region, service: "codepipeline", host: location.host,
  });
}

// A CodePipeline operation through the real API (the same one boto3 and aws-cli use).
async function api(operation, input) {
  const body = JSON.stringify(input);
  const headers = signed("POST", "/", body, {
    "content-type": "application/x-amz-json-1.1",
    "x-amz-target": TARGET + operation,
  });
  const r = await fetch("/", { method: "POST", body, headers, credentials: "same-origin" });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${out.__type || r.status}: ${out.message || ""}`);
  return out;
}

async function command(label, operation, input) {
  try {
    await api(operation, input);
    toast(`${label}: accepted`);
  } catch (err) {
    toast(`${label}: ${err.message}`, true);
  }
  refresh();
}

// --- login ------------------------------------------------------------------------------------

function loginView(message) {
  const akid = h("input", { id: "akid", name: "akid", autocomplete: "username", required: true });
  const secret = h("input", { id: "secret", name: "secret", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    h("p", {}, "This server requires an access key. Requests are signed (SigV4) in this browser; the secret never leaves it."),
    message ? h("p", { role: "alert", class: "reason" }, message) : null,
    h("label", { for: "akid" }, "Access key ID"), akid,
    h("label", { for: "secret" }, "Secret access key"), secret,
    h("button", { type: "submit", class: "primary" }, "Log in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    state.creds = { akid: akid.value.trim(), secret: secret.value };
    const body = "{}";
    const headers = signed("POST", "/console/api/login", body, { "content-type": "application/json" });
    const r = await fetch("/console/api/login", { method: "POST", body, headers, credentials: "same-origin" });
    if (!r.ok) {
      const out = await r.json().catch(() => ({}));
      state.creds = null;
      $main().replaceChildren(loginView(`${out.__type || r.status}: ${out.message || "login failed"}`));
      document.getElementById("akid").focus();
      return;
    }
    sessionStorage.setItem("stageline.creds", JSON.stringify(state.creds));
    route();
  });
  return form;
}

// --- views ------------------------------------------------------------------------------------

async function listView() {
  const doc = await getJSON("/console/api/pipelines");
  const rows = doc.pipelines.map((p) =>
    h("tr", { "data-pipeline": p.name },
      h("td", {}, h("a", { href: `#/p/${enc(p.name)}` }, p.name)),
      h("td", {}, p.latest ? badge(p.latest.status) : "no executions"),
      h("td", {}, p.latest ? h("a", { href: `#/p/${enc(p.name)}/x/${enc(p.latest.pipelineExecutionId)}` }, short(p.latest.pipelineExecutionId)) : "–"),
      h("td", {}, p.latest ? when(p.latest.lastUpdateTime) : "–"),
      h("td", {}, p.stages.join(" → "))));
  return [
    h("h1", {}, "Pipelines"),
    rows.length
      ? h("table", {}, h("caption", { class: "meta" }, "Every pipeline with its latest execution"),
        h("thead", {}, h("tr", {}, ["Pipeline", "Latest status", "Execution", "Updated", "Stages"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, rows))
      : h("p", {}, "No pipelines yet. Create one with aws codepipeline create-pipeline (see the README)."),
  ];
}

function retryButtons(pipeline, stage, eid, retry) {
  if (!retry || !eid) return null;
  const out = [];
  for (const [mode, label] of [["FAILED_ACTIONS", "Retry failed actions"], ["ALL_ACTIONS", "Retry all actions"]]) {
    const opt = retry[mode];
    const reasonId = `why-${stage}-${mode}`.replace(/[^A-Za-z0-9_-]/g, "_");
    out.push(h("div", {},
      h("button", {
        type: "button", class: opt.allowed ? "primary" : null, disabled: !opt.allowed,
        "data-retry": mode, "aria-describedby": opt.allowed ? null : reasonId,
        onclick: () => command(`${label} (${stage})`, "RetryStageExecution",
          { pipelineName: pipeline, stageName: stage, pipelineExecutionId: eid, retryMode: mode }),
      }, label),
      opt.allowed ? null : h("p", { class: "reason", id: reasonId }, `${opt.error}: ${opt.reason}`)));
  }
  return h("div", { class: "buttons" }, out);
}

function approvalButtons(pipeline, stage, approvals) {
  return (approvals || []).map((a) => h("div", { class: "buttons", "data-approval": a.actionName },
    h("button", { type: "button", class: "primary", onclick: () => command(`Approve ${a.actionName}`, "PutApprovalResult",
      { pipelineName: pipeline, stageName: stage, actionName: a.actionName, token: a.token, result: { status: "Approved", summary: "approved in the console" } }) },
      `Approve ${a.actionName}`),
    h("button", { type: "button", class: "danger", onclick: () => command(`Reject ${a.actionName}`, "PutApprovalResult",
      { pipelineName: pipeline, stageName: stage, actionName: a.actionName, token: a.token, result: { status: "Rejected", summary: "rejected in the console" } }) },
      `Reject ${a.actionName}`)));
}

function stopButton(pipeline, eid) {
  return h("button", { type: "button", class: "danger", "data-stop": eid,
    onclick: () => command("Stop", "StopPipelineExecution", { pipelineName: pipeline, pipelineExecutionId: eid, abandon: false, reason: "stopped in the console" }) },
    "Stop execution");
}

function retryMeta(meta) {
  if (!meta) return null;
  const parts = [];
  if (meta.manualStageRetryAttempt) parts.push(`manual retries: ${meta.manualStageRetryAttempt}`);
  if (meta.autoStageRetryAttempt) parts.push(`automatic retries: ${meta.autoStageRetryAttempt}`);
  if (meta.latestRetryTrigger) parts.push(`last: ${meta.latestRetryTrigger}`);
  if (meta.pendingRetry) parts.push(`pending: ${meta.pendingRetry}`);
  return parts.length ? h("p", { class: "meta", "data-retry-meta": true }, parts.join(" · ")) : null;
}

async function pipelineView(name) {
  const doc = await getJSON(`/console/api/pipelines/${enc(name)}`);
  const extra = Object.fromEntries(doc.console.map((c) => [c.stageName, c]));
  const boxes = doc.state.stageStates.map((s) => {
    const latest = s.latestExecution || {};
    const x = extra[s.stageName] || {};
    const status = latest.status;
    return h("section", { class: `stage s-${status || "none"}`, "data-stage": s.stageName, "data-status": status || "", "aria-labelledby": `st-${s.stageName}` },
      h("header", {}, h("h3", { id: `st-${s.stageName}` }, s.stageName), badge(status)),
      latest.pipelineExecutionId
        ? h("p", { class: "meta" }, "execution ", h("a", { href: `#/p/${enc(name)}/x/${enc(latest.pipelineExecutionId)}` }, short(latest.pipelineExecutionId)))
        : h("p", { class: "meta" }, "not entered yet"),
      retryMeta(s.retryStageMetadata),
      h("ul", { class: "actions", "aria-label": `Actions of ${s.stageName}` }, s.actionStates.map((a) => {
        const ax = a.latestExecution || {};
        const n = (x.attempts || {})[a.actionName] || 0;
        return h("li", { class: `action s-${ax.status || "none"}`, "data-action": a.actionName, "data-status": ax.status || "" },
          h("span", { class: "name" }, a.actionName), " ", badge(ax.status),
          n ? h("span", { class: "meta" }, ` attempt ${n}`) : null,
          ax.summary ? h("p", { class: "meta" }, ax.summary) : null,
          ax.errorDetails ? h("p", { class: "meta" }, `${ax.errorDetails.code}: ${ax.errorDetails.message}`) : null);
      })),
      retryButtons(name, s.stageName, latest.pipelineExecutionId, x.retry),
      approvalButtons(name, s.stageName, x.approvals));
  });
  const history = doc.executions.map((e) => h("tr", {},
    h("td", {}, h("a", { href: `#/p/${enc(name)}/x/${enc(e.pipelineExecutionId)}` }, e.pipelineExecutionId)),
    h("td", {}, badge(e.status)), h("td", {}, when(e.startTime)), h("td", {}, when(e.lastUpdateTime)),
    h("td", {}, e.trigger ? `${e.trigger.triggerType} ${e.trigger.triggerDetail || ""}` : ""),
    h("td", {}, e.status === "InProgress" ? stopButton(name, e.pipelineExecutionId) : null)));
  return [
    h("p", {}, h("a", { href: "#/" }, "← Pipelines")),
    h("h1", {}, name, " ", h("span", { class: "meta" }, `version ${doc.version}, ${doc.executionMode}`)),
    h("div", { class: "stages" }, boxes),
    h("h2", {}, "Execution history"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Execution", "Status", "Started", "Updated", "Trigger", ""].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, history)),
  ];
}

function attemptView(a, i, latest) {
  const out = [];
  if (a.summary) out.push(`summary: ${a.summary}`);
  if (a.errorCode || a.errorMessage) out.push(`error: ${a.errorCode || ""} ${a.errorMessage || ""}`);
  if (a.externalExecutionId) out.push(`external id: ${a.externalExecutionId}`);
  if (a.outputVariables) out.push(`output variables: ${JSON.stringify(a.outputVariables)}`);
  return h("li", { class: `action s-${a.status}`, "data-attempt": i + 1, "data-status": a.status },
    h("span", { class: "name" }, `attempt ${i + 1}`), " ", badge(a.status),
    h("span", { class: "meta" }, ` ${short(a.actionExecutionId)} · ${when(a.startTime)} → ${when(a.lastUpdateTime)}${a.worker ? " · " + a.worker : ""}`),
    h("details", {
      open: state.open.has(a.actionExecutionId) || (latest && !state.closed.has(a.actionExecutionId)),
      ontoggle: (e) => {
        const set = e.target.open ? state.open : state.closed;
        (e.target.open ? state.closed : state.open).delete(a.actionExecutionId);
        set.add(a.actionExecutionId);
      },
    }, h("summary", {}, `Output of attempt ${i + 1}`),
      h("pre", { "data-output": true }, out.join("\n") || "(no output recorded)")));
}

async function executionView(name, eid) {
  const [doc, tl] = await Promise.all([
    getJSON(`/console/api/pipelines/${enc(name)}/executions/${enc(eid)}`),
    getJSON(`/console/api/pipelines/${enc(name)}/executions/${enc(eid)}/timeline`),
  ]);
  const stages = doc.stages.map((s) => h("section", { class: `stage s-${s.status || "none"}`, "data-stage": s.stageName, "data-status": s.status || "" },
    h("header", {}, h("h3", {}, s.stageName), badge(s.status)),
    retryMeta(s.retryStageMetadata && (s.retryStageMetadata.manualStageRetryAttempt || s.retryStageMetadata.autoStageRetryAttempt || s.retryStageMetadata.pendingRetry) ? s.retryStageMetadata : null),
    s.actions.map((a) => h("div", { "data-action": a.actionName },
      h("h4", {}, a.actionName, h("span", { class: "meta" }, ` ${a.attempts.length} attempt(s)`)),
      h("ol", { class: "actions", reversed: true }, a.attempts.slice().reverse().map((x, i) => attemptView(x, a.attempts.length - 1 - i, i === 0))))),
    s.status ? retryButtons(name, s.stageName, eid, s.retry) : null,
    approvalButtons(name, s.stageName, s.approvals)));
  const events = tl.events.map((e) => h("tr", {},
    h("td", {}, e.version), h("td", {}, when(e.time)), h("td", {}, e.actor), h("td", {}, e.source || "–"),
    h("td", {}, e.type), h("td", {}, [e.stage, e.action].filter(Boolean).join("/")),
    h("td", {}, e.attempt || ""), h("td", {}, [e.status, e.mode].filter(Boolean).join(" ")),
    h("td", {}, e.detail || "")));
  return [
    h("p", {}, h("a", { href: `#/p/${enc(name)}` }, `← ${name}`)),
    h("h1", {}, "Execution ", h("code", {}, eid), " ", badge(doc.status)),
    h("p", { class: "meta" }, `started ${when(doc.startTime)} · updated ${when(doc.lastUpdateTime)} · trigger ${(doc.execution.trigger || {}).triggerDetail || ""}`),
    doc.canStop ? h("div", { class: "buttons" }, stopButton(name, eid)) : null,
    h("div", { class: "stages" }, stages),
    h("h2", {}, "Audit timeline"),
    h("table", { "data-timeline": true },
      h("thead", {}, h("tr", {}, ["#", "Time", "Who", "From", "Event", "Stage/action", "Attempt", "Status/mode", "Detail"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, events)),
  ];
}

// --- routing and live updates -----------------------------------------------------------------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "p" && parts.length >= 2) {
    if (parts[2] === "x" && parts[3]) return { view: "execution", pipeline: parts[1], eid: parts[3] };
    return { view: "pipeline", pipeline: parts[1] };
  }
  return { view: "list" };
}

async function render() {
  const r = state.route;
  try {
    let nodes;
    if (r.view === "pipeline") nodes = await pipelineView(r.pipeline);
    else if (r.view === "execution") nodes = await executionView(r.pipeline, r.eid);
    else nodes = await listView();
    const focused = document.activeElement && document.activeElement.getAttribute("data-retry");
    $main().replaceChildren(...nodes.filter((n) => n));
    document.title = `${r.pipeline || "Pipelines"} · stageline`;
    if (focused) { const b = $main().querySelector(`[data-retry="${focused}"]`); if (b) b.focus(); }
  } catch (err) {
    if (err.login) { $main().replaceChildren(loginView()); return; }
    $main().replaceChildren(h("h1", {}, "Problem"), h("p", { role: "alert" }, err.message), h("p", {}, h("a", { href: "#/" }, "← Pipelines")));
  }
}

// One refetch per burst of events, never two at once (an older answer arriving last would
// show a stale view): while one runs, later events only mark the view dirty.
let rendering = false;
let dirty = false;
function refresh() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (rendering) { dirty = true; return; }
    rendering = true;
    try {
      do { dirty = false; await render(); } while (dirty);
    } finally {
      rendering = false;
    }
  }, state.route && state.route.view === "list" ? 300 : 80);
}

function listen() {
  if (state.es) state.es.close();
  const r = state.route;
  const q = r.pipeline ? `?pipeline=${enc(r.pipeline)}` : "";
  const es = new EventSource(`/console/api/events${q}`);
  const live = document.getElementById("live");
  es.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; refresh(); });
  es.addEventListener("change", refresh);
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live"; };
  state.es = es;
}

async function route() {
  state.route = parseRoute();
  try {
    const me = await getJSON("/console/api/whoami");
    document.getElementById("who").textContent = state.auth ? `signed in as ${me.actor}` : "auth off";
  } catch (err) {
    if (err.login) { $main().replaceChildren(loginView()); document.getElementById("akid").focus(); return; }
  }
  refresh();
  listen();
}

async function start() {
  const cfg = await getJSON("/console/api/config");
  state.auth = cfg.auth;
  state.region = cfg.region || "us-east-1";
  const saved = sessionStorage.getItem("stageline.creds");
  if (saved) state.creds = JSON.parse(saved);
  window.addEventListener("hashchange", route);
  await route();
}

document.addEventListener("DOMContentLoaded", start);
