"""Example FHIR source mapper in Python: Practitioners (name, telecoms,
languages, active), what their PractitionerRoles say (roles, facilities,
organizations), and Locations, from one FHIR R4 resource or a Bundle. A
small cousin of the Rust `ihris-practitioner` mapper
(plugins/fhir/ihris-practitioner), which also derives cadre groups and
location ancestry.

componentize-py generates the `wit_world` package from sdk/wit; this module
provides the class `WitWorld` with the world's exports.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.fhir_types import (
    Contact,
    EntryError,
    Location,
    Mapped,
    MapperInfo,
    Telecom,
)
from wit_world.imports.types import PluginError_InvalidInput, PluginInfo, PluginKind

NAME = "py-practitioner"
VERSION = "1.0.0"


class Bad(Exception):
    """An entry that cannot be mapped; the others still are."""


def text(value):
    return value.strip() if isinstance(value, str) and value.strip() else None


def listed(resource, key):
    """`resource[key]` as a list; absent is empty, anything else is bad."""
    value = resource.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Bad(f"`{key}` must be a list")
    return value


def human_name(resource):
    for n in listed(resource, "name"):
        if not isinstance(n, dict):
            continue
        if text(n.get("text")):
            return text(n["text"])
        given = [g for g in n.get("given") or [] if isinstance(g, str)]
        family = [n["family"]] if text(n.get("family")) else []
        full = " ".join(given + family).strip()
        if full:
            return full
    return ""


def telecoms(resource):
    out = []
    for t in listed(resource, "telecom"):
        if isinstance(t, dict) and text(t.get("value")):
            rank = t.get("rank")
            out.append(
                Telecom(
                    text(t.get("system")) or "phone",
                    t["value"].strip(),
                    text(t.get("use")),
                    rank if isinstance(rank, int) and 0 < rank < 2**32 else None,
                )
            )
    return out


def codes(concepts):
    """Codes (else texts) of a list of CodeableConcepts."""
    out = []
    for c in concepts:
        if not isinstance(c, dict):
            continue
        found = [d["code"] for d in c.get("coding") or [] if isinstance(d, dict) and text(d.get("code"))]
        if not found and text(c.get("text")):
            found = [c["text"].strip()]
        out.extend(x for x in found if x not in out)
    return out


def reference(value):
    return text(value.get("reference")) if isinstance(value, dict) else None


def contact(resource, source_id):
    languages = codes(
        [c.get("language") for c in listed(resource, "communication") if isinstance(c, dict)]
    )
    return Contact(
        source_id,
        human_name(resource),
        telecoms(resource),
        languages,
        [],
        [],
        [],
        [],
        resource.get("active") is not False,
    )


def location(resource, source_id):
    kinds = codes(listed(resource, "type")) or codes(
        [resource["physicalType"]] if isinstance(resource.get("physicalType"), dict) else []
    )
    return Location(
        source_id,
        text(resource.get("name")) or source_id,
        reference(resource.get("partOf")),
        kinds[0] if kinds else None,
    )


def resources(doc):
    """(index, resource) of each entry of a Bundle, or the one resource."""
    if doc.get("resourceType") != "Bundle":
        return [(0, doc)]
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise Err(PluginError_InvalidInput("Bundle.entry must be a list"))
    return [(i, e.get("resource") if isinstance(e, dict) else None) for i, e in enumerate(entries)]


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return MapperInfo(
            PluginInfo(
                NAME,
                VERSION,
                PluginKind.FHIR_MAPPER,
                "Example in Python: Practitioners, their roles and Locations",
            ),
            ["Practitioner", "PractitionerRole", "Location", "Organization"],
        )

    def map_resources(self, document):
        try:
            doc = json.loads(document)
        except ValueError as e:
            raise Err(PluginError_InvalidInput(f"not JSON: {e}"))
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise Err(PluginError_InvalidInput("not a FHIR resource: no resourceType"))
        contacts, locations, errors, roles = {}, [], [], []
        for index, resource in resources(doc):
            source_id = None
            try:
                if not isinstance(resource, dict) or not text(resource.get("resourceType")):
                    raise Bad("entry without a resource")
                kind = resource["resourceType"]
                if not text(resource.get("id")):
                    raise Bad(f"{kind} without an id")
                source_id = f"{kind}/{resource['id'].strip()}"
                if kind == "Practitioner":
                    contacts[source_id] = contact(resource, source_id)
                elif kind in ("Location", "Organization"):
                    locations.append(location(resource, source_id))
                elif kind == "PractitionerRole":
                    who = reference(resource.get("practitioner"))
                    if not who:
                        raise Bad("PractitionerRole has no practitioner reference")
                    roles.append((who, resource))
            except Bad as e:
                errors.append(EntryError(index, source_id, str(e)))
        # Roles after every Practitioner: a Bundle may list them first.
        for who, role in roles:
            c = contacts.get(who)
            if c is None:
                continue
            role_codes = role.get("code") if isinstance(role.get("code"), list) else []
            c.roles.extend(r for r in codes(role_codes) if r not in c.roles)
            places = role.get("location") if isinstance(role.get("location"), list) else []
            for ref in [reference(x) for x in places]:
                if ref and ref not in c.facilities:
                    c.facilities.append(ref)
            org = reference(role.get("organization"))
            if org and org not in c.organizations:
                c.organizations.append(org)
            if role.get("active") is False:
                c.active = False
        return Mapped(list(contacts.values()), locations, [], errors)
