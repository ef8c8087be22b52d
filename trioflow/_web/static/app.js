// The dashboard: the runs table (#/) and a run's page (#/runs/ID), kept live.
import { ApiError, follow, get, hasToken, post, setToken } from "./api.js";
import { buildForm } from "./forms.js";

const TERMINAL = ["success", "failed", "canceled"];
const STATUSES = ["pending", "running", "waiting", "suspended", "success", "failed", "canceled"];
const PAGE = 20;
const view = document.getElementById("view");
let workflows = null; // id -> WorkflowInfo
let leave = () => {}; // stops the current view's live updates

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value); // CSSOM: allowed by the CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const badge = (status, attrs = {}) => el("span", { class: `status status-${status}`, ...attrs }, status);
const time = (seconds) => (seconds == null ? "–" : new Date(seconds * 1000).toLocaleTimeString(undefined, { hour12: false }) + "." + String(Math.floor((seconds % 1) * 1000)).padStart(3, "0"));
const when = (seconds) => (seconds == null ? "–" : new Date(seconds * 1000).toLocaleString(undefined, { hour12: false }));
const json = (value) => (value === null || value === undefined ? "" : JSON.stringify(value, null, 1));
function took(start, end) {
  if (start == null) return "";
  const seconds = (end ?? Date.now() / 1000) - start;
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, error.message || String(error)));
}

// --- login: only when the server asks for its token -----------------------------------

function login(retry, refused) {
  leave();
  const input = el("input", { type: "password", id: "token", autocomplete: "current-password" });
  const form = el(
    "form",
    { class: "card login", onsubmit: (event) => { event.preventDefault(); setToken(input.value); retry(); } },
    el("h2", {}, "Sign in"),
    el("p", {}, "This server needs its token (the --token it was started with)."),
    refused ? el("p", { class: "error", role: "alert" }, "The server refused that token.") : null,
    el("label", { for: "token" }, "Token"),
    input,
    el("button", { type: "submit" }, "Sign in"),
  );
  view.replaceChildren(form);
  input.focus();
}

async function guarded(render) {
  try {
    await render();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      const refused = hasToken();
      setToken(null);
      login(route, refused);
    } else if (error.name !== "AbortError") {
      showError(view, error);
    }
  }
}

async function loadWorkflows() {
  if (!workflows) {
    const answer = await get("/api/workflows");
    workflows = Object.fromEntries(answer.workflows.map((w) => [w.id, w]));
  }
  return workflows;
}

// --- the runs table ---------------------------------------------------------------------

