//! Crash safety of the real binary: `mhero demo --keep` is killed with
//! SIGKILL several times while its campaigns run, restarted each time, and
//! in the end every recipient of every campaign has exactly one terminal
//! status: none lost, none twice; re-sends stay within the bound.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::mhero;

const RECIPIENTS: u32 = 20_000;
const RATE: f64 = 6000.0;
/// One lease round at RATE (20 ms worth plus the burst), as the channel
/// scheduler sizes it.
const ROUND: u64 = (RATE * 0.02) as u64 + 50 + 1;
/// At a kill, what was leased and not yet settled: the round being sent and
/// up to four whose settle commits are in flight, on each of two channels.
const RESEND_BOUND_PER_KILL: u64 = 2 * 5 * ROUND;

fn start(data: &std::path::Path) -> Child {
    mhero()
        .args([
            "demo",
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

fn kill9(child: &mut Child) {
    // SIGKILL: no destructor runs, nothing is flushed.
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn killed_with_sigkill_mid_campaign_every_recipient_ends_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let kills = [700u64, 1300, 900, 1600];
    for (round, after_ms) in kills.iter().enumerate() {
        let mut child = start(&data);
        // Kill only once it is dispatching: it prints its banner then.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("round {round}: no banner from mhero demo"));
        assert!(banner.starts_with("mHero demo:"), "{banner}");
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(*after_ms) {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "round {round}: mhero exited early ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill9(&mut child);
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
    // A kill between storing a campaign and accepting it leaves it
    // abandoned (never acknowledged, never sent); the demo then submits it
    // again.
    let campaigns: Vec<&serde_json::Value> = status["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] != "abandoned")
        .collect();
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
            redelivered <= kills.len() as u64 * RESEND_BOUND_PER_KILL,
            "{redelivered} re-sends: {c}"
        );
    }
    let bulk = campaigns[0];
    assert_eq!(bulk["total"].as_u64(), Some(u64::from(RECIPIENTS)));
    assert_eq!(
        status["recovered_on_open"], 0,
        "the last run settled everything it leased"
    );
}
