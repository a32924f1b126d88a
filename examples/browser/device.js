// The browser device of index.html (how to run it: the comment at the top of index.html).
// Device protocol v1 (docs/protocol.md): client id = username = device id, password = device
// token; subscribe to the inbox and the app's broadcasts; receipts {"id", "event"} on .../r;
// presence "online" on .../s, with "offline" as the Will.
"use strict";

(() => {
  const SAVED = "mqttpush-example-device"; // {api, key, ws, install_id, device_id, device_token}
  const $ = (id) => document.getElementById(id);
  const seen = new Set(); // the same message may come twice (MQTT redelivery): show it once
  let client = null;

  function setState(text, state = "busy") {
    $("state").textContent = text;
    $("state").dataset.state = state;
  }

  function randomId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function saved() {
    try {
      return JSON.parse(localStorage.getItem(SAVED)) || {};
    } catch {
      return {};
    }
  }

  // POST /api/v1/devices with the app key only; the same install id gives the same device id
  // again (with a new token), so keep both and register only when nothing is kept for this app.
  async function register(api, key, again) {
    const kept = saved();
    if (!again && kept.api === api && kept.key === key && kept.device_token) return kept;
    const installId = kept.key === key && kept.install_id ? kept.install_id : randomId();
    const resp = await fetch(`${api}/api/v1/devices`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-MQTTPush-Key": key },
      body: JSON.stringify({ install_id: installId, platform: "web" }),
    });
    const doc = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = doc.error || { code: "http_error", message: `HTTP ${resp.status}` };
      throw new Error(`registration refused: ${err.message} [${err.code}]`);
    }
    const device = { api, key, install_id: installId, device_id: doc.device_id, device_token: doc.device_token };
    localStorage.setItem(SAVED, JSON.stringify(device));
    return device;
  }

  function show(env, open) {
    const item = document.createElement("li");
    item.className = "push";
    item.dataset.msgId = env.id;
    item.dataset.state = "arrived";
    const receipt = document.createElement("span");
    receipt.className = "receipt";
    receipt.textContent = "arrived · click to open";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = env.title || (env.type === "message" ? "(data message)" : "");
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = env.body || ""; // text, never HTML: a push is not trusted markup
    item.append(receipt, title, body);
    if (env.data && Object.keys(env.data).length) {
      const data = document.createElement("pre");
      data.className = "data";
      data.textContent = JSON.stringify(env.data);
      item.append(data);
    }
    item.addEventListener("click", () => {
      if (item.dataset.state === "opened") return;
      open();
      item.dataset.state = "opened";
      receipt.textContent = "opened";
    });
    $("pushes").prepend(item);
  }

  function onMessage(payload, receipts) {
    if (payload.length === 0) return; // an empty retained publish clears an inbox topic
    let env;
    try {
      env = JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return;
    }
    const receipt = (id, event) => client.publish(receipts, JSON.stringify({ id, event }), { qos: 1 });
    if (env.type === "revoke") { // the app recalled a message: take it off the page
      document.querySelector(`[data-msg-id="${CSS.escape(String(env.revokes))}"]`)?.remove();
      receipt(env.id, "arrived");
      return;
    }
    if (typeof env.expires_at === "number" && env.expires_at * 1000 <= Date.now()) return;
    const key = `${env.id}#${env.repush || 0}`; // a re-push of an unopened message shows again
    if (seen.has(key)) return;
    seen.add(key);
    show(env, () => receipt(env.id, "opened"));
    receipt(env.id, "arrived");
  }

  function connect(ws, device, onRefused) {
    const { key: app, device_id: id } = device;
    const topic = (rest) => `mqttpush/${app}/d/${id}/${rest}`;
    $("device-id").textContent = id;
    setState("connecting");
    client = mqtt.connect(ws, {
      clientId: id,
      username: id,
      password: device.device_token,
      protocolVersion: 4, // MQTT 3.1.1: the broker answers any other level with CONNACK 1
      clean: true,
      reconnectPeriod: 2000, // MQTT.js reconnects by itself; the inbox waits retained meanwhile
      will: { topic: topic("s"), payload: "offline", qos: 1, retain: true },
    });
    client.on("connect", () => {
      client.publish(topic("s"), "online", { qos: 1, retain: true });
      const filters = { [topic("m/+")]: { qos: 1 }, [`mqttpush/${app}/b/+`]: { qos: 1 } };
      client.subscribe(filters, (err, granted) => {
        if (err || granted.some((g) => g.qos === 128)) setState("subscription refused", "error");
        else setState("connected", "connected");
      });
    });
    client.on("message", (_topic, payload) => onMessage(payload, topic("r")));
    client.on("reconnect", () => setState("reconnecting"));
    client.on("offline", () => setState("offline, retrying"));
    client.on("error", (err) => {
      if (err.code === 5) { // CONNACK 5: the kept token is no longer valid
        client.end(true);
        onRefused();
      } else {
        setState(`error: ${err.message}`, "error");
      }
    });
  }

  async function start(again = false) {
    const [api, key, ws] = ["api", "key", "ws"].map((name) => $(name).value.trim().replace(/\/+$/, ""));
    if (client) client.end(true);
    try {
      setState("registering");
      const device = await register(api, key, again);
      localStorage.setItem(SAVED, JSON.stringify({ ...device, ws }));
      connect(ws, device, () => {
        if (again) setState("the server refuses this device's token", "error");
        else start(true); // register again once: the same install id, a fresh token
      });
    } catch (err) {
      setState(String(err.message || err), "error");
    }
  }

  $("setup").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("forget").addEventListener("click", () => {
    if (client) client.end(true);
    localStorage.removeItem(SAVED);
    $("device-id").textContent = "–";
    setState("not connected", "idle");
  });

  // ?api=…&key=…&ws=… fill the form and connect at once.
  const params = new URLSearchParams(location.search);
  for (const name of ["api", "key", "ws"]) $(name).value = params.get(name) || saved()[name] || "";
  if (["api", "key", "ws"].every((name) => $(name).value)) start();
})();
