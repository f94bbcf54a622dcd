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
