//! Shared pieces of the benchmarks: process measurements and JSON output.
//!
//! # Layout
//!
//! - `src/bin/loadgen.rs`: the end-to-end harness; one scenario per
//!   subcommand, one JSON object per run on stdout.
//! - `benches/`: criterion micro-benchmarks of single operations.
//! - this file: peak RSS, percentiles.

/// Peak resident set size of this process so far, in MiB (Linux).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Rounds to `digits` decimals for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The type of the filesystem holding `path` (`ext4`, `tmpfs`, `overlayfs`…),
/// as `stat -f` names it; figures record where their data lived.
pub fn fs_type(path: &std::path::Path) -> String {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&probe)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
