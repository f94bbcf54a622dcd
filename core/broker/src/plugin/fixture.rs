//! Golden fixtures: one plugin call with its input and the expected answer,
//! as JSON. The plugins' `tests/fixtures/` hold them; the host tests and
//! `mhero plugin test` run them against the built component.
//!
//! ```json
//! { "call": "classify",
//!   "config": { "keywords": { "stockout": ["rupture"] } },
//!   "input": { "text": "oui", "context": { "expected": "YesNo", "choices": [], "language_hint": null } },
//!   "expect": { "label": "yes", "confidence": 0.95, "fields": [], "language": "fr" } }
//! ```
//!
//! Values use the field and variant names of the generated types
//! (`snake_case` fields, `CamelCase` variants: `{"Accepted": "sbx-1"}`).
//! HTTP bodies are written as text. `expect_error` instead of `expect`
//! names the error the call must fail with (`{"Unauthorized": …}` for a
//! plugin error, `"timeout"`, `"panic"`… for a trap).

use serde::Deserialize;
use serde_json::{Value, json};

use super::bindings::classifier_types::ClassifyContext;
use super::bindings::connector_types::{Attachment, OutboundMessage};
use super::bindings::{HttpRequest, HttpResponse};
use super::runtime::{CallError, Plugin};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub description: String,
    pub call: String,
    /// Plugin settings for this fixture (override the manifest's).
    #[serde(default)]
    pub config: Option<toml::Table>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub expect: Option<Value>,
    #[serde(default)]
    pub expect_error: Option<Value>,
}

impl Fixture {
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a fixture: {e}"))
    }
}

/// The answer, as JSON, or the error.
pub fn run(plugin: &Plugin, fixture: &Fixture) -> Result<Result<Value, CallError>, String> {
    let input = bodies_to_bytes(fixture.input.clone());
    let arg = |key: &str| {
        input
            .get(key)
            .cloned()
            .ok_or_else(|| format!("input.{key} is missing for {}", fixture.call))
    };
    fn de<T: serde::de::DeserializeOwned>(key: &str, v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("input.{key}: {e}"))
    }
    let out = match fixture.call.as_str() {
        "describe" => match plugin.kind() {
            super::Kind::Connector => plugin.connector_info().map(|v| to_json(&v)),
            super::Kind::Classifier => plugin.classifier_info().map(|v| to_json(&v)),
            super::Kind::FhirMapper => plugin.mapper_info().map(|v| to_json(&v)),
        },
        "build-send" => plugin
            .build_send(&de::<OutboundMessage>("message", arg("message")?)?)
            .map(|v| to_json(&v)),
        "build-send-batch" => plugin
            .build_send_batch(&de::<Vec<OutboundMessage>>("messages", arg("messages")?)?)
            .map(|v| to_json(&v)),
        "parse-send-response" => plugin
            .parse_send_response(&de::<HttpResponse>("response", arg("response")?)?)
            .map(|v| to_json(&v)),
        "parse-batch-response" => plugin
            .parse_batch_response(
                &de::<Vec<OutboundMessage>>("messages", arg("messages")?)?,
                &de("response", arg("response")?)?,
            )
            .map(|v| to_json(&v)),
        "build-send-media" => plugin
            .build_send_media(
                &de::<OutboundMessage>("message", arg("message")?)?,
                &de::<Vec<Attachment>>("attachments", arg("attachments")?)?,
            )
            .map(|v| to_json(&v)),
        "build-status-query" => plugin
            .build_status_query(&de::<Vec<String>>("external_ids", arg("external_ids")?)?)
            .map(|v| to_json(&v)),
        "parse-status-answer" => plugin
            .parse_status_answer(
                &de::<Vec<String>>("external_ids", arg("external_ids")?)?,
                &de("response", arg("response")?)?,
            )
            .map(|v| to_json(&v)),
        "handle-webhook" => plugin
            .handle_webhook(&de::<HttpRequest>("request", arg("request")?)?)
            .map(|v| to_json(&v)),
        "classify" => {
            let text: String = de("text", arg("text")?)?;
            plugin
                .classify(&text, &de::<ClassifyContext>("context", arg("context")?)?)
                .map(|v| to_json(&v))
        }
        "map-resources" => {
            let doc = arg("json")?;
            let text = match doc {
                Value::String(s) => s,
                other => other.to_string(),
            };
            plugin.map_resources(&text).map(|v| to_json(&v))
        }
        other => return Err(format!("unknown call {other:?}")),
    };
    Ok(out)
}

/// The JSON form of an error, as `expect_error` writes it.
pub fn error_json(e: &CallError) -> Value {
    match e {
        CallError::Plugin { error, .. } => serde_json::to_value(error).unwrap_or(Value::Null),
        CallError::Trapped { kind, .. } => json!(kind.outcome()),
        other => json!(other.outcome()),
    }
}

/// Whether the result is what the fixture expects; `None` when it
/// expects nothing. On a mismatch, says what differs.
pub fn check(fixture: &Fixture, result: &Result<Value, CallError>) -> Option<Result<(), String>> {
    match (&fixture.expect, &fixture.expect_error, result) {
        (Some(want), _, Ok(got)) => Some(if matches(want, got) {
            Ok(())
        } else {
            Err(format!("expected {want}\n     got {got}"))
        }),
        (Some(want), _, Err(e)) => Some(Err(format!("expected {want}\n  failed {e}"))),
        (None, Some(want), Err(e)) => {
            let got = error_json(e);
            Some(if matches(want, &got) {
                Ok(())
            } else {
                Err(format!("expected error {want}\n       got error {got}"))
            })
        }
        (None, Some(want), Ok(got)) => Some(Err(format!("expected error {want}\n     got {got}"))),
        (None, None, _) => None,
    }
}

/// `want` matches `got` when every field `want` names is equal in `got`
/// (objects may carry more fields; floats compare to 1e-4).
pub fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-4,
            _ => a == b,
        },
        _ => want == got,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    bodies_to_text(serde_json::to_value(v).unwrap_or(Value::Null))
}

/// Fixture text bodies → the byte lists the generated types hold.
fn bodies_to_bytes(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("body", Value::String(s)) => (
                        k,
                        Value::Array(s.into_bytes().into_iter().map(Value::from).collect()),
                    ),
                    (_, v) => (k, bodies_to_bytes(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(bodies_to_bytes).collect()),
        other => other,
    }
}

/// Byte-list bodies → text, when they are UTF-8.
fn bodies_to_text(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if k == "body"
                        && let Value::Array(items) = &v
                    {
                        let bytes: Option<Vec<u8>> = items
                            .iter()
                            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                            .collect();
                        if let Some(text) = bytes.and_then(|b| String::from_utf8(b).ok()) {
                            return (k, Value::String(text));
                        }
                    }
                    (k, bodies_to_text(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(bodies_to_text).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_objects_match_and_floats_are_close() {
        assert!(matches(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!matches(&json!({"a": 1, "c": 3}), &json!({"a": 1})));
        assert!(matches(&json!({"x": 0.95}), &json!({"x": 0.949_999_988})));
        assert!(!matches(&json!([1, 2]), &json!([1, 2, 3])));
    }

    #[test]
    fn bodies_round_trip_between_text_and_bytes() {
        let v = json!({"response": {"status": 200, "body": "ok"}});
        let bytes = bodies_to_bytes(v.clone());
        assert_eq!(bytes["response"]["body"], json!([111, 107]));
        assert_eq!(bodies_to_text(bytes), v);
    }
}
