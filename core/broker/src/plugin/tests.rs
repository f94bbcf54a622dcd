//! The host against the real components: built-ins loaded and cached,
//! golden fixtures, the sandbox send path, and hostile plugins trapped or
//! refused while the host keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::bindings::classifier_types::{AnswerType, ClassifyContext};
use super::bindings::connector_types::{Lane, OutboundMessage, SendOutcome, WebhookEvent};
use super::fixture::{self, Fixture};
use super::*;
use crate::channel::{SandboxConfig, SandboxGateway};
use crate::metrics::Metrics;

fn host() -> PluginHost {
    let h = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    h.load_builtins().unwrap();
    h
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_plugin(name: &str) -> (Manifest, PathBuf) {
    let (manifest, component) = test_fixtures()
        .iter()
        .find(|(m, _)| {
            Manifest::parse(&std::fs::read_to_string(m).unwrap())
                .unwrap()
                .name
                == name
        })
        .unwrap_or_else(|| panic!("fixture plugin {name} was not built"));
    (
        Manifest::parse(&std::fs::read_to_string(manifest).unwrap()).unwrap(),
        PathBuf::from(component),
    )
}

fn yes_no() -> ClassifyContext {
    ClassifyContext {
        expected: AnswerType::YesNo,
        choices: Vec::new(),
        language_hint: None,
    }
}

fn message(i: u32) -> OutboundMessage {
    OutboundMessage {
        id: format!("c1-{i}"),
        to: format!("+2317700{i:05}"),
        text: "Measles vaccination campaign starts Monday.".into(),
        language: Some("en".into()),
        lane: Lane::Normal,
        expires_at_ms: None,
        attempt: 1,
    }
}

#[test]
fn built_ins_load_describe_themselves_and_come_from_the_cache_the_second_time() {
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions {
        cache: Some(ComponentCache::new(cache.path(), [7; 32])),
        ..HostOptions::default()
    };
    let first = PluginHost::new(options.clone(), PluginMetrics::default()).unwrap();
    let loaded = first.load_builtins().unwrap();
    let mut names: Vec<(&str, Kind)> = loaded.iter().map(|l| (l.name.as_str(), l.kind)).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("africastalking", Kind::Connector),
            ("http-json", Kind::Connector),
            ("ihris-practitioner", Kind::FhirMapper),
            ("kannel", Kind::Connector),
            ("keywords", Kind::Classifier),
            ("language", Kind::Classifier),
            ("messenger", Kind::Connector),
            ("openmrs-patient", Kind::FhirMapper),
            ("rapidpro", Kind::Connector),
            ("sandbox", Kind::Connector),
            ("stock-report", Kind::Classifier),
            ("telegram", Kind::Connector),
            ("twilio", Kind::Connector),
            ("whatsapp-cloud", Kind::Connector),
        ]
    );
    assert!(loaded.iter().all(|l| !l.from_cache));
    let info = first.get("sandbox").unwrap().connector_info().unwrap();
    assert_eq!(
        (info.max_batch, info.counts_segments, info.idempotent),
        (100, true, true)
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        loaded.len()
    );
    drop(first);
    let second = PluginHost::new(options, PluginMetrics::default()).unwrap();
    assert!(
        second.load_builtins().unwrap().iter().all(|l| l.from_cache),
        "a restart does not recompile"
    );
    assert_eq!(
        second
            .get("keywords")
            .unwrap()
            .classify("ndiyo", &yes_no())
            .unwrap()
            .label,
        "yes"
    );
}

