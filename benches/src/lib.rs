//! Shared pieces of the benchmarks: process measurements and JSON output.
//!
//! # Layout
//!
//! - `src/bin/loadgen.rs`: the end-to-end harness; one scenario per
//!   subcommand, one JSON object per run on stdout.
//! - `benches/`: criterion micro-benchmarks of single operations.
//! - this file: the scratch data folder, peak RSS, rounding, the data
//!   folder's filesystem, and the settings a run changed from the
//!   defaults.

/// A fresh folder for one run's data inside `parent` (made if missing;
/// the system's temp dir without one), removed when dropped.
pub fn scratch(parent: Option<&std::path::Path>) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    let parent = parent.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("creating the data folder {}", parent.display()))?;
    tempfile::tempdir_in(&parent)
        .with_context(|| format!("creating a scratch folder in {}", parent.display()))
}

/// Peak resident set size of this process so far, in MiB (Linux).
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now, in MiB (Linux).
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Rounds to `digits` decimals for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A classic Prometheus histogram's cumulative buckets, `(le, count)` in
/// rising order with `+Inf` last, summed over the series of `metric` (its
/// `_bucket` lines) whose labels include one of `labels` (`channel="gw0"`),
/// from a text exposition.
pub fn histogram_buckets(exposition: &str, metric: &str, labels: &[String]) -> Vec<(f64, u64)> {
    let prefix = format!("{metric}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((set, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.iter().any(|l| set.split(',').any(|pair| pair == l)) {
            continue;
        }
        let Some(le) = set.split(',').find_map(|pair| pair.strip_prefix("le=\"")) else {
            continue;
        };
        let le = match le.trim_end_matches('"') {
            "+Inf" => f64::INFINITY,
            bound => match bound.parse() {
                Ok(b) => b,
                Err(_) => continue,
            },
        };
        let count = value
            .split(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count as u64,
            None => buckets.push((le, count as u64)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of cumulative buckets, the way PromQL's
/// `histogram_quantile` reads them: linear within the bucket that holds
/// it, from the bucket below's bound (0 for the first); the highest finite
/// bound when it falls in `+Inf`. `None` without observations.
pub fn histogram_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(below.0);
            }
            let inside = (count - below.1) as f64;
            let into = if inside > 0.0 {
                (rank - below.1 as f64) / inside
            } else {
                1.0
            };
            return Some(below.0 + (le - below.0) * into);
        }
        below = (le, count);
    }
    Some(below.0)
}

/// Bucket counts after less before, bucket by bucket (the observations
/// between two reads of the same series).
pub fn histogram_delta(after: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
            (le, count.saturating_sub(earlier))
        })
        .collect()
}

/// The type of the filesystem holding `path` (`ext4`, `tmpfs`, `overlay`…),
/// as the kernel's mount table names it for the deepest mount point above
/// it; figures record where their data lived. (`stat -f` reads the
/// superblock magic, which ext2, ext3 and ext4 share.)
pub fn fs_type(path: &std::path::Path) -> String {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let probe = probe.canonicalize().unwrap_or(probe);
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    mount_type(&table, &probe).unwrap_or_else(|| "unknown".into())
}

/// The type of the deepest mount in a `/proc/self/mountinfo` table that
/// holds `path`: field 5 is the mount point, and the type follows the `-`
/// separator.
fn mount_type(table: &str, path: &std::path::Path) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?.replace("\\040", " ");
            let dash = fields.iter().position(|f| *f == "-")?;
            let kind = fields.get(dash + 1)?;
            path.starts_with(&point)
                .then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, kind)| kind)
}

/// Every setting of `config` that differs from the broker's defaults, as
/// `{"key.path": value}` (each channel against a default channel; the
/// data folder left out): what a figure's JSON must say it changed.
pub fn config_diff(config: &mhero_broker::Config) -> serde_json::Value {
    use serde_json::{Map, Value};
    fn walk(path: &str, got: &Value, default: &Value, out: &mut Map<String, Value>) {
        match (got, default) {
            (Value::Object(g), Value::Object(_) | Value::Null) => {
                for (k, v) in g {
                    let key = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&key, v, default.get(k).unwrap_or(&Value::Null), out);
                }
            }
            _ if got != default => {
                // Plugin secrets (passwords, tokens) stay out of figures.
                let name = path.rsplit('.').next().unwrap_or(path);
                let value = if mhero_broker::plugin::secrets::is_secret_name(name) {
                    Value::String(mhero_broker::plugin::secrets::REDACTED.into())
                } else {
                    got.clone()
                };
                out.insert(path.to_string(), value);
            }
            _ => {}
        }
    }
    let mut out = Map::new();
    let mut got = serde_json::to_value(config).unwrap_or_default();
    let default = serde_json::to_value(mhero_broker::Config::default()).unwrap_or_default();
    let channels = got
        .as_object_mut()
        .and_then(|o| o.remove("channels"))
        .unwrap_or_default();
    if let Some(o) = got.as_object_mut() {
        o.remove("data_dir");
    }
    walk("", &got, &default, &mut out);
    let default_channel =
        serde_json::to_value(mhero_broker::config::ChannelConfig::default()).unwrap_or_default();
    if let Value::Object(channels) = channels {
        for (name, c) in channels {
            walk(&format!("channels.{name}"), &c, &default_channel, &mut out);
        }
    }
    Value::Object(out)
}

