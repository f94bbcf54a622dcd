//! Crash safety across processes, over real HTTP: `mhero demo --keep`
//! sends a 200,000-recipient campaign through the HTTP transport to
//! `gateway-sink` (a JSON gateway on loopback, in its own process, that
//! logs every message it receives) and is SIGKILLed ten times at varying
//! moments. The sink never dies, so its log is the ground truth: every
//! recipient reached it at least once, nothing stays queued, and the
//! duplicates it saw are re-sends the broker counted itself
//! (`redelivered`), within the in-flight bound it documents.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::mhero;

const RECIPIENTS: u32 = 200_000;
const RATE: f64 = 8_000.0;
const KILLS: usize = 10;

pub(crate) struct Sink {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_sink(log: &std::path::Path) -> Sink {
    let mut args = vec!["--latency-ms".into(), "20".into(), "--log".into()];
    args.push(log.as_os_str().to_owned());
    start_sink_with(&args, "http://")
}

/// `gateway-sink` with `args`; `scheme` is how its first line names it.
pub(crate) fn start_sink_with(args: &[std::ffi::OsString], scheme: &str) -> Sink {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-sink"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start gateway-sink");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|url| url.strip_prefix(scheme))
        .unwrap_or_else(|| panic!("sink said {line:?}"))
        .to_string();
    Sink { child, addr }
}

/// `GET /stats` with a plain socket: flushes the sink's log.
pub(crate) fn sink_stats(addr: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

fn start_demo(config: &std::path::Path) -> Child {
    mhero()
        .arg("--config")
        .arg(config)
        .args([
            "demo",
            "--generated",
            "--keep",
            "--quiet",
            "--recipients",
            &RECIPIENTS.to_string(),
            "--alert-percent",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mhero demo")
}

#[test]
fn sigkilled_ten_times_over_http_every_recipient_reaches_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let log = dir.path().join("sink.log");
    let sink = start_sink(&log);
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"

[channels.sms]
connector = "sandbox"
rate = {RATE}
burst = 50
window = 64

[plugins.config.sandbox]
base_url = "http://{addr}"
"#,
            data = data.display(),
            addr = sink.addr
        ),
    )
    .unwrap();

    // Kill moments vary from 0.4 to 1.5 s after the run starts sending.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut interrupted = 0;
    for round in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_millis(400 + seed % 1100);
        super::kill_after_banner(start_demo(&config), after, round);
        // Read-only: what the next start will find leased and unsettled.
        let status = super::status_json_with(&config, &[]);
        if status["leased_unsettled"].as_u64().unwrap_or(0) > 0 {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= KILLS / 2,
        "most kills interrupted rounds in flight ({interrupted} of {KILLS})"
    );

    let out = start_demo(&config).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "final run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );

    let status = super::status_json_with(&config, &["--verify"]);
    let campaigns = super::accepted_campaigns(&status);
    assert_eq!(campaigns.len(), 1, "{status}");
    let c = campaigns[0];
    assert_eq!(c["total"].as_u64(), Some(u64::from(RECIPIENTS)));
    assert_eq!(c["verified"]["missing"].as_u64(), Some(0), "{c}");
    assert_eq!(c["verified"]["twice"].as_u64(), Some(0), "{c}");
    for left in ["ready", "leased", "delayed", "dead"] {
        assert_eq!(c[left].as_u64(), Some(0), "{left}: {c}");
    }
    assert_eq!(status["leased_unsettled"], 0);

    // The sink's log: every recipient at least once.
    let stats = sink_stats(&sink.addr);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for line in text.lines() {
        let key = line.split('\t').next().unwrap();
        *seen.entry(key).or_default() += 1;
    }
    assert_eq!(
        seen.len() as u64,
        u64::from(RECIPIENTS),
        "every recipient reached the gateway"
    );
    let duplicates: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
    assert_eq!(stats["duplicates"].as_u64(), Some(duplicates));
    // Every duplicate is a re-send the broker counted; a delivery leased at
    // a kill but not yet on the wire is re-sent (and counted) without
    // being a duplicate, so the broker's count can only be higher.
    let redelivered = c["redelivered"].as_u64().unwrap();
    eprintln!(
        "{KILLS} kills, {interrupted} interrupted rounds in flight; gateway duplicates {duplicates}, broker re-sends {redelivered}"
    );
    assert!(
        duplicates <= redelivered,
        "gateway saw {duplicates} duplicates, broker counted {redelivered} re-sends"
    );
    let bound: u64 = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ch| ch["in_flight_bound"].as_u64())
        .sum();
    assert!(bound > 0, "{status}");
    assert!(
        redelivered <= KILLS as u64 * bound,
        "{redelivered} re-sends over {KILLS} kills exceed the bound of {bound} per kill"
    );
    assert!(
        redelivered > 0,
        "kills interrupted rounds: something was re-sent"
    );
}