/// A cache folder the built-ins were compiled into, and the options that
/// use it.
fn filled_cache() -> (tempfile::TempDir, HostOptions) {
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions {
        cache: Some(ComponentCache::new(cache.path(), [7; 32])),
        ..HostOptions::default()
    };
    PluginHost::new(options.clone(), PluginMetrics::default())
        .unwrap()
        .load_builtins()
        .unwrap();
    (cache, options)
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_fatal() {
    let (cache, options) = filled_cache();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let host = PluginHost::new(options, PluginMetrics::default()).unwrap();
    assert!(host.load_builtins().unwrap().iter().all(|l| !l.from_cache));
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// Every built-in works as its kind (a swapped entry would not).
fn built_ins_work(host: &PluginHost) {
    assert_eq!(
        host.get("keywords")
            .unwrap()
            .classify("yes", &yes_no())
            .unwrap()
            .label,
        "yes"
    );
    assert_eq!(
        host.get("sandbox")
            .unwrap()
            .connector_info()
            .unwrap()
            .plugin
            .name,
        "sandbox"
    );
}

#[test]
fn a_well_formed_but_swapped_cache_entry_is_recompiled_never_run() {
    let (cache, options) = filled_cache();
    let entries = cache_entries(cache.path());
    assert!(entries.len() >= 3, "{entries:?}");
    // Real compiled code with a valid MAC, copied over every other entry:
    // what someone who can write the folder but not read the store's key
    // can do.
    let donor = std::fs::read(&entries[0]).unwrap();
    for e in &entries[1..] {
        std::fs::write(e, &donor).unwrap();
    }
    let host = PluginHost::new(options, PluginMetrics::default()).unwrap();
    let loaded = host.load_builtins().unwrap();
    let cached: Vec<&str> = loaded
        .iter()
        .filter(|l| l.from_cache)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "only the donor's own entry verifies: {cached:?}"
    );
    built_ins_work(&host);
}

#[test]
fn entries_written_under_another_key_are_recompiled_and_the_folder_is_private() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("plugin-cache");
    let with_key = |key| HostOptions {
        cache: Some(ComponentCache::new(&dir, key)),
        ..HostOptions::default()
    };
    let load = |key| {
        let host = PluginHost::new(with_key(key), PluginMetrics::default()).unwrap();
        let loaded = host.load_builtins().unwrap();
        (host, loaded)
    };
    let (_, first) = load([1; 32]);
    assert!(first.iter().all(|l| !l.from_cache));
    // Another broker's (or a forger's) entries do not verify here.
    let (host, second) = load([2; 32]);
    assert!(second.iter().all(|l| !l.from_cache), "{second:?}");
    built_ins_work(&host);
    // Rewritten under this key, they are used from then on.
    let (_, third) = load([2; 32]);
    assert!(third.iter().all(|l| l.from_cache), "{third:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
        for e in cache_entries(&dir) {
            let name = e.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".cwasm"),
                "a temporary file was left: {name}"
            );
            let mode = std::fs::metadata(&e).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}: {mode:o}");
        }
    }
}

#[cfg(unix)]
#[test]
fn a_symlinked_cache_entry_is_not_followed() {
    let (cache, options) = filled_cache();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"not the broker's").unwrap();
    for e in cache_entries(cache.path()) {
        std::fs::remove_file(&e).unwrap();
        std::os::unix::fs::symlink(&victim, &e).unwrap();
    }
    let host = PluginHost::new(options, PluginMetrics::default()).unwrap();
    assert!(host.load_builtins().unwrap().iter().all(|l| !l.from_cache));
    built_ins_work(&host);
    assert_eq!(std::fs::read(&victim).unwrap(), b"not the broker's");
    for e in cache_entries(cache.path()) {
        assert!(
            !std::fs::symlink_metadata(&e).unwrap().is_symlink(),
            "{e:?}"
        );
    }
}

