// The mqttpush console: one page, hash routes, plain DOM. Everything it shows comes from
// /console/api/… (docs/console.md); nothing here decides targeting or policy, the server does.
import { COLORS, barChart, funnelChart, legend, lineChart } from "./charts.js";

const POLL_MS = 2000;
const main = document.getElementById("main");
let session = null;
let pollTimer = null;
let routeToken = 0;

// ---------------------------------------------------------------- DOM and HTTP helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "value") node.value = v;
    else if (k === "checked") node.checked = Boolean(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

function field(label, input) {
  return h("label", {}, label, input);
}

function badge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "—";
}

function unix(localValue) {
  return localValue ? new Date(localValue).getTime() / 1000 : undefined;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  const res = await fetch(`/console/api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const doc = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = doc.error || { code: "http_error", message: `HTTP ${res.status}` };
    if (res.status === 401 && err.code === "no_session" && path !== "session") {
      session = null;
      showSignIn("Your session ended: sign in again.");
    }
    throw new ApiError(res.status, err.code, err.message);
  }
  return doc;
}

function errorBox(id) {
  return h("div", { id, class: "error", role: "alert", hidden: true });
}

function showError(box, err) {
  box.hidden = false;
  box.textContent = err instanceof ApiError ? `${err.message} (${err.code})` : String(err.message || err);
}

function clearError(box) {
  box.hidden = true;
  box.textContent = "";
}

function poll(fn) {
  // One live view at a time: a route change stops the previous poll.
  stopPolling();
  const token = routeToken;
  const tick = async () => {
    if (token !== routeToken) return;
    try {
      await fn();
    } catch (err) {
      console.warn("poll", err);
    }
    if (token === routeToken) pollTimer = setTimeout(tick, POLL_MS);
  };
  pollTimer = setTimeout(tick, POLL_MS);
}

function stopPolling() {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  stopPolling();
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const err = errorBox("signin-error");
  const key = h("input", { id: "signin-key", autocomplete: "username", placeholder: "a…" });
  const secret = h("input", { id: "signin-secret", type: "password", autocomplete: "current-password" });
  const token = h("input", { id: "signin-token", type: "password", placeholder: "mpt_…", autocomplete: "off" });
  const form = h(
    "form",
    { id: "signin-form", class: "card signin" },
    h("h1", {}, "Sign in to the console"),
    message ? h("p", { class: "muted" }, message) : null,
    field("App key", key),
    field("App secret", secret),
    h("p", { class: "muted" }, "…or an app access token of scope admin:"),
    field("Access token", token),
    err,
    h("button", { id: "signin-submit", type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearError(err);
    const body = token.value.trim()
      ? { token: token.value.trim() }
      : { app_key: key.value.trim(), app_secret: secret.value };
    try {
      session = await api("POST", "session", body);
      started();
    } catch (e) {
      showError(err, e);
    }
  });
  main.replaceChildren(form);
}

function started() {
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = `${session.app_name} · ${session.app_key}`;
  if (!location.hash || location.hash === "#/") location.hash = "#/compose";
  else route();
}

document.getElementById("signout").addEventListener("click", async () => {
  try {
    await api("DELETE", "session");
  } finally {
    session = null;
    showSignIn("Signed out.");
  }
});

// ---------------------------------------------------------------- compose

const TARGET_KINDS = [
  ["devices", "Device ids"],
  ["alias", "Alias + type"],
  ["tags", "Tag expression"],
  ["filter", "Filter"],
  ["file", "Uploaded file id"],
  ["broadcast", "Broadcast (every device)"],
];

function testDevicesKey() {
  return `mqttpush.console.test_devices.${session.app_key}`;
}

function splitIds(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function parseJson(text, what) {
  if (!text.trim()) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} is not valid JSON: ${e.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error(`${what} must be a JSON object`);
  return value;
}

function viewCompose() {
  const f = {
    kind: h("select", { id: "target-kind" }, TARGET_KINDS.map(([v, l]) => h("option", { value: v }, l))),
    devices: h("textarea", { id: "target-devices", placeholder: "device ids, one a line or comma-separated (≤ 1000)" }),
    alias: h("input", { id: "target-alias", placeholder: "alice, bob" }),
    aliasType: h("input", { id: "target-alias-type", value: "user" }),
    tags: h("input", { id: "target-tags", placeholder: "beta and (android or ios) and not churned" }),
    filter: h("textarea", { id: "target-filter", placeholder: '{"platform": "android", "app_version": ">=2.0"}' }),
    filterTags: h("input", { id: "target-filter-tags", placeholder: "optional tag expression" }),
    file: h("input", { id: "target-file", placeholder: "file id from POST /api/v1/files" }),
    type: h("select", { id: "c-type" }, h("option", { value: "notification" }, "notification"), h("option", { value: "message" }, "message (data only)")),
    title: h("input", { id: "c-title", maxlength: 256 }),
    body: h("textarea", { id: "c-body" }),
    url: h("input", { id: "c-url", placeholder: "https://…" }),
    data: h("textarea", { id: "c-data", placeholder: '{"order": 1234}' }),
    ttl: h("input", { id: "c-ttl", type: "number", min: 1, placeholder: "259200 (3 days)" }),
    priority: h("select", { id: "c-priority" }, h("option", { value: "normal" }, "normal"), h("option", { value: "high" }, "high")),
    strategy: h(
      "select",
      { id: "c-strategy" },
      h("option", { value: "" }, "default (mqtt_else_vendor)"),
      ["mqtt", "mqtt_else_vendor", "vendor_first", "vendor"].map((s) => h("option", { value: s }, s)),
    ),
    start: h("input", { id: "c-start", type: "datetime-local" }),
    schedule: h("textarea", { id: "c-schedule", placeholder: '{"daily": "09:00", "tz": "Europe/Berlin"} or {"cron": "0 9 * * mon-fri"}' }),
    approval: h("input", { id: "c-approval", type: "checkbox" }),
    testOnly: h("input", { id: "c-test-only", type: "checkbox" }),
    bizId: h("input", { id: "c-biz-id", placeholder: "optional idempotency key" }),
    testDevices: h("textarea", { id: "test-devices", placeholder: "test device ids, kept in this browser for this app" }),
  };
  f.testDevices.value = localStorage.getItem(testDevicesKey()) || "";
  const err = errorBox("compose-error");
  const result = h("div", { id: "compose-result", class: "ok", hidden: true });
  const preview = h("pre", { id: "preview-json" }, "{}");
  const size = h("span", { id: "preview-bytes", class: "size" });
  const previewErr = errorBox("preview-error");
  const targetBox = h("div");

  function renderTarget() {
    const kind = f.kind.value;
    const parts = {
      devices: [field("Device ids", f.devices)],
      alias: [h("div", { class: "row" }, field("Alias(es)", f.alias), field("Alias type", f.aliasType))],
      tags: [field("Tag expression", f.tags)],
      filter: [field("Filter (JSON object)", f.filter), field("and tags (optional)", f.filterTags)],
      file: [field("File id", f.file)],
      broadcast: [h("p", { class: "muted" }, "Every device of the app (one retained publish on the broadcast topic).")],
    };
    targetBox.replaceChildren(...parts[kind]);
  }

  function target() {
    switch (f.kind.value) {
      case "devices": {
        const ids = splitIds(f.devices.value);
        if (!ids.length) throw new Error("give at least one device id");
        return { devices: ids };
      }
      case "alias": {
        const aliases = splitIds(f.alias.value);
        if (!aliases.length) throw new Error("give an alias");
        return { alias: aliases.length === 1 ? aliases[0] : aliases, alias_type: f.aliasType.value.trim() || "user" };
      }
      case "tags":
        if (!f.tags.value.trim()) throw new Error("give a tag expression");
        return { tags: f.tags.value.trim() };
      case "filter": {
        const t = { filter: parseJson(f.filter.value, "the filter") || {} };
        if (f.filterTags.value.trim()) t.tags = f.filterTags.value.trim();
        return t;
      }
      case "file":
        if (!f.file.value.trim()) throw new Error("give a file id");
        return { file_id: f.file.value.trim() };
      default:
        return { broadcast: true };
    }
  }

  function request(targetOverride) {
    const req = { target: targetOverride || target(), type: f.type.value };
    const note = {};
    if (f.title.value) note.title = f.title.value;
    if (f.body.value) note.body = f.body.value;
    if (f.url.value.trim()) note.url = f.url.value.trim();
    if (Object.keys(note).length) req.notification = note;
    const data = parseJson(f.data.value, "data");
    if (data !== undefined) req.data = data;
    const policy = { priority: f.priority.value };
    if (f.ttl.value) {
      const ttl = Number(f.ttl.value);
      if (!Number.isInteger(ttl) || ttl <= 0) throw new Error("TTL must be a whole number of seconds above 0");
      policy.ttl = ttl;
    }
    if (f.strategy.value) policy.strategy = f.strategy.value;
    if (f.start.value) policy.start_at = unix(f.start.value);
    const schedule = parseJson(f.schedule.value, "the schedule");
    if (schedule !== undefined) policy.schedule = schedule;
    if (f.approval.checked) policy.approval = true;
    if (f.testOnly.checked) policy.production = false;
    if (f.bizId.value.trim()) policy.biz_id = f.bizId.value.trim();
    req.policy = policy;
    return req;
  }

  let previewSeq = 0;
  let previewTimer = null;
  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(updatePreview, 250);
  }
  async function updatePreview() {
    const seq = ++previewSeq;
    let req;
    try {
      req = request();
    } catch (e) {
      showError(previewErr, e);
      preview.textContent = "{}";
      size.textContent = "";
      return;
    }
    try {
      const doc = await api("POST", "preview", req);
      if (seq !== previewSeq) return;
      clearError(previewErr);
      preview.textContent = JSON.stringify(doc.envelope, null, 2);
      size.textContent = `${doc.bytes} / ${doc.max_envelope_bytes} bytes`;
      size.classList.toggle("over", doc.bytes > doc.max_envelope_bytes);
    } catch (e) {
      if (seq !== previewSeq) return;
      showError(previewErr, e); // nothing that would not be sent stays on show
      preview.textContent = "{}";
      size.textContent = "";
    }
  }

  async function send(targetOverride) {
    clearError(err);
    result.hidden = true;
    let req;
    try {
      req = request(targetOverride);
    } catch (e) {
      showError(err, e);
      return;
    }
    try {
      const doc = await api("POST", "push", req);
      result.hidden = false;
      result.replaceChildren(
        "Accepted: ",
        h("a", { id: "result-link", href: `#/messages/${doc.msg_id}` }, doc.msg_id),
        doc.task_id ? ` (task ${doc.task_id})` : "",
      );
    } catch (e) {
      showError(err, e);
    }
  }

  f.kind.addEventListener("change", () => {
    renderTarget();
    schedulePreview();
  });
  for (const input of Object.values(f)) {
    if (input === f.testDevices) continue;
    input.addEventListener("input", schedulePreview);
    input.addEventListener("change", schedulePreview);
  }
  f.testDevices.addEventListener("input", () => localStorage.setItem(testDevicesKey(), f.testDevices.value));
  renderTarget();

  main.replaceChildren(
    h("h1", {}, "Compose a push"),
    h(
      "div",
      { class: "grid2" },
      h(
        "div",
        {},
        h("div", { class: "card" }, h("h2", {}, "Target"), field("Kind", f.kind), targetBox),
        h(
          "div",
          { class: "card" },
          h("h2", {}, "Content"),
          h("div", { class: "row" }, field("Type", f.type), field("Title", f.title)),
          field("Body", f.body),
          field("URL (optional)", f.url),
          field("Data (JSON object, optional)", f.data),
        ),
        h(
          "div",
          { class: "card" },
          h("h2", {}, "Policy"),
          h("div", { class: "row" }, field("TTL (seconds)", f.ttl), field("Priority", f.priority), field("Strategy", f.strategy)),
          h("div", { class: "row" }, field("Start at (local time)", f.start), field("Idempotency key (biz_id)", f.bizId)),
          field("Recurring schedule (JSON, optional)", f.schedule),
          h("label", { class: "check" }, f.approval, "Hold for approval (draft)"),
          h("label", { class: "check" }, f.testOnly, "Only the target's test devices (production: false)"),
        ),
        err,
        result,
        h(
          "div",
          { class: "row" },
          h("button", { id: "send", type: "button", onclick: () => send() }, "Send"),
          h(
            "button",
            {
              id: "send-test",
              type: "button",
              class: "secondary",
              onclick: () => {
                const ids = splitIds(f.testDevices.value);
                if (!ids.length) showError(err, new Error("add test device ids first (right column)"));
                else send({ devices: ids });
              },
            },
            "Send to test devices first",
          ),
        ),
      ),
      h(
        "div",
        {},
        h("div", { class: "card" }, h("h2", {}, "Envelope preview ", size), previewErr, preview),
        h("div", { class: "card" }, h("h2", {}, "Test devices"), f.testDevices),
      ),
    ),
  );
  schedulePreview();
}

