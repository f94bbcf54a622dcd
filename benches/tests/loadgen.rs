//! `loadgen plugin` runs and reports what it says it reports. Figures are
//! benchmarks, not test results: nothing here asserts a speed.

use std::process::Command;

use serde_json::Value;

fn plugin_report(langs: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["plugin", "--json", "--calls", "2000"])
        .args(["--interpreter-calls", "200", "--instances", "5"])
        .args(["--lang", langs])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen plugin --lang {langs}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn check_language(report: &Value, lang: &str, plugin: &str) {
    let l = &report["languages"][lang];
    assert_eq!(l["plugin"], plugin, "{l}");
    for field in [
        "component_mb",
        "warm_calls_per_s",
        "warm_p50_us",
        "instantiate_p50_ms",
        "fresh_call_p50_ms",
        "linear_memory_mib",
    ] {
        assert!(
            l[field].as_f64().is_some_and(|v| v > 0.0),
            "{lang} {field}: {l}"
        );
    }
    // (A call on a fresh instance includes making one, but the two are
    // separate samples of a few instances each: comparing their medians
    // is a timing assert, and failed once on a loaded CI machine.)
    assert!(
        l["warm_p50_us"].as_f64() <= l["warm_p99_us"].as_f64(),
        "{l}"
    );
}

#[test]
fn the_rust_classifier_is_reported_by_default() {
    let report = plugin_report("rust");
    check_language(&report, "rust", "keywords");
    assert!(report["classify"]["p50_us"].as_f64().is_some());
    assert_eq!(report["languages"].as_object().unwrap().len(), 1);
}

#[test]
fn classifiers_in_three_languages_side_by_side() {
    // Builds the examples from the registries; skips (or fails under
    // CI=true) where their tools are missing.
    if !mhero_tests::examples::build_classifiers() {
        return;
    }
    let report = plugin_report("rust,js,python");
    check_language(&report, "rust", "keywords");
    check_language(&report, "js", "js-keywords");
    check_language(&report, "python", "py-keywords");
}

#[test]
fn an_unbuilt_example_is_named_with_its_build_command() {
    let examples = tempfile::tempdir().unwrap();
    let folder = examples.path().join("js-classifier");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sdk/examples/js-classifier/plugin.toml"
        ),
        folder.join("plugin.toml"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["plugin", "--json", "--calls", "10", "--lang", "js"])
        .arg("--examples")
        .arg(examples.path())
        .output()
        .expect("run loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("js-keywords.wasm is not built: run `npm ci && npm run build`"),
        "{err}"
    );
}

