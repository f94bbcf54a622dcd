//! `loadgen plugin`: per-call cost of warm pooled component instances,
//! and of the same plugin logic called natively in the same run; with
//! `--lang`, one classifier per language (Rust, JavaScript, Python) side
//! by side: warm calls, fresh instances, memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mhero_benches::round;
use mhero_broker::plugin::bindings::classifier_types::{AnswerType, ClassifyContext};
use mhero_broker::plugin::bindings::connector_types::{Lane, OutboundMessage, SendOutcome};
use mhero_broker::plugin::bindings::{Header, HttpResponse};
use mhero_broker::plugin::{
    BUILTIN, ComponentCache, HostOptions, Kind, Manifest, Plugin, PluginHost, PluginMetrics,
};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct PluginArgs {
    /// Calls measured per function.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
    /// Classifiers compared in `languages`: `rust` (the built-in
    /// `keywords`), `js` and `python` (the SDK's examples, built first:
    /// `npm ci && npm run build` in sdk/examples/js-classifier, `sh
    /// build.sh` in sdk/examples/python-classifier; `make test` builds
    /// them).
    #[arg(long, value_delimiter = ',', default_value = "rust")]
    lang: Vec<Lang>,
    /// Warm calls measured per interpreted language (Rust gets `--calls`).
    #[arg(long, default_value_t = 20_000)]
    interpreter_calls: u64,
    /// Fresh instances made per language.
    #[arg(long, default_value_t = 200)]
    instances: u64,
    /// The SDK's examples folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/examples"))]
    examples: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    fn key(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
        }
    }
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

/// Where a language's classifier comes from: its manifest and component.
fn classifier_source(args: &PluginArgs, lang: Lang) -> Result<(Manifest, Vec<u8>)> {
    let from_folder = |folder: &str, build: &str| -> Result<(Manifest, Vec<u8>)> {
        let dir = args.examples.join(folder);
        let text = std::fs::read_to_string(dir.join("plugin.toml"))
            .with_context(|| format!("reading {}/plugin.toml", dir.display()))?;
        let manifest = Manifest::parse(&text).map_err(anyhow::Error::msg)?;
        let wasm = dir.join(manifest.component_file());
        if !wasm.is_file() {
            bail!(
                "{} is not built: run `{build}` in {} first",
                wasm.display(),
                dir.display()
            );
        }
        Ok((manifest, std::fs::read(&wasm)?))
    };
    match lang {
        Lang::Rust => {
            let builtin = BUILTIN
                .iter()
                .find(|b| Manifest::parse(b.manifest).is_ok_and(|m| m.name == "keywords"))
                .context("the keywords plugin is built in")?;
            let manifest = Manifest::parse(builtin.manifest).map_err(anyhow::Error::msg)?;
            Ok((manifest, builtin.component.to_vec()))
        }
        Lang::Js => from_folder("js-classifier", "npm ci && npm run build"),
        Lang::Python => from_folder("python-classifier", "sh build.sh"),
    }
}

