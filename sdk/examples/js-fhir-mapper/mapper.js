// Example FHIR source mapper in JavaScript: Practitioners (name, telecoms,
// languages, active), what their PractitionerRoles say (roles, facilities,
// organizations), and Locations, from one FHIR R4 resource or a Bundle. A
// small cousin of the Rust `ihris-practitioner` mapper
// (plugins/fhir/ihris-practitioner), which also derives cadre groups and
// location ancestry.
//
// componentize-js maps the WIT world `fhir-mapper` to this module's
// exports. Records are objects with camelCase fields, `option` is a value
// or undefined, `u32` a number, and throwing a `{ tag, val }` plugin-error
// fails the call with it.

const NAME = 'js-practitioner';

const error = (tag, val) => ({ tag, val });

/** An entry that cannot be mapped; the others still are. */
class Bad extends Error {}

const text = (v) => (typeof v === 'string' && v.trim() ? v.trim() : undefined);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** `resource[key]` as a list; absent is empty, anything else is bad. */
function listed(resource, key) {
  const value = resource[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new Bad(`\`${key}\` must be a list`);
  return value;
}

function humanName(resource) {
  for (const n of listed(resource, 'name')) {
    if (!isObject(n)) continue;
    if (text(n.text)) return text(n.text);
    const given = Array.isArray(n.given) ? n.given.filter((g) => typeof g === 'string') : [];
    const family = text(n.family) ? [n.family] : [];
    const full = [...given, ...family].join(' ').trim();
    if (full) return full;
  }
  return '';
}

function telecoms(resource) {
  return listed(resource, 'telecom')
    .filter((t) => isObject(t) && text(t.value))
    .map((t) => ({
      system: text(t.system) ?? 'phone',
      value: t.value.trim(),
      use: text(t.use),
      rank: Number.isInteger(t.rank) && t.rank > 0 && t.rank < 2 ** 32 ? t.rank : undefined,
    }));
}

/** Codes (else texts) of a list of CodeableConcepts. */
function codes(concepts) {
  const out = [];
  for (const c of concepts) {
    if (!isObject(c)) continue;
    let found = (Array.isArray(c.coding) ? c.coding : []).filter((d) => isObject(d) && text(d.code)).map((d) => d.code);
    if (found.length === 0 && text(c.text)) found = [c.text.trim()];
    for (const x of found) if (!out.includes(x)) out.push(x);
  }
  return out;
}

const reference = (v) => (isObject(v) ? text(v.reference) : undefined);

function contact(resource, sourceId) {
  const languages = codes(listed(resource, 'communication').filter(isObject).map((c) => c.language));
  return {
    sourceId,
    name: humanName(resource),
    telecoms: telecoms(resource),
    languages,
    roles: [],
    facilities: [],
    organizations: [],
    locationAncestry: [],
    active: resource.active !== false,
  };
}

function location(resource, sourceId) {
  let kinds = codes(listed(resource, 'type'));
  if (kinds.length === 0 && isObject(resource.physicalType)) kinds = codes([resource.physicalType]);
  return {
    sourceId,
    name: text(resource.name) ?? sourceId,
    parent: reference(resource.partOf),
    kind: kinds[0],
  };
}

/** [index, resource] of each entry of a Bundle, or the one resource. */
function resources(doc) {
  if (doc.resourceType !== 'Bundle') return [[0, doc]];
  const entries = doc.entry ?? [];
  if (!Array.isArray(entries)) throw error('invalid-input', 'Bundle.entry must be a list');
  return entries.map((e, i) => [i, isObject(e) ? e.resource : undefined]);
}

export function describe() {
  return {
    plugin: {
      name: NAME,
      version: '1.0.0',
      kind: 'fhir-mapper',
      summary: 'Example in JavaScript: Practitioners, their roles and Locations',
    },
    resourceTypes: ['Practitioner', 'PractitionerRole', 'Location', 'Organization'],
  };
}

export function mapResources(json) {
  let doc;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw error('invalid-input', `not JSON: ${e.message}`);
  }
  if (!isObject(doc) || typeof doc.resourceType !== 'string') {
    throw error('invalid-input', 'not a FHIR resource: no resourceType');
  }
  const contacts = new Map();
  const locations = [];
  const errors = [];
  const roles = [];
  for (const [index, resource] of resources(doc)) {
    let sourceId;
    try {
      if (!isObject(resource) || !text(resource.resourceType)) throw new Bad('entry without a resource');
      const kind = resource.resourceType;
      if (!text(resource.id)) throw new Bad(`${kind} without an id`);
      sourceId = `${kind}/${resource.id.trim()}`;
      if (kind === 'Practitioner') {
        contacts.set(sourceId, contact(resource, sourceId));
      } else if (kind === 'Location' || kind === 'Organization') {
        locations.push(location(resource, sourceId));
      } else if (kind === 'PractitionerRole') {
        const who = reference(resource.practitioner);
        if (!who) throw new Bad('PractitionerRole has no practitioner reference');
        roles.push([who, resource]);
      }
    } catch (e) {
      if (!(e instanceof Bad)) throw e;
      errors.push({ index, resource: sourceId, message: e.message });
    }
  }
  // Roles after every Practitioner: a Bundle may list them first.
  for (const [who, role] of roles) {
    const c = contacts.get(who);
    if (!c) continue;
    let concepts;
    try {
      concepts = listed(role, 'code');
    } catch {
      concepts = [];
    }
    for (const r of codes(concepts)) if (!c.roles.includes(r)) c.roles.push(r);
    for (const l of Array.isArray(role.location) ? role.location : []) {
      const ref = reference(l);
      if (ref && !c.facilities.includes(ref)) c.facilities.push(ref);
    }
    const org = reference(role.organization);
    if (org && !c.organizations.includes(org)) c.organizations.push(org);
    if (role.active === false) c.active = false;
  }
  return { contacts: [...contacts.values()], locations, groups: [], errors };
}