/// Runs loadgen with `args`; its one JSON object.
fn scenario(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// `loadgen quic` submits what it says, every message is sent, and the
/// subscriptions read one event per delivery of every campaign, however
/// few of them are open at once.
#[test]
fn quic_reports_what_it_submitted_and_read() {
    let report = scenario(&[
        "quic",
        "--json",
        "--n",
        "3000",
        "--batch",
        "500",
        "--concurrency",
        "3",
        "--subscriptions",
        "2",
    ]);
    assert_eq!(report["scenario"], "quic");
    assert_eq!(report["accepted"], 3000, "{report}");
    assert_eq!(report["all_sent"], true, "{report}");
    assert_eq!(report["subscriptions"], 2, "{report}");
    // Read from the start after the run: each delivery's current status
    // (a status record or a dead letter) once, 500 in each of the six
    // campaigns.
    assert_eq!(report["campaigns_read"], 6, "{report}");
    assert_eq!(report["status_events"], 3000, "{report}");
    assert!(report["msgs_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["filesystem"].is_string(), "{report}");
}

/// `loadgen store` settles every delivery it enqueued (it checks the
/// store's counters itself) and sets its figure beside a limit that
/// committed the same number of deliveries in groups of the same size,
/// round by round; the figures are the rounds' medians.
#[test]
fn store_reports_its_figure_beside_the_raw_limit() {
    let report = scenario(&[
        "store", "--json", "--n", "6000", "--batch", "500", "--rounds", "3",
    ]);
    assert_eq!(report["scenario"], "store");
    assert_eq!(report["n"], 6000, "{report}");
    assert_eq!(report["leases_ahead"], 2, "{report}");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{report}");
    let field = |r: &Value, name: &str| r[name].as_f64().unwrap();
    let mut ratios = Vec::new();
    for r in rounds {
        assert!(field(r, "commit_groups") >= 1.0, "{report}");
        assert!(field(r, "mean_group_ops") >= 1.0, "{report}");
        let (figure, limit) = (field(r, "msgs_per_s"), field(r, "limit_msgs_per_s"));
        assert!(figure > 0.0 && limit > 0.0, "{report}");
        assert!(
            (field(r, "ratio_to_limit") - figure / limit).abs() < 0.01,
            "{report}"
        );
        ratios.push(field(r, "ratio_to_limit"));
    }
    ratios.sort_by(f64::total_cmp);
    assert_eq!(field(&report, "ratio_to_limit"), ratios[1], "{report}");
    let mut figures: Vec<f64> = rounds.iter().map(|r| field(r, "msgs_per_s")).collect();
    figures.sort_by(f64::total_cmp);
    assert_eq!(field(&report, "msgs_per_s"), figures[1], "{report}");
    assert!(report["mean_group_ops"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["filesystem"].is_string(), "{report}");
}

/// `loadgen api` answers every request it sent and says what each cost.
#[test]
fn api_reports_its_requests_and_their_cost() {
    let report = scenario(&["api", "--n", "300", "--concurrency", "4"]);
    assert_eq!(report["scenario"], "api");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["filesystem"].is_string(), "{report}");
}

/// `loadgen http` sends every delivery through real HTTP to the sink, and
/// its limit sends as many messages in the same form (here the batch form).
/// (`cargo test --workspace` builds `gateway-sink` beside it.)
#[test]
fn http_reports_its_figure_beside_a_limit_of_the_same_messages() {
    let report = scenario(&["http", "--json", "--n", "2000", "--batch", "5"]);
    assert_eq!(report["scenario"], "http");
    assert_eq!(report["n"], 2000, "{report}");
    assert_eq!(report["batch"], 5, "{report}");
    let limit = &report["transport_limit"];
    assert_eq!(limit["messages"], 2000, "{report}");
    assert_eq!(limit["requests"], 400, "five messages a request: {report}");
    assert!(limit["messages_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["ratio_to_limit"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["filesystem"].is_string(), "{report}");
    // The sink saw both phases' requests, all over plain HTTP/1.1.
    assert_eq!(
        report["sink_http_versions"],
        serde_json::json!({"HTTP/1.1": 800}),
        "{report}"
    );
}

/// `loadgen http --tls`: the same over HTTPS, where the sink offers
/// HTTP/2 and the channels trust its certificate through `ca_file`.
#[test]
fn http_over_tls_speaks_http2_to_the_sink() {
    let report = scenario(&["http", "--json", "--n", "1000", "--tls"]);
    assert_eq!(report["n"], 1000, "{report}");
    assert_eq!(
        report["sink_http_versions"],
        serde_json::json!({"HTTP/2.0": 2000}),
        "{report}"
    );
    assert!(
        report["transport"].as_str().unwrap().starts_with("HTTPS"),
        "{report}"
    );
}

/// `loadgen kannel` (Kannel installed): every message of both phases
/// reaches the SMSC and comes back delivered, the figures are there, and
/// no secret is in the JSON.
#[test]
fn kannel_reports_both_phases() {
    if !mhero_tests::peer_present(mhero_tests::kannel::missing()) {
        return;
    }
    let report = scenario(&[
        "kannel", "--json", "--n", "300", "--rate", "100", "--max-n", "300",
    ]);
    assert_eq!(report["scenario"], "kannel");
    assert_eq!(report["delivered"], 300, "{report}");
    assert_eq!(report["max_delivered"], 300, "{report}");
    assert_eq!(report["smsc_received"], 600, "{report}");
    for field in [
        "achieved_per_s",
        "achieved_ratio",
        "dlr_p99_ms",
        "max_per_s",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert!(report["filesystem"].is_string(), "{report}");
    assert_eq!(
        report["differs"]["plugins.config.kannel.password"],
        "[redacted]"
    );
    assert!(!report.to_string().contains("loadgen-pass"), "{report}");
}