#[test]
fn every_golden_fixture_passes_on_the_built_components() {
    let mut ran = 0;
    // Every built-in plugin's fixtures: plugins/<group>/<name>/tests/fixtures.
    let mut dirs = Vec::new();
    for group in ["connectors", "classifiers", "fhir"] {
        for entry in std::fs::read_dir(workspace().join("plugins").join(group)).unwrap() {
            let dir = entry.unwrap().path();
            let manifest =
                Manifest::parse(&std::fs::read_to_string(dir.join("plugin.toml")).unwrap())
                    .unwrap();
            if dir.join("tests/fixtures").is_dir() {
                dirs.push((manifest.name, dir.join("tests/fixtures")));
            }
        }
    }
    dirs.sort();
    assert!(dirs.iter().any(|(name, _)| name == "kannel"), "{dirs:?}");
    for (plugin, dir) in &dirs {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let fx = Fixture::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let mut settings = std::collections::BTreeMap::new();
            if let Some(config) = &fx.config {
                settings.insert(plugin.to_string(), config.clone());
            }
            let host = PluginHost::new(
                HostOptions {
                    settings,
                    ..HostOptions::default()
                },
                PluginMetrics::default(),
            )
            .unwrap();
            // Only the plugin under test: compiling every built-in for
            // each fixture would dominate the test.
            let builtin = BUILTIN
                .iter()
                .find(|b| Manifest::parse(b.manifest).unwrap().name == *plugin)
                .unwrap();
            host.load(
                Manifest::parse(builtin.manifest).unwrap(),
                builtin.component,
                "built-in",
            )
            .unwrap();
            let result = fixture::run(&host.get(plugin).unwrap(), &fx).unwrap();
            match fixture::check(&fx, &result) {
                Some(Ok(())) => ran += 1,
                Some(Err(diff)) => panic!("{}: {diff}", file.display()),
                None => panic!("{} expects nothing", file.display()),
            }
        }
    }
    assert!(ran >= 100, "only {ran} fixtures ran");
}