/// A host with the broker's production settings and a compile cache.
fn production_host(cache: &Path, key: [u8; 32]) -> Result<PluginHost> {
    Ok(PluginHost::new(
        HostOptions {
            cache: Some(ComponentCache::new(cache, key)),
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )?)
}

/// One language's classifier: compile, load from the cache, warm calls,
/// fresh instances, memory.
fn language(args: &PluginArgs, lang: Lang) -> Result<Value> {
    let (manifest, component) = classifier_source(args, lang)?;
    let name = manifest.name.clone();
    let cache = tempfile::tempdir()?;
    let key = *b"loadgen plugin --lang cache key!";

    // First start: compiled and written to the cache.
    let started = Instant::now();
    production_host(cache.path(), key)?.load(manifest.clone(), &component, lang.key())?;
    let compile = started.elapsed();
    // After a restart: read from the cache. Everything below runs on this.
    let host = production_host(cache.path(), key)?;
    let started = Instant::now();
    let loaded = host.load(manifest.clone(), &component, lang.key())?;
    let cached_load = started.elapsed();
    anyhow::ensure!(loaded.from_cache, "{name} was not read from the cache");
    let plugin = host.require(&name, Kind::Classifier)?;

    let texts = ["yes", "Non merci", "oui", "no", "YES please", "non"];
    let context = ClassifyContext {
        expected: AnswerType::YesNo,
        choices: Vec::new(),
        language_hint: None,
    };
    let calls = if lang == Lang::Rust {
        args.calls
    } else {
        args.interpreter_calls
    };
    let (rate, warm) = measure(calls, |i| {
        let c = plugin
            .classify(texts[i as usize % texts.len()], &context)
            .expect("classify");
        std::hint::black_box(c);
    });
    let linear_memory = Plugin::last_call_stats().peak_memory_bytes;

    // Fresh instances, made and dropped; the first also builds the
    // component's memory image.
    let mut instantiate = histogram();
    let mut first = None;
    let mut start_memory = 0;
    for _ in 0..args.instances {
        let cold = plugin.cold_start()?;
        first.get_or_insert(cold.instantiate);
        start_memory = cold.memory_bytes;
        instantiate.saturating_record(cold.instantiate.as_nanos() as u64);
    }

    // A call on a fresh instance every time, through the production path.
    let mut recycled = manifest;
    recycled.limits.recycle_after_calls = Some(1);
    let fresh_host = production_host(cache.path(), key)?;
    fresh_host.load(recycled, &component, lang.key())?;
    let fresh_plugin = fresh_host.require(&name, Kind::Classifier)?;
    let mut fresh = histogram();
    for i in 0..args.instances {
        let t = Instant::now();
        let c = fresh_plugin
            .classify(texts[i as usize % texts.len()], &context)
            .expect("classify");
        fresh.saturating_record(t.elapsed().as_nanos() as u64);
        assert!(Plugin::last_call_stats().fresh_instance);
        std::hint::black_box(c);
    }

    let us = |h: &Histogram<u64>, q: f64| round(h.value_at_quantile(q) as f64 / 1000.0, 3);
    let ms = |h: &Histogram<u64>, q: f64| round(h.value_at_quantile(q) as f64 / 1e6, 3);
    let mib = |b: usize| round(b as f64 / (1024.0 * 1024.0), 2);
    let secs = |d: Duration| round(d.as_secs_f64(), 2);
    Ok(json!({
        "plugin": name,
        "component_mb": round(component.len() as f64 / 1e6, 2),
        "compile_s": secs(compile),
        "cached_load_ms": round(cached_load.as_secs_f64() * 1e3, 1),
        "warm_calls": calls,
        "warm_calls_per_s": round(rate, 0),
        "warm_p50_us": us(&warm, 0.5),
        "warm_p99_us": us(&warm, 0.99),
        "instances": args.instances,
        "first_instantiate_ms": first.map(|d| round(d.as_secs_f64() * 1e3, 3)),
        "instantiate_p50_ms": ms(&instantiate, 0.5),
        "instantiate_p99_ms": ms(&instantiate, 0.99),
        "fresh_call_p50_ms": ms(&fresh, 0.5),
        "fresh_call_p99_ms": ms(&fresh, 0.99),
        "memory_at_start_mib": mib(start_memory),
        "linear_memory_mib": mib(linear_memory),
        "limits": {
            "memory_mb": plugin.limits().memory_bytes / (1024 * 1024),
            "timeout_ms": plugin.limits().timeout_ms,
        },
    }))
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

    let mut languages = serde_json::Map::new();
    for &lang in &args.lang {
        languages.insert(lang.key().into(), language(args, lang)?);
    }

    let out = json!({
        "scenario": "plugin",
        "calls": args.calls,
        "languages": languages,
        "classify": report(classify, classify_native),
        "connector_build_send_and_parse": report(connector, connector_native),
        "build_send_alone": {"calls_per_s": round(build_only.0, 0), "p50_us": round(build_only.1.value_at_quantile(0.5) as f64 / 1000.0, 3)},
        "parse_send_response_alone": {"calls_per_s": round(parse_only.0, 0), "p50_us": round(parse_only.1.value_at_quantile(0.5) as f64 / 1000.0, 3)},
        "note": "per-call times include two Instant::now() reads (~40 ns); connector figures are for the pair of calls",
        "languages_note": "production host settings (no fuel metering), the component loaded from the compile cache as after a restart; warm: classify on a pooled instance, the same six replies for every language; instantiate: a fresh instance from the pre-instantiated component, made and dropped (copy-on-write memory image); fresh_call: an instance made, called once and dropped (recycle_after_calls = 1), what a thread pays on its first call; linear_memory: the instance's largest linear memory, what its memory limit counts (an upper bound of what is resident: untouched pages of the initial image are shared)",
    });
    println!("{out}");
    Ok(())
}