/// User + system CPU seconds of a process, from /proc (Linux).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_folder_is_made_where_asked_even_in_a_new_folder() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("new").join("data");
        let made = scratch(Some(&parent)).unwrap();
        assert_eq!(made.path().parent(), Some(parent.as_path()));
        let kept = made.path().to_path_buf();
        drop(made);
        assert!(!kept.exists(), "removed when dropped");
        let file = root.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = scratch(Some(&file)).unwrap_err();
        assert!(format!("{e:#}").contains("a-file"), "{e:#}");
    }

    #[test]
    fn the_diff_names_what_changed_and_hides_secrets() {
        let mut config = mhero_broker::Config::default();
        let kannel = config.plugins.config.entry("kannel".into()).or_default();
        kannel.insert("password".into(), "s3cret-pass".into());
        kannel.insert("username".into(), "loadgen".into());
        config.channels.insert(
            "sms".into(),
            mhero_broker::config::ChannelConfig {
                rate: 200.0,
                ..Default::default()
            },
        );
        let diff = config_diff(&config);
        assert_eq!(diff["plugins.config.kannel.password"], "[redacted]");
        assert_eq!(diff["plugins.config.kannel.username"], "loadgen");
        assert_eq!(diff["channels.sms.rate"], 200.0);
        assert!(!diff.to_string().contains("s3cret-pass"));
        assert_eq!(diff.as_object().unwrap().len(), 3, "{diff}");
    }

    #[test]
    fn quantiles_are_read_from_buckets_as_promql_reads_them() {
        let text = "\
# TYPE mhero_dispatch_request_duration_seconds histogram
mhero_dispatch_request_duration_seconds_sum{channel=\"gw0\"} 1.0
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw0\",le=\"0.001\"} 50
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw0\",le=\"0.002\"} 90
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw0\",le=\"+Inf\"} 100
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw1\",le=\"0.001\"} 50
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw1\",le=\"0.002\"} 100
mhero_dispatch_request_duration_seconds_bucket{channel=\"gw1\",le=\"+Inf\"} 100
mhero_dispatch_request_duration_seconds_bucket{channel=\"other\",le=\"0.001\"} 7
mhero_dispatch_request_duration_seconds_bucket{channel=\"other\",le=\"+Inf\"} 7
";
        let m = "mhero_dispatch_request_duration_seconds";
        let both = histogram_buckets(
            text,
            m,
            &["channel=\"gw0\"".into(), "channel=\"gw1\"".into()],
        );
        assert_eq!(both, vec![(0.001, 100), (0.002, 190), (f64::INFINITY, 200)]);
        // Rank 100 of 200 closes the first bucket; rank 150 is half-way
        // into the second (90 of its 90 observations from 100 to 190).
        assert_eq!(histogram_quantile(&both, 0.5), Some(0.001));
        let p75 = histogram_quantile(&both, 0.75).unwrap();
        assert!((p75 - (0.001 + 0.001 * 50.0 / 90.0)).abs() < 1e-12, "{p75}");
        // Rank 198 falls in +Inf: the highest finite bound.
        assert_eq!(histogram_quantile(&both, 0.99), Some(0.002));
        let gw0 = histogram_buckets(text, m, &["channel=\"gw0\"".into()]);
        assert_eq!(histogram_quantile(&gw0, 0.25), Some(0.0005));
        let before = vec![(0.001, 40), (0.002, 40), (f64::INFINITY, 40)];
        assert_eq!(
            histogram_delta(&gw0, &before),
            vec![(0.001, 10), (0.002, 50), (f64::INFINITY, 60)]
        );
        assert_eq!(
            histogram_quantile(&histogram_buckets(text, m, &[]), 0.5),
            None
        );
        assert_eq!(histogram_quantile(&histogram_delta(&gw0, &gw0), 0.5), None);
    }

    #[test]
    fn the_deepest_mount_holding_a_path_names_its_filesystem() {
        let table = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
24 22 0:22 / /tmpdata rw shared:3 - xfs /dev/vdb rw
25 22 0:23 / /mnt/my\\040disk rw shared:4 master:1 - btrfs /dev/vdc rw
";
        assert_eq!(
            super::mount_type(table, std::path::Path::new("/tmp/x/store")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            super::mount_type(table, std::path::Path::new("/tmpdata/s")).as_deref(),
            Some("xfs")
        );
        assert_eq!(
            super::mount_type(table, std::path::Path::new("/home/a")).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            super::mount_type(table, std::path::Path::new("/mnt/my disk/s")).as_deref(),
            Some("btrfs")
        );
        assert_eq!(super::mount_type("", std::path::Path::new("/x")), None);
    }
}
