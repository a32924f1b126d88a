// Push to a device from Node, signing the request by hand (docs/api.md, "Authentication"): no
// SDK, only node's built-in crypto and fetch (Node 18 or later).
//
//   export MQTTPUSH_URL=http://127.0.0.1:8080 MQTTPUSH_APP_KEY=a… MQTTPUSH_APP_SECRET=…
//   node examples/publish.mjs --device d… --title Hi --body 'from Node' [--data '{"sku": 42}'] [--status]
//
// Prints the answer, {"msg_id": "…"}; with --status also the message's status (a signed GET).
// Flags --url, --app-key, --app-secret override the environment. Errors: a message on stderr, exit 2.
import { createHash, createHmac, randomBytes } from "node:crypto";
import { parseArgs } from "node:util";

// Every signed request carries the app key, the time, a fresh nonce and
// HMAC-SHA256(app_secret, METHOD \n PATH_WITH_QUERY \n TIMESTAMP \n NONCE \n hex(SHA-256(body))).
function signedHeaders(appKey, appSecret, method, pathWithQuery, body) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = randomBytes(18).toString("base64url"); // 24 URL-safe characters, never reused
  const bodyHash = createHash("sha256").update(body).digest("hex");
  const text = [method, pathWithQuery, timestamp, nonce, bodyHash].join("\n");
  return {
    "X-MQTTPush-Key": appKey,
    "X-MQTTPush-Timestamp": timestamp,
    "X-MQTTPush-Nonce": nonce,
    "X-MQTTPush-Signature": createHmac("sha256", appSecret).update(text).digest("hex"),
  };
}

async function call(server, method, path, payload) {
  // Sign exactly the bytes that are sent: serialize once, send that string.
  const body = payload === undefined ? "" : JSON.stringify(payload);
  const headers = signedHeaders(server.appKey, server.appSecret, method, path, body);
  if (body) headers["Content-Type"] = "application/json";
  const resp = await fetch(server.url + path, { method, headers, body: body || undefined });
  const doc = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = doc?.error ?? { code: "http_error", message: `HTTP ${resp.status}` };
    throw new Error(`${err.message} [${err.code}]`);
  }
  return doc;
}

async function main() {
  const { values: opt } = parseArgs({
    options: {
      url: { type: "string", default: process.env.MQTTPUSH_URL ?? "http://127.0.0.1:8080" },
      "app-key": { type: "string", default: process.env.MQTTPUSH_APP_KEY },
      "app-secret": { type: "string", default: process.env.MQTTPUSH_APP_SECRET },
      device: { type: "string", multiple: true },
      title: { type: "string" },
      body: { type: "string" },
      data: { type: "string" },
      ttl: { type: "string" },
      status: { type: "boolean", default: false },
    },
  });
  for (const flag of ["app-key", "app-secret", "device"]) {
    if (!opt[flag]) throw new Error(`--${flag} is missing`);
  }
  const server = { url: opt.url.replace(/\/+$/, ""), appKey: opt["app-key"], appSecret: opt["app-secret"] };
  const request = {
    target: { devices: opt.device },
    notification: { title: opt.title, body: opt.body },
  };
  if (opt.data !== undefined) request.data = JSON.parse(opt.data);
  if (opt.ttl !== undefined) request.policy = { ttl: Number(opt.ttl) };

  const pushed = await call(server, "POST", "/api/v1/push", request);
  console.log(JSON.stringify(pushed));
  if (opt.status) {
    console.log(JSON.stringify(await call(server, "GET", `/api/v1/messages/${encodeURIComponent(pushed.msg_id)}`)));
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(2);
});