async function runsPage(params) {
  await loadWorkflows();
  const status = params.get("status") || "";
  const workflow = params.get("workflow") || "";
  const offset = Number(params.get("offset") || 0);
  const go = (changes) => {
    const next = new URLSearchParams({ status, workflow, offset, ...changes });
    for (const [key, value] of [...next]) if (!value || value === "0") next.delete(key);
    location.hash = `#/?${next}`;
  };
  const statusSelect = el("select", { id: "filter-status", onchange: (e) => go({ status: e.target.value, offset: 0 }) },
    el("option", { value: "" }, "any status"), STATUSES.map((s) => el("option", { value: s }, s)));
  statusSelect.value = status;
  const workflowSelect = el("select", { id: "filter-workflow", onchange: (e) => go({ workflow: e.target.value, offset: 0 }) },
    el("option", { value: "" }, "any workflow"), Object.keys(workflows).map((id) => el("option", { value: id }, id)));
  workflowSelect.value = workflow;
  const body = el("tbody");
  const pager = el("div", { class: "pager" });
  const table = el("table", { class: "runs", id: "runs" },
    el("thead", {}, el("tr", {}, el("th", {}, "run"), el("th", {}, "workflow"), el("th", {}, "status"), el("th", {}, "created"), el("th", {}, "updated"))),
    body);
  view.replaceChildren(
    startForm(),
    el("section", { class: "card" },
      el("h2", {}, "Runs"),
      el("div", { class: "filters" }, el("label", { for: "filter-status" }, "Status"), statusSelect, el("label", { for: "filter-workflow" }, "Workflow"), workflowSelect),
      table, pager));

  async function refresh() {
    const query = new URLSearchParams({ limit: PAGE + 1, offset });
    if (status) query.set("status", status);
    if (workflow) query.set("workflow", workflow);
    const page = await get(`/api/runs?${query}`);
    const runs = page.runs.slice(0, PAGE);
    body.replaceChildren(...runs.map((run) => el("tr", { "data-run": run.run_id },
      el("td", {}, el("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.run_id)),
      el("td", {}, run.workflow_id), el("td", {}, badge(run.status)),
      el("td", {}, when(run.created_at)), el("td", {}, when(run.updated_at)))));
    if (!runs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No runs yet.")));
    pager.replaceChildren(
      el("button", { disabled: offset === 0 ? "" : null, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, "← newer"),
      el("span", {}, `${offset + 1}–${offset + runs.length}`),
      el("button", { disabled: page.runs.length > PAGE ? null : "", onclick: () => go({ offset: offset + PAGE }) }, "older →"));
  }
  await refresh();
  // Statuses stay live by polling: one cheap indexed query a second.
  const timer = setInterval(() => guarded(refresh), 1000);
  leave = () => clearInterval(timer);
}

function startForm() {
  const ids = Object.keys(workflows);
  const select = el("select", { id: "start-workflow" }, ids.map((id) => el("option", { value: id }, id)));
  const slot = el("div");
  const message = el("div");
  let form = null;
  const fill = () => {
    const info = workflows[select.value];
    form = buildForm(info ? info.input_schema : null, "input");
    slot.replaceChildren(form.element);
  };
  select.addEventListener("change", fill);
  if (ids.length) fill();
  const submit = async (event) => {
    event.preventDefault();
    try {
      const run = await post(`/api/workflows/${encodeURIComponent(select.value)}/runs`, { input_data: form.read() });
      location.hash = `#/runs/${encodeURIComponent(run.run_id)}`;
    } catch (error) {
      showError(message, error);
    }
  };
  return el("form", { class: "card", id: "start", onsubmit: submit },
    el("h2", {}, "Start a run"),
    el("label", { for: "start-workflow" }, "Workflow"), select, slot,
    el("button", { type: "submit" }, "Start"), message);
}

// --- a run's page --------------------------------------------------------------------------

async function runPage(runId) {
  await loadWorkflows();
  const controller = new AbortController();
  leave = () => controller.abort();
  const header = el("section", { class: "card", id: "run-header" });
  const actions = el("section", { class: "card", id: "actions" });
  const graph = el("section", { class: "card", id: "graph" });
  const timeline = el("section", { class: "card", id: "timeline" });
  const outputs = el("section", { class: "card", id: "outputs", hidden: "" });
  const logs = el("section", { class: "card", id: "logs" });
  view.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← all runs")), header, actions, graph, outputs, timeline, logs);
  const written = new Map(); // step path -> what it wrote with ctx.write, as seen live
  let shownActions = "";

  const render = (run) => {
    const info = workflows[run.workflow_id];
    renderHeader(header, run);
    // Rebuild the forms only when what they offer changes: typing is not interrupted.
    const key = `${run.status}|${run.suspended.join(",")}`;
    if (key !== shownActions) {
      shownActions = key;
      renderActions(actions, run, info, render);
    }
    renderGraph(graph, run, info);
    renderTimeline(timeline, run);
    renderLogs(logs, run);
  };
  render(await get(`/api/runs/${encodeURIComponent(runId)}`));
  // Live: the run's event stream; it ends with the run, or is resumed if it drops.
  (async () => {
    while (!controller.signal.aborted) {
      let ended = false;
      try {
        await follow(`/api/runs/${encodeURIComponent(runId)}/events`, (name, data) => {
          if (name === "run") render(data);
          if (name === "workflow-step-output") showOutput(outputs, written, data);
          if (name === "end") ended = true;
        }, controller.signal);
      } catch (error) {
        if (error.name === "AbortError") return;
      }
      if (ended) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
}

// What steps write (tokens, progress lines, partial results), as it arrives: text is
// joined as written, anything else one JSON value a line; the last 500 writes a step.
function showOutput(section, written, event) {
  const parts = written.get(event.step_id) || [];
  parts.push(typeof event.data === "string" ? event.data : JSON.stringify(event.data) + "\n");
  if (parts.length > 500) parts.splice(0, parts.length - 500);
  written.set(event.step_id, parts);
  section.hidden = false;
  section.replaceChildren(el("h2", {}, "Output"), ...[...written].flatMap(([path, texts]) =>
    [el("h3", {}, el("code", {}, path)), el("pre", { class: "output", "data-output": path }, texts.join(""))]));
}

function renderHeader(header, run) {
  header.replaceChildren(
    el("h2", {}, "Run ", el("code", { id: "run-id" }, run.run_id)),
    el("dl", { class: "facts" },
      el("dt", {}, "workflow"), el("dd", {}, run.workflow_id, el("span", { class: "note", id: "run-version" }, ` version ${run.version}`)),
      el("dt", {}, "status"), el("dd", {}, badge(run.status, { id: "run-status" }), run.cancel_requested && run.status !== "canceled" ? el("span", { class: "note" }, " cancel requested") : null),
      run.cancel_reason ? [el("dt", {}, "cancel reason"), el("dd", { id: "cancel-reason" }, run.cancel_reason)] : null,
      run.result !== null ? [el("dt", {}, "result"), el("dd", {}, el("pre", { id: "run-result" }, json(run.result)))] : null,
      run.error ? [el("dt", {}, "error"), el("dd", {}, el("pre", { class: "error", id: "run-error" }, run.error))] : null));
}

function renderActions(actions, run, info, render) {
  const parts = [el("h2", {}, "Actions")];
  const runPath = `/api/runs/${encodeURIComponent(run.run_id)}`;
  const refresh = async () => render(await get(runPath));
  if (!TERMINAL.includes(run.status)) {
    const grace = el("input", { type: "number", id: "grace", min: "0", step: "any", value: "0" });
    const reason = el("input", { type: "text", id: "reason", placeholder: "why (optional)" });
    const message = el("div");
    const button = el("button", { type: "submit", id: "cancel", class: "danger" }, "Cancel run");
    parts.push(el("form", { class: "action", id: "cancel-form", onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      button.textContent = "Canceling…";
      try {
        await post(`${runPath}/cancel`, { reason: reason.value || "canceled from the dashboard", grace_period: Number(grace.value || 0) });
        await refresh();
      } catch (error) {
        showError(message, error);
        button.disabled = false;
        button.textContent = "Cancel run";
      }
    } }, el("h3", {}, "Cancel"),
      el("label", { for: "reason" }, "Reason"), reason,
      el("label", { for: "grace" }, "Grace period (seconds)"), grace, button, message));
  }
  if (run.status === "suspended") {
    for (const path of run.suspended) {
      const step = findStep(info, path);
      const form = buildForm(step ? step.resume_schema : null, "resume data");
      const message = el("div");
      const suspended = run.steps.find((s) => s.path === path);
      parts.push(el("form", { class: "action resume", "data-step": path, onsubmit: async (event) => {
        event.preventDefault();
        try {
          await post(`${runPath}/resume`, { step: path, resume_data: form.read() });
          await refresh();
        } catch (error) {
          showError(message, error);
        }
      } }, el("h3", {}, "Resume ", el("code", {}, path)),
        suspended && suspended.suspend_payload !== null ? el("pre", {}, json(suspended.suspend_payload)) : null,
        form.element, el("button", { type: "submit" }, "Resume"), message));
    }
  }
  const events = Object.entries((info && info.events) || {});
  if (events.length && !TERMINAL.includes(run.status)) {
    const select = el("select", { id: "event-name" }, events.map(([name]) => el("option", { value: name }, name)));
    const slot = el("div");
    const message = el("div");
    let form = null;
    const fill = () => { form = buildForm(info.events[select.value], "event data"); slot.replaceChildren(form.element); };
    select.addEventListener("change", fill);
    fill();
    parts.push(el("form", { class: "action", id: "event-form", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await post(`${runPath}/events/${encodeURIComponent(select.value)}`, { data: form.read() });
        await refresh();
        message.replaceChildren(el("p", { class: "note" }, `sent ${select.value}`));
      } catch (error) {
        showError(message, error);
      }
    } }, el("h3", {}, "Send an event"), el("label", { for: "event-name" }, "Event"), select, slot,
      el("button", { type: "submit" }, "Send"), message));
  }
  const started = run.steps.filter((step) => step.started_at !== null).map((step) => step.path);
  if ((TERMINAL.includes(run.status) || run.status === "suspended") && started.length) {
    // Fork: a new run that keeps what ended before the chosen step and runs it again.
    const select = el("select", { id: "fork-step" }, started.map((path) => el("option", { value: path }, path)));
    const message = el("div");
    parts.push(el("form", { class: "action", id: "fork-form", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const forked = await post(`${runPath}/fork`, { from_step: select.value });
        location.hash = `#/runs/${encodeURIComponent(forked.run_id)}`;
      } catch (error) {
        showError(message, error);
      }
    } }, el("h3", {}, "Fork"), el("label", { for: "fork-step" }, "Run again from step"), select,
      el("button", { type: "submit", id: "fork" }, "Fork"), message));
  }
  if (parts.length === 1) parts.push(el("p", { class: "note" }, `Nothing to do: the run is ${run.status}.`));
  actions.replaceChildren(...parts);
}

function findStep(info, path) {
  const id = path.split(".").pop();
  const walk = (nodes) => {
    for (const node of nodes || []) for (const step of node.steps) if (step.id === id) return step;
    return null;
  };
  return info ? walk(info.nodes) : null;
}

function renderGraph(graph, run, info) {
  const status = {};
  for (const step of run.steps) {
    status[step.path] = step.status;
    const top = step.path.split(".")[0];
    if (!(top in status)) status[top] = step.status;
  }
  const nodes = (info ? info.nodes : []).map((node) => el("li", { class: `node kind-${node.kind}` },
    el("span", { class: "kind" }, node.event ? `${node.kind} “${node.event}”` : node.kind),
    node.ids.map((id) => el("div", { class: `box status-${status[id] || "none"}`, "data-node": id, title: status[id] || "not started" },
      el("strong", {}, id), el("small", {}, status[id] || "–")))));
  graph.replaceChildren(el("h2", {}, "Graph"), el("ol", { class: "graph" }, nodes));
}

function renderLogs(logs, run) {
  // What the steps logged with ctx.logger (INFO and above), as stored with the run.
  logs.replaceChildren(el("h2", {}, "Logs"),
    run.logs.length
      ? el("pre", { class: "logs" }, run.logs.map((log) =>
          `${time(log.time)} ${log.level.padEnd(7)} ${log.step_id ?? "-"}${log.attempt ? "#" + log.attempt : ""}  ${log.message}\n`).join(""))
      : el("p", { class: "note" }, "No log records: steps log with ctx.logger."));
}

function renderTimeline(timeline, run) {
  const starts = run.steps.map((s) => s.started_at).filter((t) => t != null);
  const first = Math.min(...starts);
  // A run still executing grows to now; an ended one spans its own steps only.
  const executing = ["pending", "running", "waiting"].includes(run.status);
  const last = Math.max(executing ? Date.now() / 1000 : 0, ...run.steps.map((s) => s.ended_at || s.started_at || 0));
  const span = Math.max(last - first, 0.001);
  const rows = run.steps.map((step) => {
    const left = step.started_at == null ? 0 : ((step.started_at - first) / span) * 100;
    const width = step.started_at == null ? 0 : Math.max((((step.ended_at ?? last) - step.started_at) / span) * 100, 0.5);
    return el("tr", { "data-step": step.path, class: `step-${step.status}` },
      el("td", {}, el("code", {}, step.path)),
      el("td", {}, badge(step.status)),
      el("td", {}, time(step.started_at)), el("td", {}, time(step.ended_at)), el("td", {}, took(step.started_at, step.ended_at)),
      el("td", { class: "bar-cell" }, el("div", { class: `bar status-${step.status}`, style: { marginLeft: `${left}%`, width: `${width}%` } })),
      el("td", {}, el("details", {}, el("summary", {}, "data"),
        el("h4", {}, "input"), el("pre", {}, json(step.input) || "–"),
        el("h4", {}, "output"), el("pre", {}, json(step.output) || "–"),
        step.suspend_payload !== null ? [el("h4", {}, "suspended with"), el("pre", {}, json(step.suspend_payload))] : null,
        step.resume_payload !== null ? [el("h4", {}, "resumed with"), el("pre", {}, json(step.resume_payload))] : null),
        step.error ? el("pre", { class: "error" }, step.error) : null,
        step.traceback ? el("details", { class: "traceback" }, el("summary", {}, "traceback"), el("pre", { class: "error" }, step.traceback)) : null));
  });
  timeline.replaceChildren(el("h2", {}, "Timeline"),
    rows.length
      ? el("table", { class: "timeline" }, el("thead", {}, el("tr", {}, ["step", "status", "started", "ended", "took", "", "details"].map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "note" }, "No step has started yet."));
}

// --- routing ------------------------------------------------------------------------------------

function route() {
  leave();
  leave = () => {};
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  const match = path.match(/^\/runs\/(.+)$/);
  if (match) guarded(() => runPage(decodeURIComponent(match[1])));
  else guarded(() => runsPage(new URLSearchParams(query || "")));
}

window.addEventListener("hashchange", route);
route();
