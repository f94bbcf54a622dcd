//! Crash safety of the real binary: `mhero demo --keep` is killed with
//! SIGKILL several times while its campaigns run, restarted each time, and
//! in the end every recipient of every campaign has exactly one terminal
//! status: none lost, none twice; re-sends stay within the bound.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::mhero;

const RECIPIENTS: u32 = 20_000;
const RATE: f64 = 3000.0;

/// At a kill, what was leased and not yet settled, at most: the bound the
/// dispatcher documents for each of the demo's two channels.
fn resend_bound_per_kill() -> u64 {
    let channel = mhero_broker::config::ChannelConfig {
        rate: RATE,
        burst: 50,
        ..mhero_broker::config::ChannelConfig::default()
    };
    let lease_max = mhero_broker::config::DispatchConfig::default().lease_max;
    2 * mhero_broker::dispatch::sender::in_flight_bound(&channel, 1, lease_max) as u64
}

fn start(data: &std::path::Path) -> Child {
    mhero()
        .args([
            "demo",
            "--generated",
            "--keep",
            "--quiet",
            "--recipients",
            &RECIPIENTS.to_string(),
            "--alert-after-ms",
            "300",
            "--rate",
            &RATE.to_string(),
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mhero demo")
}

#[test]
fn killed_with_sigkill_mid_campaign_every_recipient_ends_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let kills = [700u64, 1300, 900, 1600];
    for (round, after_ms) in kills.iter().enumerate() {
        super::kill_after_banner(start(&data), Duration::from_millis(*after_ms), round);
    }
    // The last run goes to the end.
    let child = start(&data);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "final run failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status = super::status_json(&data, &["--verify"]);
    let campaigns = super::accepted_campaigns(&status);
    assert_eq!(campaigns.len(), 2, "{status}");
    for c in &campaigns {
        let v = &c["verified"];
        let total = c["total"].as_u64().unwrap();
        assert_eq!(
            v["ended"].as_u64(),
            Some(total),
            "every recipient ended: {c}"
        );
        assert_eq!(v["missing"].as_u64(), Some(0), "none lost: {c}");
        assert_eq!(v["twice"].as_u64(), Some(0), "none in two states: {c}");
        assert_eq!(c["ready"].as_u64(), Some(0));
        assert_eq!(c["leased"].as_u64(), Some(0));
        assert_eq!(c["delayed"].as_u64(), Some(0));
        // Re-sends after a crash are the deliveries leased but unsettled
        // at the kill: at most a few lease rounds per kill per channel.
        let redelivered = c["redelivered"].as_u64().unwrap();
        assert!(
            redelivered <= kills.len() as u64 * resend_bound_per_kill(),
            "{redelivered} re-sends: {c}"
        );
    }
    let bulk = campaigns[0];
    assert_eq!(bulk["total"].as_u64(), Some(u64::from(RECIPIENTS)));
    assert_eq!(
        status["leased_unsettled"], 0,
        "the last run settled everything it leased"
    );
}
