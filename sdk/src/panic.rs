//! A panic inside a plugin traps its instance; the host recycles it and
//! reports the call failed. This hook first sends the panic's message to
//! the host log, so the report says *why*. The export macros install it on
//! the first call; nothing for authors to do.

use std::sync::Once;

static INSTALL: Once = Once::new();

/// Prefix the host looks for to attach a panic message to a trap.
pub const PANIC_PREFIX: &str = "panic: ";

pub fn install() {
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            crate::host::log(
                crate::host::Level::Error,
                &format!("{PANIC_PREFIX}{message}{at}"),
            );
        }));
    });
}