// ---------------------------------------------------------------- lists: messages, approval, tasks

const MESSAGE_STATES = ["", "draft", "approved", "scheduled", "active", "done", "cancelled", "recalled"];
const TASK_STATES = ["", "pending", "running", "done", "cancelled", "failed"];

function countsText(counts) {
  const c = counts || {};
  const total = Object.values(c).reduce((a, b) => a + b, 0);
  const reached = (c.arrived || 0) + (c.opened || 0) + (c.dismissed || 0);
  return { total, reached, opened: c.opened || 0, failed: (c.failed || 0) + (c.dropped || 0) + (c.expired || 0) };
}

function progressBar(done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  const bar = h("div");
  bar.style.width = `${pct}%`; // through the CSSOM: the CSP refuses style attributes
  return h("div", { class: "progress", title: `${done} / ${total}` }, bar);
}

function listView({ title, path, states, fixedState, columns, rowsOf, id }) {
  const stateSel = h("select", { id: `${id}-state` }, states.map((s) => h("option", { value: s }, s || "any state")));
  const since = h("input", { id: `${id}-since`, type: "datetime-local" });
  const until = h("input", { id: `${id}-until`, type: "datetime-local" });
  const err = errorBox(`${id}-error`);
  const body = h("tbody", { id: `${id}-rows` });
  const pageInfo = h("span", { class: "muted" });
  const cursors = [null];
  let next = null;
  const prevBtn = h("button", { class: "secondary", type: "button", id: `${id}-prev` }, "← Newer");
  const nextBtn = h("button", { class: "secondary", type: "button", id: `${id}-next` }, "Older →");

  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    const state = fixedState || stateSel.value;
    if (state) q.set("state", state);
    if (since.value) q.set("since", unix(since.value));
    if (until.value) q.set("until", unix(until.value));
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const doc = await api("GET", `${path}?${q}`);
    clearError(err);
    next = doc.next;
    const rows = rowsOf(doc);
    body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "nothing here"))]));
    pageInfo.textContent = `page ${cursors.length}`;
    prevBtn.disabled = cursors.length === 1;
    nextBtn.disabled = !next;
  }
  async function reload() {
    try {
      await load();
    } catch (e) {
      showError(err, e);
    }
  }
  for (const input of [stateSel, since, until]) {
    input.addEventListener("change", () => {
      cursors.splice(1);
      reload();
    });
  }
  prevBtn.addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    reload();
  });
  nextBtn.addEventListener("click", () => {
    if (next) cursors.push(next);
    reload();
  });
  main.replaceChildren(
    h("h1", {}, title),
    h(
      "div",
      { class: "card" },
      h("div", { class: "row" }, fixedState ? null : field("State", stateSel), field("Created from", since), field("Created before", until)),
      err,
      h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.endsWith("#") ? "num" : "" }, c.replace("#", ""))))), body),
      h("div", { class: "pager" }, prevBtn, nextBtn, pageInfo, h("span", { class: "muted" }, " · refreshed every 2 s")),
    ),
  );
  reload();
  poll(load);
  return { reload };
}

