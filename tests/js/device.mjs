// A browser-style device on MQTT.js: node device.mjs URL DEVICE_ID TOKEN APP_KEY
// Prints one JSON line per event ({"event": "connected" | "subscribed" | "message" | "error", ...}),
// acknowledges each inbox message with an "arrived" receipt, and exits on stdin EOF.
import mqtt from "mqtt";

const [url, device, token, app] = process.argv.slice(2);
const say = (doc) => process.stdout.write(JSON.stringify(doc) + "\n");
const client = mqtt.connect(url, {
  clientId: device, username: device, password: token, protocolVersion: 4, clean: true, reconnectPeriod: 0,
});
client.on("connect", () => {
  say({ event: "connected" });
  client.subscribe(`mqttpush/${app}/d/${device}/m/+`, { qos: 1 }, (err, granted) => {
    say(err ? { event: "error", message: String(err) } : { event: "subscribed", granted: granted.map((g) => g.qos) });
  });
});
client.on("message", (topic, payload, packet) => {
  const envelope = JSON.parse(payload.toString());
  say({ event: "message", topic, qos: packet.qos, id: envelope.id, title: envelope.title });
  client.publish(`mqttpush/${app}/d/${device}/r`, JSON.stringify({ id: envelope.id, event: "arrived" }), { qos: 1 });
});
client.on("error", (err) => { say({ event: "error", message: String(err) }); process.exit(1); });
process.stdin.on("end", () => client.end(false, () => process.exit(0)));
process.stdin.resume();
