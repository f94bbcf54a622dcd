//! `loadgen plugin`: per-call cost of warm pooled component instances,
//! and of the same plugin logic called natively in the same run.

use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use mhero_benches::round;
use mhero_broker::plugin::bindings::classifier_types::{AnswerType, ClassifyContext};
use mhero_broker::plugin::bindings::connector_types::{Lane, OutboundMessage, SendOutcome};
use mhero_broker::plugin::bindings::{Header, HttpResponse};
use mhero_broker::plugin::{HostOptions, PluginHost, PluginMetrics};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct PluginArgs {
    /// Calls measured per function.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// Runs `f` `n` times, timing each call in nanoseconds.
fn measure(n: u64, mut f: impl FnMut(u64)) -> (f64, Histogram<u64>) {
    let mut h = histogram();
    for i in 0..n.min(10_000) {
        f(i); // warm up
    }
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i);
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    (n as f64 / started.elapsed().as_secs_f64(), h)
}

fn report(wasm: (f64, Histogram<u64>), native: (f64, Histogram<u64>)) -> Value {
    json!({
        "calls_per_s": round(wasm.0, 0),
        "p50_us": round(wasm.1.value_at_quantile(0.5) as f64 / 1000.0, 3),
        "p99_us": round(wasm.1.value_at_quantile(0.99) as f64 / 1000.0, 3),
        "native_calls_per_s": round(native.0, 0),
        "native_p50_us": round(native.1.value_at_quantile(0.5) as f64 / 1000.0, 3),
        "ratio": round(native.0 / wasm.0, 2),
    })
}

pub fn run(args: &PluginArgs) -> Result<()> {
    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default())?;
    host.load_builtins()?;
    let keywords = host.require("keywords", mhero_broker::plugin::Kind::Classifier)?;
    let sandbox = host.require("sandbox", mhero_broker::plugin::Kind::Connector)?;

    let texts = ["yes", "Non merci", "ndiyo", "2 - no", "hapana", "oui"];
    let context = ClassifyContext {
        expected: AnswerType::YesNo,
        choices: Vec::new(),
        language_hint: None,
    };
    let classify = measure(args.calls, |i| {
        let c = keywords
            .classify(texts[i as usize % texts.len()], &context)
            .expect("classify");
        std::hint::black_box(c);
    });

    let native_context = mhero_sdk::classifier::ClassifyContext {
        expected: mhero_sdk::classifier::AnswerType::YesNo,
        choices: Vec::new(),
        language_hint: None,
    };
    let classify_native = measure(args.calls, |i| {
        use mhero_sdk::classifier::Classifier;
        let c = mhero_plugin_keywords::Keywords::classify(
            texts[i as usize % texts.len()].to_string(),
            native_context.clone(),
        )
        .expect("classify");
        std::hint::black_box(c);
    });

    let message = OutboundMessage {
        id: "c12-40017".into(),
        to: "+231770123456".into(),
        text: "Cholera alert: report suspected cases to the county health team today.".into(),
        language: Some("en".into()),
        lane: Lane::Emergency,
        expires_at_ms: None,
        attempt: 1,
    };
    let response = HttpResponse {
        status: 202,
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: br#"{"message_id":"sbx-981"}"#.to_vec(),
    };
    let build_only = measure(args.calls, |_| {
        std::hint::black_box(sandbox.build_send(&message).expect("build-send"));
    });
    let parse_only = measure(args.calls, |_| {
        std::hint::black_box(sandbox.parse_send_response(&response).expect("parse"));
    });
    let connector = measure(args.calls, |_| {
        let req = sandbox.build_send(&message).expect("build-send");
        let out = sandbox.parse_send_response(&response).expect("parse");
        assert!(matches!(out, SendOutcome::Accepted(_)));
        std::hint::black_box(req);
    });

    let _mock = mhero_sdk::testing::MockHost::new()
        .config("token", "sandbox-token")
        .install();
    let native_message = mhero_sdk::connector::OutboundMessage {
        id: message.id.clone(),
        to: message.to.clone(),
        text: message.text.clone(),
        language: message.language.clone(),
        lane: mhero_sdk::connector::Lane::Emergency,
        expires_at_ms: None,
        attempt: 1,
    };
    let native_response = mhero_sdk::connector::HttpResponse {
        status: 202,
        headers: vec![mhero_sdk::connector::Header::new(
            "content-type",
            "application/json",
        )],
        body: br#"{"message_id":"sbx-981"}"#.to_vec(),
    };
    let connector_native = measure(args.calls, |_| {
        use mhero_sdk::connector::Connector;
        let req =
            mhero_plugin_sandbox::Sandbox::build_send(native_message.clone()).expect("build-send");
        let out = mhero_plugin_sandbox::Sandbox::parse_send_response(native_response.clone())
            .expect("parse");
        std::hint::black_box((req, out));
    });

    let out = json!({
        "scenario": "plugin",
        "calls": args.calls,
        "classify": report(classify, classify_native),
        "connector_build_send_and_parse": report(connector, connector_native),
        "build_send_alone": {"calls_per_s": round(build_only.0, 0), "p50_us": round(build_only.1.value_at_quantile(0.5) as f64 / 1000.0, 3)},
        "parse_send_response_alone": {"calls_per_s": round(parse_only.0, 0), "p50_us": round(parse_only.1.value_at_quantile(0.5) as f64 / 1000.0, 3)},
        "note": "per-call times include two Instant::now() reads (~40 ns); connector figures are for the pair of calls",
    });
    println!("{out}");
    Ok(())
}