function messageRows(doc, { approval = false, reload } = {}) {
  return doc.messages.map((m) => {
    const c = countsText(m.counts);
    const cells = [
      h("td", {}, h("a", { href: `#/messages/${m.msg_id}`, class: "msg-link" }, m.msg_id)),
      h("td", {}, m.title || m.body || h("span", { class: "muted" }, "(data)")),
      h("td", {}, m.kind),
      h("td", {}, badge(m.state)),
      h("td", {}, when(m.created_at)),
    ];
    if (approval) {
      const approver = h("input", { class: "approver", placeholder: "your name", value: localStorage.getItem("mqttpush.console.approver") || "" });
      const err = h("div", { class: "error", hidden: true });
      const act = async (what) => {
        err.hidden = true;
        try {
          const name = approver.value.trim() || "console";
          localStorage.setItem("mqttpush.console.approver", approver.value.trim());
          await api("POST", `messages/${m.msg_id}/${what}`, what === "approve" ? { approver: name } : {});
          reload();
        } catch (e) {
          showError(err, e);
        }
      };
      cells.push(
        h("td", {}, m.start_at ? `starts ${when(m.start_at)}` : "at once on approval"),
        h(
          "td",
          {},
          h("div", { class: "row" }, approver, h("button", { type: "button", class: "approve", onclick: () => act("approve") }, "Approve"), h("button", { type: "button", class: "danger cancel", onclick: () => act("cancel") }, "Cancel")),
          err,
        ),
      );
    } else {
      cells.push(h("td", { class: "num" }, c.total), h("td", { class: "num" }, c.reached), h("td", { class: "num" }, c.opened), h("td", {}, progressBar(c.reached, c.total)));
    }
    return h("tr", { "data-msg": m.msg_id }, cells);
  });
}

