//! What the broker provides to a plugin: a log, the plugin's own settings,
//! and the time. Plugins have no other I/O.
//!
//! Inside a component these call the host. In native builds (your
//! `cargo test`) they go to the [`crate::testing::MockHost`] installed on
//! the current thread, or to harmless defaults when none is.

/// Log levels, as the host's `log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes to the broker's log under this plugin's name. Never log phone
/// numbers, names or message texts at `Info` or above.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// The plugin's setting `key`, as text (numbers and booleans in their TOML
/// form, arrays and tables as JSON). `None` when unset.
pub fn config(key: &str) -> Option<String> {
    imp::config(key)
}

/// A setting parsed into any `FromStr` type; `None` when unset, an
/// `invalid-input` style message when it does not parse.
pub fn config_parsed<T: std::str::FromStr>(key: &str) -> Result<Option<T>, String> {
    match config(key) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("setting {key:?} has an invalid value {raw:?}")),
    }
}

/// Settings parsed once and kept: `parse` gets the settings' texts
/// (`None` where unset) on the first call, and again only when one of
/// them changed since. An instance's settings are fixed for its life, so
/// settings worth parsing (a JSON table read on every call) are parsed
/// once per instance; the mock host's settings may change between tests,
/// and are parsed again when they do. Settings that do not parse give the
/// same error each time. Kept per keys and result type; several keys make
/// one result when they are checked against each other.
///
/// ```
/// use mhero_sdk::host;
/// let words = host::config_cached(["stop_words"], |[raw]| -> Result<Vec<String>, String> {
///     Ok(raw.unwrap_or("stop").split(',').map(str::to_string).collect())
/// });
/// assert_eq!(*words.unwrap(), ["stop"]);
/// ```
pub fn config_cached<const N: usize, T: 'static, E: Clone + 'static>(
    keys: [&'static str; N],
    parse: impl FnOnce([Option<&str>; N]) -> Result<T, E>,
) -> Result<std::rc::Rc<T>, E> {
    use std::any::{Any, TypeId};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Per keys and result type: the texts last read, what they parsed
    /// into.
    type Kept = Vec<(Vec<&'static str>, TypeId, Vec<Option<String>>, Box<dyn Any>)>;
    thread_local! {
        static KEPT: RefCell<Kept> = const { RefCell::new(Vec::new()) };
    }
    let raw = keys.map(config);
    let kind = TypeId::of::<Result<Rc<T>, E>>();
    let same = |k: &[&'static str], t: &TypeId| k == keys && *t == kind;
    let found = KEPT.with(|kept| {
        kept.borrow()
            .iter()
            .find(|(k, t, texts, _)| same(k, t) && *texts == raw)
            .and_then(|(_, _, _, parsed)| parsed.downcast_ref::<Result<Rc<T>, E>>().cloned())
    });
    if let Some(parsed) = found {
        return parsed;
    }
    // Parsed with nothing borrowed: `parse` may read other settings.
    let parsed = parse(raw.each_ref().map(Option::as_deref)).map(Rc::new);
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        kept.retain(|(k, t, _, _)| !same(k, t));
        kept.push((keys.to_vec(), kind, raw.to_vec(), Box::new(parsed.clone())));
    });
    parsed
}

/// Wall-clock time, milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;

    #[cfg(all(not(feature = "connector"), feature = "classifier"))]
    use crate::classifier::bindings::mhero::plugin::host as h;
    #[cfg(feature = "connector")]
    use crate::connector::bindings::mhero::plugin::host as h;
    #[cfg(all(
        not(feature = "connector"),
        not(feature = "classifier"),
        feature = "fhir-mapper"
    ))]
    use crate::fhir::bindings::mhero::plugin::host as h;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => h::LogLevel::Trace,
            Level::Debug => h::LogLevel::Debug,
            Level::Info => h::LogLevel::Info,
            Level::Warn => h::LogLevel::Warn,
            Level::Error => h::LogLevel::Error,
        };
        h::log(level, message);
    }

    pub fn config(key: &str) -> Option<String> {
        h::config(key)
    }

    pub fn now_ms() -> u64 {
        h::now_ms()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing;

    pub fn log(level: Level, message: &str) {
        if !testing::capture_log(level, message) {
            eprintln!("[plugin {level:?}] {message}");
        }
    }

    pub fn config(key: &str) -> Option<String> {
        testing::mock_config(key)
    }

    pub fn now_ms() -> u64 {
        testing::mock_now_ms().unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }
}
