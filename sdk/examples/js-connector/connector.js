// Example connector in JavaScript for a generic JSON SMS gateway:
//
//   send     POST <base_url>/send, JSON {"to", "text", "id"},
//            Authorization: Bearer <token>, Idempotency-Key: <id>
//            200/202 {"message_id"}: accepted; 429 (Retry-After) and 5xx:
//            retry; 401/403: the token is wrong; other 4xx {"error"}: failed
//   webhook  POST, JSON: one event or a list of them; a receipt is
//            {"message_id", "status", "reason"?, "at_ms"?}, a reply is
//            {"from", "text", "id"?, "at_ms"?}. When `webhook_secret` is
//            set, the header X-Signature must be
//            sha256=<hex HMAC-SHA256(webhook_secret, body)>.
//
// componentize-js maps the WIT world `connector` to this module's exports.
// Records are objects with camelCase fields, variants are `{ tag, val }`,
// `list<u8>` is a Uint8Array, `u64` is a BigInt, and throwing a `{ tag, val }`
// plugin-error fails the call with it.

import { config, log } from 'mhero:plugin/host@1.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const error = (tag, val) => ({ tag, val });

function header(headers, name) {
  const found = headers.find((h) => h.name.toLowerCase() === name);
  return found ? found.value : undefined;
}

function readJson(body, what) {
  try {
    return JSON.parse(decoder.decode(body));
  } catch {
    throw error('invalid-input', `unreadable ${what}`);
  }
}

/** Milliseconds from a Retry-After header in seconds; undefined when absent. */
function retryAfterMs(headers) {
  const value = header(headers, 'retry-after');
  return value && /^\d+$/.test(value.trim()) ? BigInt(value.trim()) * 1000n : undefined;
}

/** Optional u64 from a JSON number. */
function u64(value) {
  return Number.isSafeInteger(value) && value >= 0 ? BigInt(value) : undefined;
}

export function describe() {
  return {
    plugin: {
      name: 'json-gateway',
      version: '1.0.0',
      kind: 'connector',
      summary: 'Example in JavaScript: a generic JSON SMS gateway',
    },
    maxBatch: 1,
    countsSegments: false,
    // The gateway de-duplicates on the Idempotency-Key header.
    idempotent: true,
  };
}

export function buildSend(message) {
  const baseUrl = config('base_url');
  if (!baseUrl) throw error('invalid-input', 'setting `base_url` is not set');
  const token = config('token');
  if (!token) throw error('unauthorized', 'setting `token` is not set');
  const body = { to: message.to, text: message.text, id: message.id };
  return {
    method: 'POST',
    url: `${baseUrl.replace(/\/+$/, '')}/send`,
    headers: [
      { name: 'content-type', value: 'application/json' },
      { name: 'authorization', value: `Bearer ${token}` },
      { name: 'idempotency-key', value: message.id },
    ],
    body: encoder.encode(JSON.stringify(body)),
  };
}

// max-batch is 1: the host never asks for batches.
export function buildSendBatch() {
  throw error('invalid-input', 'this gateway has no batch form');
}

export function parseBatchResponse() {
  throw error('invalid-input', 'this gateway has no batch form');
}

export function parseSendResponse(response) {
  const { status, headers, body } = response;
  if (status === 200 || status === 202) {
    const reply = readJson(body, 'acceptance');
    if (typeof reply.message_id !== 'string' || reply.message_id === '') {
      throw error('invalid-input', `gateway answered ${status} without a message_id`);
    }
    return { tag: 'accepted', val: reply.message_id };
  }
  if (status === 401 || status === 403) throw error('unauthorized', `gateway answered ${status}`);
  if (status === 429) return { tag: 'retry', val: { afterMs: retryAfterMs(headers), reason: 'throttled (429)' } };
  if (status >= 500 && status <= 599) {
    return { tag: 'retry', val: { afterMs: retryAfterMs(headers), reason: `gateway error (${status})` } };
  }
  if (status >= 400 && status <= 499) {
    let reason = `gateway refused the message (${status})`;
    try {
      const refusal = JSON.parse(decoder.decode(body));
      if (typeof refusal.error === 'string' && refusal.error) reason = refusal.error;
    } catch {
      // Not JSON: keep the status as the reason.
    }
    return { tag: 'failed', val: { reason, unreachable: false } };
  }
  throw error('invalid-input', `unexpected status ${status}`);
}

const RECEIPT_STATUS = {
  sent: 'sent',
  delivered: 'delivered',
  read: 'read',
  failed: 'failed',
  undelivered: 'failed',
  rejected: 'failed',
};

export async function handleWebhook(request) {
  const secret = config('webhook_secret');
  if (secret) {
    const signature = header(request.headers, 'x-signature') ?? '';
    if (!(await verify(secret, request.body, signature))) {
      log('warn', 'Webhook signature does not verify.');
      throw error('unauthorized', 'webhook signature does not verify');
    }
  }
  const parsed = readJson(request.body, 'webhook body');
  const items = Array.isArray(parsed) ? parsed : [parsed];
  const events = items.map((item, i) => {
    if (item && typeof item.message_id === 'string' && typeof item.status === 'string') {
      const status = RECEIPT_STATUS[item.status.toLowerCase()];
      if (!status) throw error('invalid-input', `event ${i}: unknown status ${JSON.stringify(item.status)}`);
      return {
        tag: 'receipt',
        val: {
          externalId: item.message_id,
          status,
          reason: typeof item.reason === 'string' ? item.reason : undefined,
          atMs: u64(item.at_ms),
        },
      };
    }
    if (item && typeof item.from === 'string' && typeof item.text === 'string') {
      return {
        tag: 'inbound',
        val: {
          from: item.from,
          text: item.text,
          externalId: typeof item.id === 'string' ? item.id : undefined,
          receivedAtMs: u64(item.at_ms),
        },
      };
    }
    throw error('invalid-input', `event ${i} is neither a receipt nor a reply`);
  });
  return { events, response: { status: 200, headers: [], body: encoder.encode('ok') } };
}

/** Whether `signature` is `sha256=<hex HMAC-SHA256(secret, body)>`. */
async function verify(secret, body, signature) {
  const key = await crypto.subtle.importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, body));
  const expected = 'sha256=' + Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
  // Compare in constant time.
  let diff = expected.length ^ signature.length;
  for (let i = 0; i < expected.length; i++) diff |= expected.charCodeAt(i) ^ signature.charCodeAt(i);
  return diff === 0;
}