function viewMessages() {
  listView({
    id: "messages",
    title: "Messages",
    path: "messages",
    states: MESSAGE_STATES,
    columns: ["Message", "Title", "Target", "State", "Created", "Deliveries#", "Arrived#", "Opened#", "Progress"],
    rowsOf: (doc) => messageRows(doc),
  });
}

function viewApproval() {
  const view = listView({
    id: "approval",
    title: "Approval queue (drafts)",
    path: "messages",
    states: [],
    fixedState: "draft",
    columns: ["Message", "Title", "Target", "State", "Created", "Sends", "Decide"],
    rowsOf: (doc) => messageRows(doc, { approval: true, reload: () => view.reload() }),
  });
  stopPolling(); // typing an approver's name must not be wiped by a refresh
}

function viewTasks() {
  listView({
    id: "tasks",
    title: "Tasks (group sends)",
    path: "tasks",
    states: TASK_STATES,
    columns: ["Task", "Message", "Kind", "State", "Created", "Targeted#", "Arrived#", "Failed#", "Progress"],
    rowsOf: (doc) =>
      doc.tasks.map((t) => {
        const c = countsText(t.counts);
        return h(
          "tr",
          { "data-task": t.task_id },
          h("td", {}, t.task_id),
          h("td", {}, h("a", { href: `#/messages/${t.msg_id}` }, t.msg_id)),
          h("td", {}, t.kind),
          h("td", {}, badge(t.state), t.error ? h("div", { class: "muted" }, t.error) : null),
          h("td", {}, when(t.created_at)),
          h("td", { class: "num" }, c.total),
          h("td", { class: "num" }, c.reached),
          h("td", { class: "num" }, c.failed),
          h("td", {}, progressBar(c.reached, c.total)),
        );
      }),
  });
}

