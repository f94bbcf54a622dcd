//! The store through the binary: a demo run kept on disk, read back by
//! `mhero status`, and the bad-directory errors a user sees.

use std::sync::Arc;

use mhero_broker::config::StoreConfig;
use mhero_broker::metrics::StoreMetrics;
use mhero_broker::store::RocksEngine;

use super::mhero;

#[test]
fn a_kept_demo_store_is_fully_accounted_for_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let out = mhero()
        .args([
            "demo",
            "--generated",
            "--recipients",
            "3000",
            "--alert-after-ms",
            "100",
            "--keep",
            "--quiet",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("demo: cholera alert") && report.contains("emergency"),
        "{report}"
    );

    let status = super::status_json(&data, &["--verify"]);
    let campaigns = status["campaigns"].as_array().unwrap();
    let totals: Vec<u64> = campaigns
        .iter()
        .map(|c| c["total"].as_u64().unwrap())
        .collect();
    assert_eq!(totals, vec![3000, 300]);
    for c in campaigns {
        assert_eq!(
            c["verified"]["ended"], c["total"],
            "every recipient ended: {c}"
        );
        assert_eq!(c["verified"]["twice"], 0, "{c}");
        assert_eq!(c["ready"].as_u64(), Some(0));
        assert_eq!(c["leased"].as_u64(), Some(0));
    }
    assert_eq!(campaigns[1]["lane"], "emergency");
    // The demo's WhatsApp gateway does not know 5 % of the numbers it is
    // sent (about 70 % of the 3,000 are on WhatsApp): each of those is
    // rerouted to SMS once. The alert goes by SMS only: nothing to reroute
    // to.
    let rerouted = campaigns[0]["rerouted"].as_u64().unwrap();
    assert!((60..=150).contains(&rerouted), "{rerouted}: {status}");
    assert_eq!(campaigns[1]["rerouted"], 0, "{status}");
    assert_eq!(status["leased_unsettled"], 0);
}

#[test]
fn a_store_in_use_by_another_process_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let held = Arc::new(
        RocksEngine::open(dir.path(), &StoreConfig::default(), StoreMetrics::default()).unwrap(),
    );
    // `status` only reads: it runs beside the process that holds the store.
    let out = mhero()
        .args(["status", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Anything that writes is refused, naming the store.
    let out = mhero()
        .args([
            "demo",
            "--generated",
            "--keep",
            "--quiet",
            "--recipients",
            "10",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked by another process")
            && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop(held);
    let out = mhero()
        .args(["status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_foreign_folder_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("patients.csv"), "id,name\n").unwrap();
    let out = mhero()
        .args(["status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an mHero store"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn dead_letters_are_listed_and_replayed_from_the_command_line() {
    use mhero_broker::store::{NewDelivery, Outcome, QueueKey, Store, SystemClock};
    use mhero_proto::{CampaignId, ChannelId, Lane};

    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Arc::new(
            RocksEngine::open(dir.path(), &StoreConfig::default(), StoreMetrics::default())
                .unwrap(),
        );
        let (store, _) =
            Store::open(engine, Arc::new(SystemClock), StoreMetrics::default()).unwrap();
        let q = QueueKey {
            channel: ChannelId(1),
            lane: Lane::High,
            campaign: CampaignId(4),
        };
        let deliveries = (0..3)
            .map(|i| NewDelivery {
                index: i,
                recipient: format!("+23177000000{i}"),
                route: 0,
                language: None,
            })
            .collect();
        store.enqueue(q, deliveries).wait().unwrap();
        let leased = store.lease(q.channel, 3).unwrap().wait().unwrap();
        let settled = leased
            .into_iter()
            .map(|l| {
                (
                    l,
                    Outcome::Dead {
                        reason: "number barred by operator".into(),
                    },
                )
            })
            .collect();
        store.settle(settled).unwrap().wait().unwrap();
    }
    let out = mhero()
        .args(["dead", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.contains("number barred by operator"))
            .count(),
        3,
        "{listed}"
    );

    let out = mhero()
        .args(["dead", "replay", "c4-1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mhero()
        .args(["dead", "replay", "c4-9", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter for delivery c4-9"));
    let out = mhero()
        .args(["dead", "replay", "--all", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 dead letters back"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status = super::status_json(dir.path(), &[]);
    assert_eq!(status["dead"], 0);
    assert_eq!(
        status["channels"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
}

/// The demo imports a generated iHRIS registry into the directory and
/// selects its audiences there: the bulk by role, the alert by district.
#[test]
fn the_demo_selects_its_audiences_from_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let out = mhero()
        .args([
            "demo",
            "--recipients",
            "3000",
            "--alert-after-ms",
            "100",
            "--keep",
            "--quiet",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("3000 health workers imported"), "{report}");
    let count = |selector: &str| -> u64 {
        let out = mhero()
            .args(["contacts", "count", selector, "--json", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["selected"].as_u64().unwrap()
    };
    let bulk = count("role:nurse OR role:chw OR role:midwife OR role:pharmacist");
    let alert = count("location:D-bong-0");
    assert!(bulk > 2000 && bulk < 3000, "{bulk}");
    assert!(alert > 0 && alert < 100, "{alert}");
    let status = super::status_json(&data, &["--verify"]);
    let campaigns = super::accepted_campaigns(&status);
    let totals: Vec<u64> = campaigns
        .iter()
        .map(|c| c["total"].as_u64().unwrap())
        .collect();
    assert_eq!(totals, vec![bulk, alert]);
    for c in campaigns {
        assert_eq!(c["verified"]["missing"], 0, "{c}");
        assert_eq!(c["ready"].as_u64(), Some(0));
    }
}
