#!/usr/bin/env bash
# Push to a device from the shell with curl (docs/api.md), two ways:
#
#   # 1. the one-liner, with an app access token (mqttpush app token create APP_KEY --scope push --json)
#   MQTTPUSH_TOKEN=mpt_… examples/push.sh token DEVICE_ID "Title" "body text"
#   #    which is no more than
#   curl -H "Authorization: Bearer $MQTTPUSH_TOKEN" -H "Title: Hi" -d "hello" "$MQTTPUSH_URL/api/v1/push/device/d…"
#
#   # 2. signed with the app key and secret, the HMAC-SHA256 computed by openssl dgst
#   MQTTPUSH_APP_KEY=a… MQTTPUSH_APP_SECRET=… examples/push.sh signed DEVICE_ID "Title" "body text"
#
# MQTTPUSH_URL defaults to http://127.0.0.1:8080. Prints the server's answer, {"msg_id": "…"}, or
# its error {"error": {"code", "message"}} (then exit status 22, curl's for an HTTP error).
# Needs bash, curl (7.76+), openssl, head, base64, tr, sed, awk.
set -euo pipefail

URL=${MQTTPUSH_URL:-http://127.0.0.1:8080}
usage() {
    echo "usage: $0 token|signed DEVICE_ID TITLE [BODY]" >&2
    exit 2
}
[ $# -ge 3 ] || usage
mode=$1 device=$2 title=$3 text=${4:-}

# A JSON string: backslashes and quotes escaped, line breaks as \n.
json_string() {
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' |
        awk '{ printf "%s%s", (NR > 1 ? "\\n" : ""), $0 }')"
}

case $mode in
token)
    : "${MQTTPUSH_TOKEN:?set MQTTPUSH_TOKEN to an app access token (mpt_…)}"
    # The quick form: the body is the notification's text, headers carry the rest (Title,
    # Priority, TTL, Data, Biz-Id).
    curl -sS --fail-with-body -w '\n' -H "Authorization: Bearer $MQTTPUSH_TOKEN" -H "Title: $title" \
        --data-binary "$text" "$URL/api/v1/push/device/$device"
    ;;
signed)
    : "${MQTTPUSH_APP_KEY:?set MQTTPUSH_APP_KEY}" "${MQTTPUSH_APP_SECRET:?set MQTTPUSH_APP_SECRET}"
    body=$(printf '{"target":{"devices":[%s]},"notification":{"title":%s,"body":%s}}' \
        "$(json_string "$device")" "$(json_string "$title")" "$(json_string "$text")")
    path=/api/v1/push
    ts=$(date +%s)
    nonce=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')    # 24 URL-safe characters
    body_hash=$(printf '%s' "$body" | openssl dgst -sha256 | sed 's/^.* //')
    # S = METHOD \n PATH_WITH_QUERY \n TIMESTAMP \n NONCE \n hex(SHA-256(body))
    signature=$(printf 'POST\n%s\n%s\n%s\n%s' "$path" "$ts" "$nonce" "$body_hash" |
        openssl dgst -sha256 -hmac "$MQTTPUSH_APP_SECRET" | sed 's/^.* //')
    # Send exactly the bytes that were hashed: --data-binary, not -d (which would strip newlines
    # from a file).
    curl -sS --fail-with-body -w '\n' "$URL$path" \
        -H "X-MQTTPush-Key: $MQTTPUSH_APP_KEY" -H "X-MQTTPush-Timestamp: $ts" \
        -H "X-MQTTPush-Nonce: $nonce" -H "X-MQTTPush-Signature: $signature" \
        -H "Content-Type: application/json" --data-binary "$body"
    ;;
*)
    usage
    ;;
esac