// ---------------------------------------------------------------- one message

// From the message's deliveries by state (an index-only count, cheap enough to poll every 2 s;
// the exact funnel of GET /api/v1/messages/{msg_id}/funnel reads every history row instead).
const FUNNEL = [
  ["targeted", (c) => Object.values(c).reduce((a, b) => a + b, 0)],
  ["sent", (c) => ["published", "forwarded", "arrived", "opened", "dismissed"].reduce((a, s) => a + (c[s] || 0), 0)],
  ["arrived", (c) => (c.arrived || 0) + (c.opened || 0) + (c.dismissed || 0)],
  ["opened", (c) => c.opened || 0],
];

function viewMessage(msgId) {
  const err = errorBox("message-error");
  const head = h("div", { class: "card", id: "message-head" });
  const funnel = h("div", { id: "message-funnel" });
  const rows = h("tbody", { id: "delivery-rows" });
  const stateSel = h("select", { id: "delivery-state" }, ["", "accepted", "queued", "published", "forwarded", "arrived", "opened", "dismissed", "failed", "expired", "cancelled", "dropped"].map((s) => h("option", { value: s }, s || "any state")));
  const cursors = [null];
  let next = null;
  const prevBtn = h("button", { class: "secondary", type: "button", id: "deliveries-prev" }, "← Previous");
  const nextBtn = h("button", { class: "secondary", type: "button", id: "deliveries-next" }, "Next →");
  const pageInfo = h("span", { class: "muted" });

  async function load() {
    const doc = await api("GET", `messages/${encodeURIComponent(msgId)}`);
    const env = doc.envelope || {};
    const actions = h("div", { class: "row" });
    const running = doc.task && ["pending", "running"].includes(doc.task.state);
    if (["draft", "approved", "scheduled"].includes(doc.state) || running) {
      actions.append(
        h("button", {
          type: "button",
          class: "danger",
          id: "message-cancel",
          onclick: async () => {
            try {
              await api("POST", `messages/${msgId}/cancel`, {});
              load();
            } catch (e) {
              showError(err, e);
            }
          },
        }, "Cancel sending"),
      );
    }
    head.replaceChildren(
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "State"), h("dd", { id: "msg-state" }, badge(doc.state)),
        h("dt", {}, "Title"), h("dd", {}, env.title || "—"),
        h("dt", {}, "Body"), h("dd", {}, env.body || "—"),
        h("dt", {}, "Target"), h("dd", {}, h("code", {}, JSON.stringify(doc.target))),
        h("dt", {}, "Policy"), h("dd", {}, h("code", {}, JSON.stringify(doc.policy))),
        h("dt", {}, "Envelope"), h("dd", {}, `${doc.envelope_bytes} bytes, ${doc.fanout}`),
        h("dt", {}, "Created"), h("dd", {}, when(doc.created_at)),
        h("dt", {}, "Expires"), h("dd", {}, when(doc.expires_at)),
        doc.approved_by ? [h("dt", {}, "Approved by"), h("dd", {}, `${doc.approved_by} at ${when(doc.approved_at)}`)] : null,
        doc.task ? [h("dt", {}, "Task"), h("dd", {}, `${doc.task.task_id}: ${doc.task.state}, ${doc.task.targeted} targeted`)] : null,
      ),
      actions,
    );
    const counts = doc.counts || {};
    funnel.replaceChildren(
      funnelChart(FUNNEL.map(([label, fn]) => ({ label, value: fn(counts) }))),
      h("p", { class: "muted", id: "message-counts" }, Object.entries(counts).map(([s, n]) => `${s}: ${n}`).join(" · ") || "no deliveries yet"),
    );
    await loadDeliveries();
    clearError(err);
  }

  async function loadDeliveries() {
    const q = new URLSearchParams({ limit: "50" });
    if (stateSel.value) q.set("state", stateSel.value);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const doc = await api("GET", `messages/${encodeURIComponent(msgId)}/deliveries?${q}`);
    next = doc.next;
    rows.replaceChildren(
      ...(doc.deliveries.length
        ? doc.deliveries.map((d) =>
            h(
              "tr",
              { class: "delivery", "data-device": d.device_id },
              h("td", {}, h("a", { href: `#/devices/${d.device_id}` }, d.device_id)),
              h("td", { class: "d-state" }, badge(d.state)),
              h("td", {}, d.channel),
              h("td", {}, d.error || ""),
              h(
                "td",
                {},
                h("div", { class: "timeline" }, d.history.map((e, i) => h("span", {}, i ? "→ " : "", badge(e.state), ` ${new Date(e.at * 1000).toLocaleTimeString()}`, e.detail ? ` (${e.detail})` : ""))),
              ),
            ),
          )
        : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no deliveries (yet)"))]),
    );
    pageInfo.textContent = `page ${cursors.length}`;
    prevBtn.disabled = cursors.length === 1;
    nextBtn.disabled = !next;
  }

  prevBtn.addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    loadDeliveries().catch((e) => showError(err, e));
  });
  nextBtn.addEventListener("click", () => {
    if (next) cursors.push(next);
    loadDeliveries().catch((e) => showError(err, e));
  });
  stateSel.addEventListener("change", () => {
    cursors.splice(1);
    loadDeliveries().catch((e) => showError(err, e));
  });

  main.replaceChildren(
    h("h1", {}, "Message ", h("code", { id: "message-id" }, msgId)),
    err,
    head,
    h("div", { class: "card" }, h("h2", {}, "Funnel"), funnel),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "Deliveries"),
      field("State", stateSel),
      h("table", {}, h("thead", {}, h("tr", {}, ["Device", "State", "Channel", "Error", "Timeline"].map((c) => h("th", {}, c)))), rows),
      h("div", { class: "pager" }, prevBtn, nextBtn, pageInfo, h("span", { class: "muted" }, " · refreshed every 2 s")),
    ),
  );
  load().catch((e) => showError(err, e));
  poll(load);
}

