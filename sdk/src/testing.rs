//! A mock host for testing plugin logic natively with `cargo test`.
//!
//! ```
//! use mhero_sdk::testing::MockHost;
//! use mhero_sdk::host::{self, Level};
//!
//! let host = MockHost::new().config("sender", "MOH").now_ms(1_700_000_000_000).install();
//! assert_eq!(host::config("sender").as_deref(), Some("MOH"));
//! host::log(Level::Warn, "gateway slow");
//! assert_eq!(host.logs(), vec![(Level::Warn, "gateway slow".to_string())]);
//! ```
//!
//! The mock is per thread (tests run in parallel threads) and is removed
//! when the returned guard drops.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::Level;

#[derive(Default, Clone)]
struct State {
    config: HashMap<String, String>,
    now_ms: Option<u64>,
    logs: Vec<(Level, String)>,
}

thread_local! {
    static MOCK: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Builder for the mock host.
#[derive(Default)]
pub struct MockHost {
    state: State,
}

impl MockHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a plugin setting, as the broker would pass it.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.state.config.insert(key.to_string(), value.to_string());
        self
    }

    /// Fixes the clock.
    pub fn now_ms(mut self, now: u64) -> Self {
        self.state.now_ms = Some(now);
        self
    }

    /// Installs the mock on this thread until the guard drops.
    pub fn install(self) -> Installed {
        let previous = MOCK.with(|m| m.replace(Some(self.state)));
        Installed { previous }
    }
}

/// The installed mock; dropping it restores what was there before.
pub struct Installed {
    previous: Option<State>,
}

impl Installed {
    /// Everything the plugin logged since the mock was installed.
    pub fn logs(&self) -> Vec<(Level, String)> {
        MOCK.with(|m| {
            m.borrow()
                .as_ref()
                .map(|s| s.logs.clone())
                .unwrap_or_default()
        })
    }

    /// Moves the mock clock.
    pub fn set_now_ms(&self, now: u64) {
        MOCK.with(|m| {
            if let Some(s) = m.borrow_mut().as_mut() {
                s.now_ms = Some(now);
            }
        });
    }

