#!/usr/bin/env bash
# The walking skeleton, step by step: server up, an app, a device listening, a push, its status.
# Uses `mqttpush` from PATH (scripts/demo puts .venv/bin there). Ports: MQTTPUSH_MQTT_PORT (1883),
# MQTTPUSH_HTTP_PORT (8080); data: MQTTPUSH_DATA_DIR (./mqttpush-data).
set -euo pipefail
DATA=${MQTTPUSH_DATA_DIR:-mqttpush-data}
mkdir -p "$DATA"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

step "1. mqttpush serve --data-dir $DATA   (broker + bridge + HTTP API in one process)"
mqttpush serve --data-dir "$DATA" --json --log-level warning > "$DATA/demo-serve.json" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    [ -s "$DATA/demo-serve.json" ] && break
    kill -0 $SERVER 2>/dev/null || { echo "error: the server did not start (ports busy? see above)" >&2; exit 2; }
    sleep 0.1
done
READY=$(head -n1 "$DATA/demo-serve.json")
URL=$(field "$READY" http_url)
echo "server ready: mqtt://127.0.0.1:$(field "$READY" mqtt_port)  $URL"

step "2. mqttpush app create demo --data-dir $DATA --json"
APP=$(mqttpush app create demo --data-dir "$DATA" --json)
echo "$APP"
KEY=$(field "$APP" app_key); SECRET=$(field "$APP" app_secret)

step "3. mqttpush device register --url $URL --app-key $KEY --install-id demo-phone --platform android --json"
DEV=$(mqttpush device register --url "$URL" --app-key "$KEY" --install-id demo-phone --platform android --json)
echo "$DEV"
DEVICE=$(field "$DEV" device_id); TOKEN=$(field "$DEV" device_token)

step "4. mqttpush device listen --url $URL --device-id $DEVICE --device-token …   (a simulated device)"
mqttpush device listen --url "$URL" --device-id "$DEVICE" --device-token "$TOKEN" --count 1 --timeout 30 &
LISTENER=$!

step "5. mqttpush push --url $URL --app-key $KEY --app-secret … --device $DEVICE --title … --json"
PUSHED=$(mqttpush push --url "$URL" --app-key "$KEY" --app-secret "$SECRET" --device "$DEVICE" \
    --title "Hello from mqttpush" --body "Your first push, over MQTT" --data '{"demo": true}' --json)
echo "$PUSHED"
MSG=$(field "$PUSHED" msg_id)

step "6. the device prints it and sends an 'arrived' receipt"
wait $LISTENER

step "7. mqttpush status $MSG"
for _ in $(seq 50); do
    STATUS=$(mqttpush status "$MSG" --url "$URL" --app-key "$KEY" --app-secret "$SECRET" --json)
    case "$STATUS" in *'"state": "arrived"'*) break ;; esac
    sleep 0.1
done
mqttpush status "$MSG" --url "$URL" --app-key "$KEY" --app-secret "$SECRET"
case "$STATUS" in
    *'"state": "arrived"'*) step "done: pushed, delivered over MQTT, acknowledged" ;;
    *) echo "error: the delivery did not reach 'arrived': $STATUS" >&2; exit 1 ;;
esac