// ---------------------------------------------------------------- devices

function viewDevices(deviceId) {
  const q = h("input", { id: "device-query", placeholder: "device id, install id or alias", value: deviceId || "" });
  const err = errorBox("device-error");
  const out = h("div", { id: "device-result" });

  async function show(id) {
    const d = await api("GET", `devices/${encodeURIComponent(id)}`);
    out.replaceChildren(
      h(
        "div",
        { class: "card", id: "device-card" },
        h("h2", {}, "Device ", h("code", {}, d.device_id), " ", badge(d.online ? "online" : "offline")),
        h(
          "dl",
          { class: "kv" },
          h("dt", {}, "Install id"), h("dd", {}, d.install_id),
          h("dt", {}, "Platform"), h("dd", {}, d.platform),
          h("dt", {}, "App version"), h("dd", {}, d.app_version || "—"),
          h("dt", {}, "Channel"), h("dd", {}, d.channel || "—"),
          h("dt", {}, "Locale / zone"), h("dd", {}, `${d.locale || "—"} / ${d.timezone || "—"}`),
          h("dt", {}, "Test device"), h("dd", {}, d.test ? "yes" : "no"),
          h("dt", {}, "Last seen"), h("dd", {}, when(d.last_seen)),
          h("dt", {}, "Registered"), h("dd", {}, when(d.created_at)),
          h("dt", {}, "Tags"), h("dd", { id: "device-tags" }, d.tags.length ? d.tags.map((t) => [h("span", { class: "badge" }, t), " "]) : "—"),
          h("dt", {}, "Aliases"), h("dd", {}, d.aliases.map((a) => `${a.alias_type}:${a.alias}`).join(", ") || "—"),
        ),
        h("h2", {}, "Vendor tokens (masked)"),
        h(
          "table",
          { id: "device-tokens" },
          h("thead", {}, h("tr", {}, ["Vendor", "Token", "Added", "Last used", "Removed"].map((c) => h("th", {}, c)))),
          h("tbody", {}, d.vendor_tokens.map((t) => h("tr", {}, h("td", {}, t.vendor), h("td", {}, h("code", {}, t.token)), h("td", {}, when(t.added_at)), h("td", {}, when(t.last_used_at)), h("td", {}, t.removed_at ? `${when(t.removed_at)} (${t.removed_reason})` : "")))),
        ),
        h("h2", {}, "Last messages"),
        h(
          "table",
          { id: "device-recent" },
          h("thead", {}, h("tr", {}, ["Message", "Title", "State", "Channel", "Updated"].map((c) => h("th", {}, c)))),
          h("tbody", {}, d.recent.map((r) => h("tr", {}, h("td", {}, h("a", { href: `#/messages/${r.msg_id}` }, r.msg_id)), h("td", {}, r.title || ""), h("td", {}, badge(r.state)), h("td", {}, r.channel), h("td", {}, when(r.updated_at))))),
        ),
      ),
    );
  }

  async function search(ev) {
    if (ev) ev.preventDefault();
    clearError(err);
    out.replaceChildren();
    const query = q.value.trim();
    if (!query) return;
    try {
      const doc = await api("GET", `devices?q=${encodeURIComponent(query)}`);
      if (!doc.devices.length) throw new Error(`no device has the id, install id or alias ${JSON.stringify(query)}`);
      if (doc.devices.length === 1) await show(doc.devices[0].device_id);
      else
        out.replaceChildren(
          h("div", { class: "card" }, h("h2", {}, `${doc.devices.length} devices`), h("ul", {}, doc.devices.map((d) => h("li", {}, h("a", { href: `#/devices/${d.device_id}` }, d.device_id), ` (${d.matched})`)))),
        );
    } catch (e) {
      showError(err, e);
    }
  }

  main.replaceChildren(
    h("h1", {}, "Devices"),
    h("form", { class: "card row", id: "device-form", onsubmit: search }, field("Look up", q), h("button", { type: "submit", id: "device-search" }, "Find")),
    err,
    out,
  );
  if (deviceId) search();
}

