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
    use serde_json::{Value, json};

    let manifest: toml::Table =
        toml::from_str(manifest).unwrap_or_else(|e| panic!("plugin.toml: {e}"));
    let defaults: serde_json::Map<String, Value> = manifest
        .get("config")
        .map(|c| serde_json::to_value(c).expect("[config] as JSON"))
        .and_then(|c| c.as_object().cloned())
        .unwrap_or_default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a fixture file").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let fx: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
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
        let input = &fx["input"];
        let got = C::classify(
            input["text"].as_str().unwrap_or_default().into(),
            classify_context(&input["context"]),
        );
        match (fx.get("expect"), got) {
            (Some(want), Ok(c)) => {
                let got = json!({
                    "label": c.label,
                    "confidence": c.confidence,
                    "fields": c.fields.iter().map(|f| json!({"name": f.name, "value": f.value})).collect::<Vec<_>>(),
                    "language": c.language,
                });
                assert!(
                    fixture_matches(want, &got),
                    "{}: expected {want}\n got {got}",
                    file.display()
                );
            }
            (None, Err(e)) => {
                use crate::classifier::PluginError;
                let got = match e {
                    PluginError::InvalidInput(m) => json!({ "InvalidInput": m }),
                    PluginError::Permanent(m) => json!({ "Permanent": m }),
                    PluginError::Unauthorized(m) => json!({ "Unauthorized": m }),
                    PluginError::Transient(t) => json!({ "Transient": {
                        "message": t.message,
                        "retry_after_ms": t.retry_after_ms,
                    } }),
                };
                assert!(
                    fixture_matches(&fx["expect_error"], &got),
                    "{}: expected error {}\n got error {got}",
                    file.display(),
                    fx["expect_error"]
                );
            }
            (_, got) => panic!("{}: got {got:?}", file.display()),
        }
    }
    files.len()
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

/// As the broker's fixture check: every field `want` names is equal in
/// `got`; numbers to 1e-4.
#[cfg(all(feature = "classifier", feature = "fixtures"))]
fn fixture_matches(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| fixture_matches(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| fixture_matches(a, b))
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-4,
            _ => a == b,
        },
        _ => want == got,
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
