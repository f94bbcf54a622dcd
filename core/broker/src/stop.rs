//! How the broker's long-running tasks wait and notice that they should
//! stop: a `watch` that turns true on shutdown, or whose sender is gone
//! (its owner dropped without a shutdown).

use std::time::Duration;

use tokio::sync::watch;

/// Whether the task should stop now.
pub(crate) fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Sleeps for `period` or until shutdown; true when the task goes on.
pub(crate) async fn tick(shutdown: &mut watch::Receiver<bool>, period: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(period) => {}
        _ = shutdown.changed() => {}
    }
    !stopping(shutdown)
}