// ---------------------------------------------------------------- statistics

const METRICS = ["targeted", "published", "forwarded", "arrived", "opened", "dismissed", "failed", "expired", "dropped"];
const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };

function viewStats() {
  const range = h("select", { id: "stats-range" }, Object.keys(RANGES).map((r) => h("option", { value: r, selected: r === "24h" }, `last ${r}`)));
  const by = h("select", { id: "stats-by" }, ["", "platform", "channel", "type", "app_version"].map((b) => h("option", { value: b }, b || "all together")));
  const step = h("select", { id: "stats-step" }, ["", "1m", "1h", "1d"].map((s) => h("option", { value: s }, s || "automatic")));
  const metric = h("select", { id: "stats-metric" }, METRICS.map((m) => h("option", { value: m, selected: m === "arrived" }, m)));
  const err = errorBox("stats-error");
  const series = h("div", { id: "stats-series" });
  const funnel = h("div", { id: "stats-funnel" });
  const split = h("div", { id: "stats-split" });
  const totals = h("p", { class: "muted", id: "stats-totals" });

  async function load() {
    const q = new URLSearchParams({ since: String(Date.now() / 1000 - RANGES[range.value]) });
    if (by.value) q.set("by", by.value);
    if (step.value) q.set("step", step.value);
    const doc = await api("GET", `stats?${q}`);
    clearError(err);
    const keyName = (k) => Object.values(k || {}).join(" / ") || "all";
    let lines;
    if (!by.value && doc.series.length <= 1) {
      const pts = doc.series[0] ? doc.series[0].points : [];
      lines = ["published", "forwarded", "arrived", "opened", "failed"].map((m, i) => ({ label: m, color: COLORS[i], points: pts.map((p) => [p.t, p[m] || 0]) }));
    } else {
      lines = doc.series.map((s, i) => ({ label: `${keyName(s.key)} ${metric.value}`, color: COLORS[i % COLORS.length], points: s.points.map((p) => [p.t, p[metric.value] || 0]) }));
    }
    series.replaceChildren(legend(lines), lineChart(lines));
    const t = doc.totals || {};
    funnel.replaceChildren(
      funnelChart([
        { label: "targeted", value: t.targeted || 0 },
        { label: "sent", value: (t.published || 0) + (t.forwarded || 0) },
        { label: "arrived", value: t.arrived || 0 },
        { label: "opened", value: t.opened || 0 },
      ]),
    );
    const sums = doc.series.map((s) => ({ label: keyName(s.key), value: s.points.reduce((a, p) => a + (p[metric.value] || 0), 0) }));
    split.replaceChildren(by.value ? barChart(sums.sort((a, b) => b.value - a.value)) : h("p", { class: "muted" }, "Choose a split (platform, channel…) to compare."));
    totals.textContent = METRICS.map((m) => `${m}: ${t[m] || 0}`).join(" · ");
  }
  async function reload() {
    try {
      await load();
    } catch (e) {
      showError(err, e);
    }
  }
  for (const s of [range, by, step, metric]) s.addEventListener("change", reload);
  main.replaceChildren(
    h("h1", {}, "Statistics"),
    h("div", { class: "card row" }, field("Range", range), field("Split by", by), field("Step", step), field("Metric (split view)", metric)),
    err,
    h("div", { class: "card" }, h("h2", {}, "Over time"), series, totals),
    h("div", { class: "grid2" }, h("div", { class: "card" }, h("h2", {}, "Funnel"), funnel), h("div", { class: "card" }, h("h2", {}, "By ", by.value || "key"), split)),
  );
  reload();
  poll(load);
}

// ---------------------------------------------------------------- routing

function route() {
  routeToken += 1;
  stopPolling();
  if (!session) return;
  const [page, arg] = location.hash.replace(/^#\/?/, "").split("/");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === (page || "compose"));
  const arg0 = arg ? decodeURIComponent(arg) : undefined;
  switch (page) {
    case "approval":
      return viewApproval();
    case "messages":
      return arg0 ? viewMessage(arg0) : viewMessages();
    case "tasks":
      return viewTasks();
    case "devices":
      return viewDevices(arg0);
    case "stats":
      return viewStats();
    default:
      return viewCompose();
  }
}

window.addEventListener("hashchange", route);

(async () => {
  try {
    session = await api("GET", "session");
    started();
  } catch {
    showSignIn();
  }
})();