    /// Changes a setting while installed.
    pub fn set_config(&self, key: &str, value: Option<&str>) {
        MOCK.with(|m| {
            if let Some(s) = m.borrow_mut().as_mut() {
                match value {
                    Some(v) => s.config.insert(key.to_string(), v.to_string()),
                    None => s.config.remove(key),
                };
            }
        });
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        MOCK.with(|m| *m.borrow_mut() = previous);
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn capture_log(level: Level, message: &str) -> bool {
    MOCK.with(|m| match m.borrow_mut().as_mut() {
        Some(s) => {
            s.logs.push((level, message.to_string()));
            true
        }
        None => false,
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn mock_config(key: &str) -> Option<String> {
    MOCK.with(|m| m.borrow().as_ref().and_then(|s| s.config.get(key).cloned()))
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn mock_now_ms() -> Option<u64> {
    MOCK.with(|m| m.borrow().as_ref().and_then(|s| s.now_ms))
}

/// Runs a classifier's golden fixtures natively with `cargo test`, the way
/// `mhero plugin test` runs them on the built component: the settings are
/// the manifest's `[config]` overridden by the fixture's `config` (strings
/// as they are, lists and tables as JSON, as the broker passes them).
///
/// Each `*.json` file in `dir` holds `input.text`, `input.context`
/// (`expected`: `YesNo`, `Number`, `Choice` or `FreeText`; `choices`;
/// `language_hint`) and either `expect` (a classification: every field it
/// names must be equal, numbers to 1e-4) or `expect_error` (for example
/// `{"InvalidInput": "…"}`). Panics naming the file on the first
/// mismatch; returns how many fixtures ran.
///
/// ```ignore
/// #[test]
/// fn golden_fixtures_pass_natively() {
///     let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
///     let ran = mhero_sdk::testing::classifier_fixtures::<MyClassifier>(
///         include_str!("../plugin.toml"),
///         &dir,
///     );
///     assert!(ran >= 6);
/// }
/// ```
#[cfg(all(feature = "classifier", feature = "fixtures"))]
pub fn classifier_fixtures<C: crate::classifier::Classifier>(
    manifest: &str,
    dir: &std::path::Path,
) -> usize {
    use serde_json::json;

    fixtures::run(manifest, dir, |_, fx| {
        let input = &fx["input"];
        let got = C::classify(
            input["text"].as_str().unwrap_or_default().into(),
            classify_context(&input["context"]),
        );
        match got {
            Ok(c) => Ok(json!({
                "label": c.label,
                "confidence": c.confidence,
                "fields": c.fields.iter().map(|f| json!({"name": f.name, "value": f.value})).collect::<Vec<_>>(),
                "language": c.language,
            })),
            Err(e) => {
                use crate::classifier::PluginError;
                Err(match e {
                    PluginError::InvalidInput(m) => json!({ "InvalidInput": m }),
                    PluginError::Permanent(m) => json!({ "Permanent": m }),
                    PluginError::Unauthorized(m) => json!({ "Unauthorized": m }),
                    PluginError::Transient(t) => json!({ "Transient": {
                        "message": t.message,
                        "retry_after_ms": t.retry_after_ms,
                    } }),
                })
            }
        }
    })
}

/// Runs a connector's golden fixtures natively with `cargo test`, the way
/// `mhero plugin test` runs them on the built component, with the settings
/// as [`classifier_fixtures`] passes them.
///
/// Each `*.json` file in `dir` names its `call` (`describe`, `build-send`,
/// `build-send-batch`, `parse-send-response`, `parse-batch-response`,
/// `handle-webhook`, `build-send-media`, `build-status-query`,
/// `parse-status-answer`), its `input` (the call's arguments by name:
/// `message`, `messages`, `response`, `request`, `attachments`,
/// `external_ids`; HTTP bodies as text) and `expect` (every field it names
/// must be equal; bodies compare as text) or `expect_error` (for example
/// `{"Unauthorized": "…"}`). A fixture expecting what the host decides
/// (`"not_exported"`, `"timeout"`, `"panic"`…) is about the built
/// component and is left to `mhero plugin test`. Panics naming the file on
/// the first mismatch; returns how many fixtures ran.
///
/// ```ignore
/// #[test]
/// fn golden_fixtures_pass_natively() {
///     let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
///     let ran = mhero_sdk::testing::connector_fixtures::<MyGateway>(
///         include_str!("../plugin.toml"),
///         &dir,
///     );
///     assert!(ran >= 3);
/// }
/// ```
#[cfg(all(feature = "connector", feature = "fixtures"))]
pub fn connector_fixtures<C: crate::connector::Connector>(
    manifest: &str,
    dir: &std::path::Path,
) -> usize {
    use serde_json::Value;

    fn out<T: serde::Serialize, E: serde::Serialize>(r: Result<T, E>) -> Result<Value, Value> {
        let json = |v: serde_json::Result<Value>| {
            fixtures::bodies_to_text(v.expect("plugin types serialize to JSON"))
        };
        match r {
            Ok(v) => Ok(json(serde_json::to_value(v))),
            Err(e) => Err(json(serde_json::to_value(e))),
        }
    }
    fixtures::run(manifest, dir, |file, fx| {
        let input = fixtures::bodies_to_bytes(fx["input"].clone());
        macro_rules! arg {
            ($key:literal) => {
                fixtures::arg(file, &input, $key)
            };
        }
        let call = fx["call"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: the fixture names no `call`", file.display()));
        match call {
            "describe" => out(Ok::<_, ()>(C::describe())),
            "build-send" => out(C::build_send(arg!("message"))),
            "build-send-batch" => out(C::build_send_batch(arg!("messages"))),
            "parse-send-response" => out(C::parse_send_response(arg!("response"))),
            "parse-batch-response" => {
                out(C::parse_batch_response(arg!("messages"), arg!("response")))
            }
            "handle-webhook" => out(C::handle_webhook(arg!("request"))),
            "build-send-media" => out(C::build_send_media(arg!("message"), arg!("attachments"))),
            "build-status-query" => out(C::build_status_query(arg!("external_ids"))),
            "parse-status-answer" => out(C::parse_status_answer(
                arg!("external_ids"),
                arg!("response"),
            )),
            other => panic!("{}: `{other}` is not a connector call", file.display()),
        }
    })
}

/// Runs a FHIR mapper's golden fixtures natively with `cargo test`, as
/// [`connector_fixtures`] does for a connector: each fixture's `call` is
/// `describe` or `map-resources` with `input.json` (the resource or Bundle,
/// as JSON or as a string), and `expect` names what the mapping must hold
/// (`contacts`, `groups`, `locations`, `errors`) or `expect_error` the
/// error. Returns how many fixtures ran.
#[cfg(all(feature = "fhir-mapper", feature = "fixtures"))]
pub fn fhir_mapper_fixtures<M: crate::fhir::FhirMapper>(
    manifest: &str,
    dir: &std::path::Path,
) -> usize {
    use serde_json::Value;

    let json = |v: serde_json::Result<Value>| v.expect("plugin types serialize to JSON");
    fixtures::run(manifest, dir, |file, fx| match fx["call"].as_str() {
        Some("describe") => Ok(json(serde_json::to_value(M::describe()))),
        Some("map-resources") => {
            let text = match &fx["input"]["json"] {
                Value::String(s) => s.clone(),
                Value::Null => panic!("{}: input.json is missing", file.display()),
                other => other.to_string(),
            };
            M::map_resources(text)
                .map(|m| json(serde_json::to_value(m)))
                .map_err(|e| json(serde_json::to_value(e)))
        }
        other => panic!("{}: {other:?} is not a FHIR mapper call", file.display()),
    })
}

/// What the fixture runners share: the files, the settings, the check.
#[cfg(feature = "fixtures")]
mod fixtures {
    use std::path::{Path, PathBuf};

    use serde_json::{Map, Value};

    use super::MockHost;

    /// Runs `call` on every fixture in `dir` (given the file and the
    /// fixture) with its settings installed: `call` answers the result,
    /// `Err` in the JSON form of the error.
    pub fn run(
        manifest: &str,
        dir: &Path,
        mut call: impl FnMut(&Path, &Value) -> Result<Value, Value>,
    ) -> usize {
        let manifest: toml::Table =
            toml::from_str(manifest).unwrap_or_else(|e| panic!("plugin.toml: {e}"));
        let defaults: Map<String, Value> = manifest
            .get("config")
            .map(|c| serde_json::to_value(c).expect("[config] as JSON"))
            .and_then(|c| c.as_object().cloned())
            .unwrap_or_default();
        let mut ran = 0;
        for file in files(dir) {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let fx: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // What the host decides (a trap, an export the component
            // lacks) shows only on the built component.
            if fx.get("expect_error").is_some_and(Value::is_string) {
                continue;
            }
            let mut settings = defaults.clone();
            if let Some(config) = fx.get("config").and_then(Value::as_object) {
                settings.extend(config.clone());
            }
            let host = settings
                .iter()
                .fold(MockHost::new(), |host, (k, v)| match v {
                    Value::String(s) => host.config(k, s),
                    other => host.config(k, &other.to_string()),
                });
            let _host = host.install();
            let got = call(&file, &fx);
            ran += 1;
            match (fx.get("expect"), fx.get("expect_error"), got) {
                (Some(want), _, Ok(got)) => assert!(
                    matches(want, &got),
                    "{}: expected {want}\n got {got}",
                    file.display()
                ),
                (None, Some(want), Err(got)) => assert!(
                    matches(want, &got),
                    "{}: expected error {want}\n got error {got}",
                    file.display()
                ),
                (None, None, _) => panic!(
                    "{}: the fixture has neither `expect` nor `expect_error`",
                    file.display()
                ),
                (_, _, got) => panic!("{}: got {got:?}", file.display()),
            }
        }
        ran
    }

    /// The argument `key` of the fixture's input, as the call takes it.
    #[cfg_attr(not(feature = "connector"), allow(dead_code))]
    pub fn arg<T: serde::de::DeserializeOwned>(file: &Path, input: &Value, key: &str) -> T {
        let value = input
            .get(key)
            .unwrap_or_else(|| panic!("{}: input.{key} is missing", file.display()));
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{}: input.{key}: {e}", file.display()))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a fixture file").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    /// As the broker's fixture check: every field `want` names is equal
    /// in `got`; numbers to 1e-4.
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

    /// Fixture text bodies → the byte lists the generated types hold.
    #[cfg_attr(not(feature = "connector"), allow(dead_code))]
    pub fn bodies_to_bytes(v: Value) -> Value {
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
    #[cfg_attr(not(feature = "connector"), allow(dead_code))]
    pub fn bodies_to_text(v: Value) -> Value {
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
}

#[cfg(all(feature = "classifier", feature = "fixtures"))]
fn classify_context(c: &serde_json::Value) -> crate::classifier::ClassifyContext {
    use crate::classifier::{AnswerType, ClassifyContext};
    ClassifyContext {
        expected: match c["expected"].as_str() {
            Some("YesNo") => AnswerType::YesNo,
            Some("Number") => AnswerType::Number,
            Some("Choice") => AnswerType::Choice,
            _ => AnswerType::FreeText,
        },
        choices: c["choices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        language_hint: c["language_hint"].as_str().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn the_mock_is_per_install_and_restored_on_drop() {
        assert_eq!(host::config("k"), None);
        {
            let outer = MockHost::new().config("k", "1").install();
            {
                let inner = MockHost::new().config("k", "2").now_ms(5).install();
                assert_eq!(host::config("k").as_deref(), Some("2"));
                assert_eq!(host::now_ms(), 5);
                host::log(Level::Info, "inner");
                assert_eq!(inner.logs().len(), 1);
            }
            assert_eq!(host::config("k").as_deref(), Some("1"));
            assert!(outer.logs().is_empty());
            outer.set_config("k", None);
            assert_eq!(host::config("k"), None);
        }
        assert_eq!(host::config("k"), None);
        assert!(host::now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn config_parsed_reports_bad_values() {
        let _host = MockHost::new()
            .config("tps", "ten")
            .config("n", " 12 ")
            .install();
        assert_eq!(host::config_parsed::<u32>("n"), Ok(Some(12)));
        assert_eq!(host::config_parsed::<u32>("missing"), Ok(None));
        let err = host::config_parsed::<u32>("tps").unwrap_err();
        assert!(err.contains("tps") && err.contains("ten"), "{err}");
    }

    #[test]
    fn config_cached_parses_a_setting_once_until_it_changes() {
        let parses = std::cell::Cell::new(0);
        let words = |[raw]: [Option<&str>; 1]| -> Result<Vec<String>, String> {
            parses.set(parses.get() + 1);
            match raw {
                None => Ok(Vec::new()),
                Some("") => Err("empty".into()),
                Some(r) => Ok(r.split(',').map(str::to_string).collect()),
            }
        };
        let host = MockHost::new().config("words", "a,b").install();
        for _ in 0..3 {
            assert_eq!(*host::config_cached(["words"], words).unwrap(), ["a", "b"]);
        }
        assert_eq!(parses.get(), 1);
        // Another result type under the same key is kept apart.
        let count = host::config_cached(["words"], |[r]| -> Result<usize, String> {
            Ok(r.map_or(0, |r| r.split(',').count()))
        });
        assert_eq!(*count.unwrap(), 2);
        // Two settings read together: parsed again when either changes.
        host.set_config("sep", Some(","));
        let both = |sep_parses: &std::cell::Cell<u32>| {
            host::config_cached(["words", "sep"], |[w, s]| -> Result<usize, String> {
                sep_parses.set(sep_parses.get() + 1);
                Ok(w.unwrap_or("").split(s.unwrap_or(";")).count())
            })
        };
        let sep_parses = std::cell::Cell::new(0);
        assert_eq!(*both(&sep_parses).unwrap(), 2);
        assert_eq!(*both(&sep_parses).unwrap(), 2);
        host.set_config("sep", Some(";"));
        assert_eq!(*both(&sep_parses).unwrap(), 1);
        assert_eq!(sep_parses.get(), 2);
        assert_eq!(*host::config_cached(["words"], words).unwrap(), ["a", "b"]);
        assert_eq!(parses.get(), 1);
        // Changed, unset, not parsing: parsed again each time it changes;
        // an error is kept like a value.
        host.set_config("words", Some("c"));
        assert_eq!(*host::config_cached(["words"], words).unwrap(), ["c"]);
        host.set_config("words", None);
        assert!(host::config_cached(["words"], words).unwrap().is_empty());
        host.set_config("words", Some(""));
        for _ in 0..2 {
            assert_eq!(host::config_cached(["words"], words).unwrap_err(), "empty");
        }
        assert_eq!(parses.get(), 4);
    }

    #[test]
    fn the_panic_hook_logs_the_message() {
        let host = MockHost::new().install();
        crate::panic::install();
        let result = std::panic::catch_unwind(|| panic!("bad fixture {}", 7));
        assert!(result.is_err());
        let logs = host.logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, Level::Error);
        assert!(
            logs[0].1.starts_with("panic: bad fixture 7 at "),
            "{logs:?}"
        );
    }
}
