"""Example connector in Python for a generic JSON SMS gateway: the same
gateway as the JavaScript example (sdk/examples/js-connector), and the
same fixtures.

  send     POST <base_url>/send, JSON {"to", "text", "id"},
           Authorization: Bearer <token>, Idempotency-Key: <id>
           200/202 {"message_id"}: accepted; 429 (Retry-After) and 5xx:
           retry; 401/403: the token is wrong; other 4xx {"error"}: failed
  webhook  POST, JSON: one event or a list of them; a receipt is
           {"message_id", "status", "reason"?, "at_ms"?}, a reply is
           {"from", "text", "id"?, "at_ms"?}. When `webhook_secret` is
           set, the header X-Signature must be
           sha256=<hex HMAC-SHA256(webhook_secret, body)>.

componentize-py generates the `wit_world` package from sdk/wit; this module
provides the class `WitWorld` with the world's exports.
"""

import hashlib
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.connector_types import (
    ConnectorInfo,
    Failure,
    InboundMessage,
    Receipt,
    ReceiptStatus,
    RetryInfo,
    SendOutcome_Accepted,
    SendOutcome_Failed,
    SendOutcome_Retry,
    WebhookEvent_Inbound,
    WebhookEvent_Receipt,
    WebhookResult,
)
from wit_world.imports.types import (
    Header,
    HttpRequest,
    HttpResponse,
    PluginError_InvalidInput,
    PluginError_Unauthorized,
    PluginInfo,
    PluginKind,
)

NAME = "py-gateway"
VERSION = "1.0.0"

RECEIPT_STATUS = {
    "sent": ReceiptStatus.SENT,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "failed": ReceiptStatus.FAILED,
    "undelivered": ReceiptStatus.FAILED,
    "rejected": ReceiptStatus.FAILED,
}


def header(headers, name):
    for h in headers:
        if h.name.lower() == name:
            return h.value
    return None


def read_json(body, what):
    try:
        return json.loads(body)
    except ValueError:
        raise Err(PluginError_InvalidInput(f"unreadable {what}"))


def retry_after_ms(headers):
    """Milliseconds from a Retry-After header in seconds; None when absent."""
    value = (header(headers, "retry-after") or "").strip()
    return int(value) * 1000 if value.isdigit() else None


def u64(value):
    """Optional u64 from a JSON number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64 else None


def hmac_sha256(key, message):
    """HMAC-SHA256 (RFC 2104) over hashlib's SHA-256. (The `hmac` module
    traps in componentize-py 0.25.1's CPython; `hashlib.sha256` works.)"""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest()


def verify(secret, body, signature):
    """Whether `signature` is sha256=<hex HMAC-SHA256(secret, body)>, compared in constant time."""
    expected = ("sha256=" + hmac_sha256(secret.encode(), bytes(body))).encode()
    given = signature.encode()
    diff = len(expected) ^ len(given)
    for a, b in zip(expected, given.ljust(len(expected), b"\0")):
        diff |= a ^ b
    return diff == 0


def event(i, item):
    if isinstance(item, dict) and isinstance(item.get("message_id"), str) and isinstance(item.get("status"), str):
        status = RECEIPT_STATUS.get(item["status"].lower())
        if status is None:
            raise Err(PluginError_InvalidInput(f"event {i}: unknown status {json.dumps(item['status'])}"))
        reason = item.get("reason") if isinstance(item.get("reason"), str) else None
        return WebhookEvent_Receipt(Receipt(item["message_id"], status, reason, u64(item.get("at_ms"))))
    if isinstance(item, dict) and isinstance(item.get("from"), str) and isinstance(item.get("text"), str):
        external_id = item.get("id") if isinstance(item.get("id"), str) else None
        return WebhookEvent_Inbound(InboundMessage(item["from"], item["text"], external_id, u64(item.get("at_ms"))))
    raise Err(PluginError_InvalidInput(f"event {i} is neither a receipt nor a reply"))


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return ConnectorInfo(
            PluginInfo(NAME, VERSION, PluginKind.CONNECTOR, "Example in Python: a generic JSON SMS gateway"),
            1,
            False,
            # The gateway de-duplicates on the Idempotency-Key header.
            True,
        )

    def build_send(self, message):
        base_url = host.config("base_url")
        if not base_url:
            raise Err(PluginError_InvalidInput("setting `base_url` is not set"))
        token = host.config("token")
        if not token:
            raise Err(PluginError_Unauthorized("setting `token` is not set"))
        body = json.dumps({"to": message.to, "text": message.text, "id": message.id}, ensure_ascii=False, separators=(",", ":"))
        return HttpRequest(
            "POST",
            base_url.rstrip("/") + "/send",
            [
                Header("content-type", "application/json"),
                Header("authorization", f"Bearer {token}"),
                Header("idempotency-key", message.id),
            ],
            body.encode(),
        )

    # max-batch is 1: the host never asks for batches.
    def build_send_batch(self, messages):
        raise Err(PluginError_InvalidInput("this gateway has no batch form"))

    def parse_batch_response(self, messages, response):
        raise Err(PluginError_InvalidInput("this gateway has no batch form"))

    def parse_send_response(self, response):
        status = response.status
        if status in (200, 202):
            reply = read_json(response.body, "acceptance")
            message_id = reply.get("message_id") if isinstance(reply, dict) else None
            if not isinstance(message_id, str) or not message_id:
                raise Err(PluginError_InvalidInput(f"gateway answered {status} without a message_id"))
            return SendOutcome_Accepted(message_id)
        if status in (401, 403):
            raise Err(PluginError_Unauthorized(f"gateway answered {status}"))
        if status == 429:
            return SendOutcome_Retry(RetryInfo(retry_after_ms(response.headers), "throttled (429)"))
        if 500 <= status <= 599:
            return SendOutcome_Retry(RetryInfo(retry_after_ms(response.headers), f"gateway error ({status})"))
        if 400 <= status <= 499:
            reason = f"gateway refused the message ({status})"
            try:
                refusal = json.loads(response.body)
                if isinstance(refusal, dict) and isinstance(refusal.get("error"), str) and refusal["error"]:
                    reason = refusal["error"]
            except ValueError:
                pass  # Not JSON: keep the status as the reason.
            return SendOutcome_Failed(Failure(reason, False))
        raise Err(PluginError_InvalidInput(f"unexpected status {status}"))

    def handle_webhook(self, request):
        secret = host.config("webhook_secret")
        if secret and not verify(secret, request.body, header(request.headers, "x-signature") or ""):
            host.log(host.LogLevel.WARN, "Webhook signature does not verify.")
            raise Err(PluginError_Unauthorized("webhook signature does not verify"))
        parsed = read_json(request.body, "webhook body")
        items = parsed if isinstance(parsed, list) else [parsed]
        events = [event(i, item) for i, item in enumerate(items)]
        return WebhookResult(events, HttpResponse(200, [], b"ok"))