/// A built-in's component with its names' version changed from WIT 1.1.0
/// to 1.0.0 (same length, so the binary stays valid): what a plugin built
/// against the 1.0 SDK imports.
fn as_built_against_1_0(component: &[u8]) -> Vec<u8> {
    let (new, old) = (b"@1.1.0", b"@1.0.0");
    let mut bytes = component.to_vec();
    let mut replaced = 0;
    let mut i = 0;
    while i + new.len() <= bytes.len() {
        if &bytes[i..i + new.len()] == new {
            bytes[i..i + new.len()].copy_from_slice(old);
            replaced += 1;
            i += new.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "the component names no @1.1.0");
    bytes
}

#[test]
fn a_plugin_built_against_wit_1_0_loads_and_runs() {
    let builtin = BUILTIN
        .iter()
        .find(|b| Manifest::parse(b.manifest).unwrap().name == "kannel")
        .unwrap();
    let old = as_built_against_1_0(builtin.component);
    let settings: toml::Table = toml::from_str(
        "username = \"moh\"\npassword = \"s3cret\"\nwebhook_url = \"https://broker.example/webhooks/sms\"\nwebhook_token = \"t\"",
    )
    .unwrap();
    let host = PluginHost::new(
        HostOptions {
            settings: [("kannel".to_string(), settings)].into_iter().collect(),
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )
    .unwrap();
    let engine = &host.runtime.engine;
    let component = wasmtime::component::Component::new(engine, &old).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("mhero:"))
        .collect();
    assert!(
        imports.contains(&"mhero:plugin/host@1.0.0".to_string()),
        "{imports:?}"
    );
    assert!(imports.iter().all(|i| i.ends_with("@1.0.0")), "{imports:?}");
    host.load(
        Manifest::parse(builtin.manifest).unwrap(),
        &old,
        "1.0 build",
    )
    .unwrap();
    let kannel = host.get("kannel").unwrap();
    // It reads its settings through the 1.0 import of `host`.
    let request = kannel.build_send(&message(1)).unwrap();
    assert!(request.url.contains("username=moh"), "{}", request.url);
    assert!(!kannel.carries_media() && !kannel.answers_status_queries());
}

#[test]
fn what_each_connector_can_do_is_read_from_its_exports() {
    let host = host();
    let can = |name: &str| {
        let p = host.get(name).unwrap();
        (p.carries_media(), p.answers_status_queries())
    };
    for media in ["whatsapp-cloud", "telegram", "twilio"] {
        assert_eq!(can(media), (true, false), "{media}");
    }
    assert_eq!(can("rapidpro"), (false, true));
    for text_only in [
        "sandbox",
        "kannel",
        "africastalking",
        "messenger",
        "http-json",
    ] {
        assert_eq!(can(text_only), (false, false), "{text_only}");
    }
    // Other kinds have no connector interfaces at all.
    assert_eq!(can("keywords"), (false, false));
    let files = [super::bindings::connector_types::Attachment {
        url: "https://moh.example/poster.jpg".into(),
        content_type: "image/jpeg".into(),
        filename: None,
    }];
    let err = host
        .get("sandbox")
        .unwrap()
        .build_send_media(&message(2), &files)
        .unwrap_err();
    assert_eq!(err.outcome(), "not_exported", "{err}");
    assert!(matches!(
        host.get("keywords")
            .unwrap()
            .build_send_media(&message(3), &files),
        Err(CallError::WrongKind { .. })
    ));
}

#[test]
fn the_sandbox_send_path_end_to_end() {
    let host = host();
    let sandbox = host.get("sandbox").unwrap();
    let gateway = Arc::new(SandboxGateway::new(SandboxConfig {
        receipt_delay_ms: 0,
        reply_percent: 100.0,
        replies: vec!["NDIYO".into()],
        ..SandboxConfig::default()
    }));
    let m = message(7);
    let request = sandbox.build_send(&m).unwrap();
    let response = gateway.handle(&request, 1000);
    let SendOutcome::Accepted(external) = sandbox.parse_send_response(&response).unwrap() else {
        panic!("not accepted")
    };
    let (hook, _) = gateway.take_webhook(1000, 100, false).unwrap();
    let result = sandbox.handle_webhook(&hook).unwrap();
    assert_eq!(result.response.status, 200);
    assert!(matches!(&result.events[0], WebhookEvent::Receipt(r) if r.external_id == external));
    assert!(
        matches!(&result.events[1], WebhookEvent::Inbound(i) if i.text == "NDIYO" && i.from == m.to)
    );
    // The reply classifies.
    assert_eq!(
        host.get("keywords")
            .unwrap()
            .classify("NDIYO", &yes_no())
            .unwrap()
            .language
            .as_deref(),
        Some("sw")
    );
    // A host the manifest does not allow is refused before anything is sent.
    let allowed = crate::channel::AllowedHosts::resolve(
        &sandbox.manifest().capabilities.allowed_hosts,
        &|key| sandbox.setting(key),
    );
    assert!(allowed.allows(&request.url));
    assert!(!allowed.allows("https://evil.example/steal"));
}

/// The misbehaving fixture under a deadline no call of it reaches except
/// the endless loop, even in a debug build on a busy machine: each test
/// sees the limit it is about, not a timeout.
fn hostile() -> (PluginHost, Arc<Plugin>) {
    hostile_with_deadline(5_000)
}

/// The fixture under `timeout_ms` (its manifest says 50).
fn hostile_with_deadline(timeout_ms: u64) -> (PluginHost, Arc<Plugin>) {
    let host = host();
    let (mut manifest, component) = fixture_plugin("hostile-misbehave");
    manifest.limits.timeout_ms = Some(timeout_ms);
    host.load_file(manifest, &component).unwrap();
    let plugin = host.get("hostile-misbehave").unwrap();
    (host, plugin)
}

fn trap_of(result: Result<impl std::fmt::Debug, CallError>) -> TrapKind {
    match result {
        Err(CallError::Trapped { kind, .. }) => kind,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_and_the_host_keeps_serving() {
    let (host, plugin) = hostile_with_deadline(50);
    // Only the epoch deadline can end this call: the trap says it did.
    let kind = trap_of(plugin.classify("loop", &yes_no()));
    assert_eq!(kind, TrapKind::Timeout { timeout_ms: 50 });
    // The same plugin serves the next call on a fresh instance, and so do others.
    assert_eq!(plugin.classify("hello", &yes_no()).unwrap().label, "ok");
    built_ins_work(&host);
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let (_host, plugin) = hostile();
    let kind = trap_of(plugin.classify("bomb", &yes_no()));
    assert_eq!(
        kind,
        TrapKind::OutOfMemory {
            cap_bytes: 32 << 20
        }
    );
    assert_eq!(plugin.classify("fine", &yes_no()).unwrap().label, "ok");
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let (_host, plugin) = hostile();
    match trap_of(plugin.classify("panic", &yes_no())) {
        TrapKind::Panic { message } => assert!(
            message.contains("hostile plugin panicked on purpose"),
            "{message}"
        ),
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn oversized_output_is_stopped_while_it_is_copied() {
    let (_host, plugin) = hostile();
    // 8 MiB against a 256 KiB cap: wasmtime stops lifting it at the
    // hostcall fuel, before the host holds it.
    match trap_of(plugin.classify("big", &yes_no())) {
        TrapKind::InvalidOutput { message } => assert!(
            message.contains("over the 262144-byte limit")
                && message.contains("stopped while it was being copied"),
            "{message}"
        ),
        other => panic!("expected invalid output, got {other:?}"),
    }
    // The plugin serves on.
    assert_eq!(plugin.classify("hello", &yes_no()).unwrap().label, "ok");
}

#[test]
fn a_plugin_error_text_is_cut_to_its_limit() {
    let (_host, plugin) = hostile();
    match plugin.classify("longerror", &yes_no()) {
        Err(CallError::Plugin {
            error: bindings::PluginError::Permanent(m),
            ..
        }) => {
            assert!(m.len() <= runtime::MAX_ERROR_TEXT + 32, "{} bytes", m.len());
            assert!(m.starts_with("why why") && m.ends_with("bytes cut)"), "{m}");
        }
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[test]
fn a_manifest_asking_more_than_the_operator_allows_is_refused() {
    let host = PluginHost::new(
        HostOptions {
            ceilings: Ceilings {
                timeout_ms: 20,
                ..Ceilings::default()
            },
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )
    .unwrap();
    let (manifest, component) = fixture_plugin("hostile-misbehave");
    let err = host
        .load_file(manifest, &component)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostile-misbehave")
            && err.contains("timeout_ms = 50 ms")
            && err.contains("plugins.ceilings.timeout_ms allows 20"),
        "{err}"
    );
    assert!(host.get("hostile-misbehave").is_none());
}

#[test]
fn the_filesystem_is_empty_to_a_plugin() {
    let (_host, plugin) = hostile();
    match plugin.classify("fs", &yes_no()) {
        Err(CallError::Plugin {
            error: bindings::PluginError::Permanent(m),
            ..
        }) => assert!(m.contains("no file access"), "{m}"),
        other => panic!("a plugin must not read host files: {other:?}"),
    }
}

#[test]
fn a_plugin_that_sleeps_is_refused_and_one_that_prints_is_not_stopped() {
    let (_host, plugin) = hostile();
    match plugin.classify("sleep", &yes_no()) {
        Err(CallError::Trapped {
            kind: TrapKind::Blocked,
            ..
        }) => {}
        other => panic!("a sleep must be refused: {other:?}"),
    }
    // Printing 2,000 lines neither blocks nor fails the call; the output
    // is kept to a bounded sink.
    let printed = plugin.classify("print", &yes_no()).unwrap();
    assert_eq!(printed.label, "printed");
    assert_eq!(plugin.classify("hello", &yes_no()).unwrap().label, "ok");
}

/// From inside the async runtime (a worker thread), as the dispatcher
/// used to call plugins: printing must not make WASI block on the
/// runtime, and sleeping is refused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_called_from_blocking_threads_print_and_are_refused_a_sleep() {
    let (_host, plugin) = hostile();
    let printed = plugin
        .offload(|p| p.classify("print", &yes_no()))
        .await
        .unwrap();
    assert_eq!(printed.label, "printed");
    let slept = plugin.offload(|p| p.classify("sleep", &yes_no())).await;
    assert!(
        matches!(
            slept,
            Err(CallError::Trapped {
                kind: TrapKind::Blocked,
                ..
            })
        ),
        "{slept:?}"
    );
}

#[test]
fn a_plugin_that_tries_the_network_loads_and_is_denied_at_run_time() {
    let host = host();
    let (manifest, component) = fixture_plugin("hostile-network");
    // It imports `wasi:sockets` (as CPython-based plugins do) and
    // `wasi:http` (as componentize-js plugins do): it loads.
    host.load_file(manifest, &component).unwrap();
    let plugin = host.get("hostile-network").unwrap();
    for _ in 0..3 {
        match plugin.classify("phone home", &yes_no()) {
            Err(CallError::Plugin {
                error: bindings::PluginError::Permanent(m),
                ..
            }) => assert!(
                m.starts_with("connect failed") && m.to_lowercase().contains("denied"),
                "{m}"
            ),
            other => panic!("expected the connect to be denied, got {other:?}"),
        }
        // The whole request is built (headers, body); handing it over is
        // refused at once, with the error code wasi:http has for it.
        match plugin.classify("http", &yes_no()) {
            Err(CallError::Plugin {
                error: bindings::PluginError::Permanent(m),
                ..
            }) => assert_eq!(m, "http failed: ErrorCode::HttpRequestDenied"),
            other => panic!("expected the request to be denied, got {other:?}"),
        }
    }
    // A denied attempt is an answer, not a trap: no circuit opens, and the
    // host serves on.
    built_ins_work(&host);
}

#[test]
fn repeated_traps_open_the_circuit_until_the_cooldown_on_the_host_clock() {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_800_000_000_000));
    let clock = {
        let now = Arc::clone(&now);
        PluginClock::new(move || now.load(std::sync::atomic::Ordering::Relaxed))
    };
    let advance = |d: Duration| {
        now.fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    };
    let host = PluginHost::new(
        HostOptions {
            clock,
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )
    .unwrap();
    let (manifest, component) = fixture_plugin("hostile-misbehave");
    host.load_file(manifest, &component).unwrap();
    let plugin = host.get("hostile-misbehave").unwrap();
    for _ in 0..runtime::BREAKER_TRIPS {
        trap_of(plugin.classify("panic", &yes_no()));
    }
    let open = |plugin: &Plugin| {
        matches!(
            plugin.classify("hello", &yes_no()),
            Err(CallError::CircuitOpen { trips, .. }) if trips >= runtime::BREAKER_TRIPS
        )
    };
    // Open: a well-formed call is refused without running.
    assert!(open(&plugin));
    advance(runtime::BREAKER_COOLDOWN - Duration::from_millis(1));
    assert!(open(&plugin), "still open 1 ms before the cooldown ends");
    // After the cooldown one call goes through; a trap then opens the
    // circuit again at once, and a success closes it.
    advance(Duration::from_millis(1));
    trap_of(plugin.classify("panic", &yes_no()));
    assert!(open(&plugin), "one more trap after the cooldown reopens it");
    advance(runtime::BREAKER_COOLDOWN);
    assert_eq!(plugin.classify("hello", &yes_no()).unwrap().label, "ok");
    assert_eq!(plugin.classify("hello", &yes_no()).unwrap().label, "ok");
}

#[test]
fn oversized_input_wrong_kind_and_plugin_errors_are_clear() {
    let host = host();
    let keywords = host.get("keywords").unwrap();
    let err = keywords
        .classify(&"a".repeat(100 << 10), &yes_no())
        .unwrap_err();
    assert!(
        matches!(err, CallError::InputTooLarge { limit: 65536, .. }),
        "{err:?}"
    );
    let err = keywords.build_send(&message(1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin keywords is a classifier, not a connector"
    );
    let mut unsigned = host
        .get("sandbox")
        .unwrap()
        .build_send(&message(1))
        .unwrap();
    unsigned.url = "/webhooks/sandbox".into();
    let err = host
        .get("sandbox")
        .unwrap()
        .handle_webhook(&unsigned)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Plugin {
                error: bindings::PluginError::Unauthorized(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        host.require("nope", Kind::Connector)
            .unwrap_err()
            .to_string()
            .contains("loaded: africastalking, http-json, ihris-practitioner, kannel, keywords,")
    );
}

#[test]
fn a_manifest_that_lies_about_its_kind_is_refused() {
    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    let keywords = BUILTIN
        .iter()
        .find(|b| b.manifest.contains("name = \"keywords\""))
        .unwrap();
    let mut manifest = Manifest::parse(keywords.manifest).unwrap();
    manifest.kind = Kind::Connector;
    let err = host
        .load(manifest, keywords.component, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not export the connector world"), "{err}");
    let err = host
        .load(
            Manifest::parse(keywords.manifest).unwrap(),
            b"\0asm garbage",
            "garbage.wasm",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("garbage.wasm is not a valid WebAssembly component"),
        "{err}"
    );
}

#[test]
fn calls_are_counted_by_outcome_in_the_registry() {
    let metrics = Metrics::new();
    let host = PluginHost::new(HostOptions::default(), metrics.plugin.clone()).unwrap();
    host.load_builtins().unwrap();
    let keywords = host.get("keywords").unwrap();
    for _ in 0..3 {
        keywords.classify("yes", &yes_no()).unwrap();
    }
    let text = metrics.encode();
    assert!(
        text.contains("mhero_plugin_calls_total{plugin=\"keywords\",outcome=\"ok\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("mhero_plugin_call_duration_seconds_count{plugin=\"keywords\"} 4"),
        "{text}"
    );
}

#[test]
fn threads_get_their_own_warm_instances() {
    let host = Arc::new(host());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let host = Arc::clone(&host);
            std::thread::spawn(move || {
                let keywords = host.get("keywords").unwrap();
                for i in 0..200 {
                    let text = if (i + t) % 2 == 0 { "oui" } else { "non" };
                    let c = keywords.classify(text, &yes_no()).unwrap();
                    assert_eq!(c.label, if text == "oui" { "yes" } else { "no" });
                }
                Plugin::last_call_stats().fresh_instance
            })
        })
        .collect();
    for h in handles {
        assert!(
            !h.join().unwrap(),
            "later calls reuse the thread's warm instance"
        );
    }
}

#[test]
fn external_plugins_load_from_a_folder_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let keywords = BUILTIN
        .iter()
        .find(|b| b.manifest.contains("name = \"keywords\""))
        .unwrap();
    let good = dir.path().join("keywords");
    std::fs::create_dir(&good).unwrap();
    std::fs::write(good.join("plugin.toml"), keywords.manifest).unwrap();
    std::fs::write(good.join("keywords.wasm"), keywords.component).unwrap();
    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    let loaded = host.load_dir(dir.path()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(
        loaded[0].origin.ends_with("keywords.wasm"),
        "{}",
        loaded[0].origin
    );
    assert_eq!(
        host.get("keywords")
            .unwrap()
            .classify("sim", &yes_no())
            .unwrap()
            .label,
        "yes"
    );

    let bad = dir.path().join("zz-broken");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("plugin.toml"),
        "name = \"broken\"\nversion = \"1.0.0\"\nkind = \"classifier\"\n",
    )
    .unwrap();
    let fresh = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    let err = fresh.load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("broken.wasm"),
        "the missing component is named: {err}"
    );
}
