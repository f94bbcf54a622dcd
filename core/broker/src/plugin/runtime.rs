//! The wasmtime host: one engine, per-plugin pre-instantiated components,
//! warm instances pooled per thread, deadlines, memory caps, traps turned
//! into structured errors, and a circuit breaker per plugin.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Component, ComponentExportIndex, Func, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginClock;
use super::bindings::connector_types::{Attachment, OutboundMessage, Receipt, StatusQuery};
use super::bindings::{
    self, HttpRequest, HttpResponse, LogLevel, PluginError, classifier, connector, fhir,
};
use super::manifest::{Kind, Limits, Manifest};
use super::metrics::PluginCallMetrics;
use super::secrets::Redactor;

/// How often the epoch advances; per-call deadlines count these ticks.
pub const TICK: Duration = Duration::from_millis(1);
/// Consecutive traps that open a plugin's circuit.
pub const BREAKER_TRIPS: u32 = 5;
/// How long an open circuit refuses calls before trying again.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(10);
/// Most log lines one call may write; more are dropped (and counted).
const MAX_LOGS_PER_CALL: u32 = 64;
/// Most bytes of one log line.
const MAX_LOG_LINE: usize = 4096;
/// Log lines (and printed lines) one plugin may write per second across
/// all its calls, and at once; more are dropped, counted, and reported at
/// most every [`LOG_NOTICE_EVERY`].
const LOG_LINES_PER_S: u32 = 50;
const LOG_BURST: u32 = 200;
const LOG_NOTICE_EVERY: Duration = Duration::from_secs(10);
/// Most bytes of a plugin's error text (or a reason it gives): it goes into
/// retry history, dead letters and logs.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Core instances, memories and tables one plugin instance may create (a
/// component built by the usual toolchains needs a handful of each).
const MAX_INSTANCES: usize = 32;
const MAX_MEMORIES: usize = 4;
const MAX_TABLES: usize = 32;
/// Most entries of one table.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most warm instances of one plugin kept per thread.
const POOL_PER_THREAD: usize = 2;

/// Why a plugin call did not return a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error of the contract.
    #[error("plugin {plugin}: {error}")]
    Plugin { plugin: String, error: PluginError },
    /// The plugin was stopped: the instance is gone, the host is fine.
    #[error("plugin {plugin} {kind}")]
    Trapped { plugin: String, kind: TrapKind },
    #[error(
        "plugin {plugin} is switched off for now after {trips} failures in a row (circuit open)"
    )]
    CircuitOpen { plugin: String, trips: u32 },
    #[error("plugin {plugin}: input of {size} bytes is over its {limit}-byte limit")]
    InputTooLarge {
        plugin: String,
        size: usize,
        limit: usize,
    },
    #[error("plugin {plugin} is a {actual}, not a {wanted}")]
    WrongKind {
        plugin: String,
        actual: Kind,
        wanted: Kind,
    },
    /// The component does not export the interface the call needs (a
    /// connector built without `media` asked to send a file).
    #[error("plugin {plugin} does not export mhero:plugin/{interface}")]
    NotExported {
        plugin: String,
        interface: &'static str,
    },
    /// The broker is shutting down: the call never ran.
    #[error("the broker is stopping; plugin calls are no longer made")]
    Stopped,
}

impl CallError {
    /// The `outcome` label value of this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Plugin { .. } => "plugin_error",
            CallError::Trapped { kind, .. } => kind.outcome(),
            CallError::CircuitOpen { .. } => "circuit_open",
            CallError::InputTooLarge { .. } => "input_too_large",
            CallError::WrongKind { .. } => "wrong_kind",
            CallError::NotExported { .. } => "not_exported",
            CallError::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrapKind {
    #[error("timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("ran out of memory (cap {cap_bytes} bytes)")]
    OutOfMemory { cap_bytes: usize },
    #[error("panicked: {message}")]
    Panic { message: String },
    #[error("returned invalid output: {message}")]
    InvalidOutput { message: String },
    #[error("trapped: {message}")]
    Trap { message: String },
    /// It tried to sleep or wait: plugins may not block a host thread.
    #[error("tried to block (sleep or wait); plugins may not block")]
    Blocked,
}

impl TrapKind {
    pub fn outcome(&self) -> &'static str {
        match self {
            TrapKind::Timeout { .. } => "timeout",
            TrapKind::OutOfMemory { .. } => "out_of_memory",
            TrapKind::Panic { .. } => "panic",
            TrapKind::InvalidOutput { .. } => "invalid_output",
            TrapKind::Trap { .. } => "trap",
            TrapKind::Blocked => "blocked",
        }
    }
}

/// Counters of one call, for `mhero plugin test`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    pub elapsed: Duration,
    /// Fuel consumed, when the host meters fuel.
    pub fuel: Option<u64>,
    /// The instance's largest linear memory so far.
    pub peak_memory_bytes: usize,
    /// Whether the call ran on a fresh instance.
    pub fresh_instance: bool,
}

/// What making one fresh instance cost ([`Plugin::cold_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColdStart {
    /// From the pre-instantiated component to a ready instance: memories
    /// mapped (copy-on-write from the component's initial image), data
    /// and tables set up, start functions run.
    pub instantiate: Duration,
    /// Linear memory the instance holds before its first call.
    pub memory_bytes: usize,
}

/// Memory accounting and the cap.
struct Limiter {
    cap: usize,
    current: usize,
    peak: usize,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = true;
            return Ok(false);
        }
        self.current = desired;
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Cuts `text` to at most `max` bytes (at a character boundary), saying
/// how much was cut.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let cut = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({} bytes cut)", cut - end));
}

/// The same error with its text cut to [`MAX_ERROR_TEXT`].
fn bounded(error: PluginError) -> PluginError {
    let cut = |mut m: String| {
        truncate(&mut m, MAX_ERROR_TEXT);
        m
    };
    match error {
        PluginError::InvalidInput(m) => PluginError::InvalidInput(cut(m)),
        PluginError::Permanent(m) => PluginError::Permanent(cut(m)),
        PluginError::Unauthorized(m) => PluginError::Unauthorized(cut(m)),
        PluginError::Transient(mut t) => {
            t.message = cut(t.message);
            PluginError::Transient(t)
        }
    }
}

/// A plugin's log budget across all its calls and threads: a plugin that
/// logs on every call cannot flood the broker's log.
pub(crate) struct LogGate {
    plugin: Arc<str>,
    limiter: governor::DefaultDirectRateLimiter,
    dropped: AtomicU64,
    noticed: parking_lot::Mutex<Option<Instant>>,
}

impl LogGate {
    fn new(plugin: Arc<str>) -> Self {
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(LOG_LINES_PER_S).expect("a positive rate"),
        )
        .allow_burst(std::num::NonZeroU32::new(LOG_BURST).expect("a positive burst"));
        Self {
            plugin,
            limiter: governor::RateLimiter::direct(quota),
            dropped: AtomicU64::new(0),
            noticed: parking_lot::Mutex::new(None),
        }
    }

    /// Whether one more line may be written now.
    fn admit(&self) -> bool {
        if self.limiter.check().is_ok() {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut noticed = self.noticed.lock();
        if noticed.is_none_or(|t| t.elapsed() >= LOG_NOTICE_EVERY) {
            *noticed = Some(Instant::now());
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin, dropped, "Plugin log lines over {LOG_LINES_PER_S} a second were dropped.");
        }
        false
    }
}

/// A plugin instance's store data.
pub struct PluginState {
    plugin: Arc<str>,
    settings: Arc<HashMap<String, String>>,
    redactor: Arc<Redactor>,
    gate: Arc<LogGate>,
    limiter: Limiter,
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: super::http::DenyAll,
    table: ResourceTable,
    logs: u32,
    dropped_logs: u32,
    panic: Option<String>,
    /// What the plugin wrote to stdout and stderr during the current call.
    output: super::stdio::OutputSink,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
    /// What `wasi:http` works on (see [`super::http`]).
    pub(crate) fn http_parts(
        &mut self,
    ) -> (
        &mut wasmtime_wasi_http::WasiHttpCtx,
        &mut ResourceTable,
        &mut dyn wasmtime_wasi_http::WasiHttpHooks,
    ) {
        (&mut self.http, &mut self.table, &mut self.http_hooks)
    }
}

impl bindings::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        // A plugin's own settings never reach the log, nor a panic
        // message (it becomes an error, which can become a dead letter).
        let mut message = self.redactor.redact(&message).into_owned();
        if let Some(panic) = message.strip_prefix(mhero_panic_prefix()) {
            let mut panic = panic.to_string();
            truncate(&mut panic, MAX_ERROR_TEXT);
            self.panic = Some(panic);
        }
        self.logs += 1;
        if self.logs > MAX_LOGS_PER_CALL {
            self.dropped_logs += 1;
            return;
        }
        if !self.gate.admit() {
            return;
        }
        truncate(&mut message, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The SDK's panic hook writes `panic: <message>` at error level.
const fn mhero_panic_prefix() -> &'static str {
    "panic: "
}

/// A pre-instantiated component of one of the three worlds.
#[derive(Clone)]
pub(crate) enum WorldPre {
    Connector(
        wasmtime::component::InstancePre<PluginState>,
        connector::ConnectorIndices,
        ConnectorExtras,
    ),
    Classifier(classifier::ClassifierPre<PluginState>),
    Fhir(fhir::FhirMapperPre<PluginState>),
}

pub(crate) enum WorldInstance {
    Connector(connector::Connector, ExtraFuncs),
    Classifier(classifier::Classifier),
    Fhir(fhir::FhirMapper),
}

/// The 1.1 interfaces a connector component may export besides its world
/// (`media`, `status-poll`): where they are in the component, found once at
/// load. A component built against 1.0 has neither.
#[derive(Clone, Default)]
pub(crate) struct ConnectorExtras {
    media: Option<ComponentExportIndex>,
    status: Option<(ComponentExportIndex, ComponentExportIndex)>,
}

/// The interface's unversioned name → its functions.
const MEDIA: (&str, &[&str]) = ("mhero:plugin/media", &["build-send-media"]);
const STATUS_POLL: (&str, &[&str]) = (
    "mhero:plugin/status-poll",
    &["build-status-query", "parse-status-answer"],
);

impl ConnectorExtras {
    /// Reads which extra interfaces `component` exports; an interface
    /// exported without its functions is an error.
    pub(crate) fn find(component: &Component, engine: &Engine) -> wasmtime::Result<Self> {
        let names: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let funcs = |(interface, wanted): (&str, &[&str])| -> wasmtime::Result<Option<Vec<ComponentExportIndex>>> {
            let Some(name) = names
                .iter()
                .find(|n| n.split('@').next() == Some(interface))
            else {
                return Ok(None);
            };
            let instance = component
                .get_export_index(None, name)
                .ok_or_else(|| wasmtime::format_err!("{name} is listed but not found"))?;
            wanted
                .iter()
                .map(|f| {
                    component
                        .get_export_index(Some(&instance), f)
                        .ok_or_else(|| wasmtime::format_err!("it exports {name} without `{f}`"))
                })
                .collect::<wasmtime::Result<Vec<_>>>()
                .map(Some)
        };
        Ok(Self {
            media: funcs(MEDIA)?.map(|f| f[0]),
            status: funcs(STATUS_POLL)?.map(|f| (f[0], f[1])),
        })
    }

    pub(crate) fn media(&self) -> bool {
        self.media.is_some()
    }

    pub(crate) fn status_poll(&self) -> bool {
        self.status.is_some()
    }

    /// The functions in a fresh instance, type-checked.
    fn load(
        &self,
        store: &mut Store<PluginState>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<ExtraFuncs> {
        let func = |store: &mut Store<PluginState>, index: &ComponentExportIndex| {
            instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("an exported function is missing"))
        };
        let media = match &self.media {
            Some(i) => {
                let f = func(store, i)?;
                f.typed::<MediaParams<'_>, (Result<HttpRequest, PluginError>,)>(&*store)
                    .map_err(|e| e.context("build-send-media has the wrong type"))?;
                Some(f)
            }
            None => None,
        };
        let status = match &self.status {
            Some((q, a)) => {
                let (q, a) = (func(store, q)?, func(store, a)?);
                q.typed::<(&[String],), (Result<StatusQuery, PluginError>,)>(&*store)
                    .map_err(|e| e.context("build-status-query has the wrong type"))?;
                a.typed::<(&[String], &HttpResponse), (Result<Vec<Receipt>, PluginError>,)>(
                    &*store,
                )
                .map_err(|e| e.context("parse-status-answer has the wrong type"))?;
                Some((q, a))
            }
            None => None,
        };
        Ok(ExtraFuncs { media, status })
    }
}

type MediaParams<'a> = (&'a OutboundMessage, &'a [Attachment]);

/// A connector instance's 1.1 functions, when its component exports them.
pub(crate) struct ExtraFuncs {
    media: Option<Func>,
    status: Option<(Func, Func)>,
}

impl ExtraFuncs {
    pub(crate) fn call_build_send_media(
        &self,
        store: &mut Store<PluginState>,
        message: &OutboundMessage,
        attachments: &[Attachment],
    ) -> wasmtime::Result<Result<HttpRequest, PluginError>> {
        let f = self
            .media
            .ok_or_else(|| wasmtime::format_err!("no build-send-media export"))?;
        let typed = f.typed::<MediaParams<'_>, (Result<HttpRequest, PluginError>,)>(&*store)?;
        let (r,) = typed.call(&mut *store, (message, attachments))?;
        Ok(r)
    }

    pub(crate) fn call_build_status_query(
        &self,
        store: &mut Store<PluginState>,
        ids: &[String],
    ) -> wasmtime::Result<Result<StatusQuery, PluginError>> {
        let (f, _) = self
            .status
            .ok_or_else(|| wasmtime::format_err!("no status-poll export"))?;
        let typed = f.typed::<(&[String],), (Result<StatusQuery, PluginError>,)>(&*store)?;
        let (r,) = typed.call(&mut *store, (ids,))?;
        Ok(r)
    }

    pub(crate) fn call_parse_status_answer(
        &self,
        store: &mut Store<PluginState>,
        ids: &[String],
        response: &HttpResponse,
    ) -> wasmtime::Result<Result<Vec<Receipt>, PluginError>> {
        let (_, f) = self
            .status
            .ok_or_else(|| wasmtime::format_err!("no status-poll export"))?;
        let typed =
            f.typed::<(&[String], &HttpResponse), (Result<Vec<Receipt>, PluginError>,)>(&*store)?;
        let (r,) = typed.call(&mut *store, (ids, response))?;
        Ok(r)
    }
}

struct Pooled {
    store: Store<PluginState>,
    instance: WorldInstance,
    calls: u32,
    baseline_memory: usize,
}

thread_local! {
    static POOLS: RefCell<HashMap<u64, Vec<Pooled>>> = RefCell::new(HashMap::new());
    static LAST_STATS: RefCell<CallStats> = RefCell::new(CallStats::default());
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// The engine and linker every plugin shares, and the epoch ticker.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    /// Plugin calls running at once on blocking threads (see
    /// [`Plugin::offload`]).
    permits: Arc<tokio::sync::Semaphore>,
    fuel: bool,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Runtime {
    /// `fuel`: meter instructions (for `mhero plugin test`; costs speed).
    pub fn new(fuel: bool) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI is linked so that std's imports resolve, but the context is
        // empty: no files, no network, no environment, no arguments.
        // Imports beyond the allow-list below are refused at load.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // Plugins run on host threads that must never be parked: waiting
        // on a pollable (a sleep) is refused instead of blocking.
        super::stdio::link_no_wait_poll(&mut linker)?;
        // wasi:http with every outgoing request denied.
        super::http::link_denied_http(&mut linker)?;
        connector::mhero::plugin::host::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("mhero-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::from)?
        };
        // Enough to keep every core busy while some calls wait to be
        // scheduled, few enough that per-thread pools of warm instances
        // stay small.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Ok(Self {
            engine,
            linker,
            permits: Arc::new(tokio::sync::Semaphore::new(cores * 2)),
            fuel,
            stop,
            ticker: Some(ticker),
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Interfaces a plugin may import. `wasi:sockets` and `wasi:http` are
/// linked because mainstream toolchains import them (CPython's standard
/// library links sockets, componentize-js links http for `fetch()`) even
/// when the plugin never uses them, with every use denied: no TCP, no UDP,
/// no name lookup, every address refused (see `PluginState`'s WASI
/// context), every HTTP request refused (see [`super::http`]) — a network
/// attempt fails at call time. Everything else (unknown packages) is
/// refused at load.
pub const ALLOWED_IMPORTS: &[&str] = &[
    // The contract: `host`, and the type-only interfaces worlds `use`.
    "mhero:plugin/",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:http/",
];

pub fn import_allowed(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    ALLOWED_IMPORTS.iter().any(|allowed| {
        if allowed.ends_with('/') {
            unversioned.starts_with(allowed)
        } else {
            unversioned == *allowed
        }
    })
}

/// Trips after [`BREAKER_TRIPS`] consecutive traps; after the cooldown one
/// call is let through, and another trap opens it again at once.
struct Breaker {
    clock: PluginClock,
    consecutive: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    fn new(clock: PluginClock) -> Self {
        Self {
            clock,
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    fn check(&self) -> Result<(), u32> {
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        if open_until != 0 && self.clock.now_ms() < open_until {
            return Err(self.consecutive.load(Ordering::Relaxed));
        }
        Ok(())
    }

    fn success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Returns true when this failure opened the circuit.
    fn failure(&self) -> bool {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_TRIPS {
            self.open_until_ms.store(
                self.clock
                    .now_ms()
                    .saturating_add(BREAKER_COOLDOWN.as_millis() as u64),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }
}

/// A loaded plugin.
pub struct Plugin {
    uid: u64,
    pub(crate) manifest: Manifest,
    limits: Limits,
    name: Arc<str>,
    settings: Arc<HashMap<String, String>>,
    redactor: Arc<Redactor>,
    gate: Arc<LogGate>,
    pre: WorldPre,
    engine: Engine,
    fuel: bool,
    breaker: Breaker,
    metrics: PluginCallMetrics,
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        runtime: &Runtime,
        manifest: Manifest,
        settings: HashMap<String, String>,
        pre: WorldPre,
        metrics: PluginCallMetrics,
        clock: PluginClock,
    ) -> Self {
        let name: Arc<str> = Arc::from(manifest.name.as_str());
        Self {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            limits: manifest.limits(),
            gate: Arc::new(LogGate::new(Arc::clone(&name))),
            name,
            manifest,
            redactor: Arc::new(Redactor::from_settings(&settings)),
            settings: Arc::new(settings),
            pre,
            engine: runtime.engine.clone(),
            fuel: runtime.fuel,
            breaker: Breaker::new(clock),
            metrics,
            permits: Arc::clone(&runtime.permits),
        }
    }

    /// This plugin with other settings (a channel's own over its
    /// connector's): its own instances, secrets to redact and circuit
    /// breaker; the same compiled component, limits, metrics and permits.
    pub(crate) fn with_settings(&self, settings: HashMap<String, String>) -> Self {
        Self {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            manifest: self.manifest.clone(),
            limits: self.limits.clone(),
            name: Arc::clone(&self.name),
            redactor: Arc::new(Redactor::from_settings(&settings)),
            settings: Arc::new(settings),
            gate: Arc::clone(&self.gate),
            pre: self.pre.clone(),
            engine: self.engine.clone(),
            fuel: self.fuel,
            breaker: Breaker::new(self.breaker.clock.clone()),
            metrics: self.metrics.clone(),
            permits: Arc::clone(&self.permits),
        }
    }

    /// Runs plugin calls off the async runtime, on tokio's blocking
    /// threads: a call may take up to its deadline, and the runtime's
    /// workers only ever wait on I/O. Group the calls of one round into one
    /// `f` (each trip to a blocking thread costs a few microseconds). At
    /// most two calls per core run at once, per host.
    pub async fn offload<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Plugin) -> Result<T, CallError> + Send + 'static,
    ) -> Result<T, CallError> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(CallError::Stopped);
        };
        let plugin = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&plugin)).await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(CallError::Stopped),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One of the plugin's settings (config over manifest defaults).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).cloned()
    }

    /// What hides this plugin's secrets in text the broker writes down.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Stats of the last call this thread made to any plugin.
    pub fn last_call_stats() -> CallStats {
        LAST_STATS.with(|s| s.borrow().clone())
    }

    /// Makes a fresh instance and drops it, as a thread does on its first
    /// call to this plugin or when it replaces a used-up or trapped
    /// instance: what that costs, for `mhero plugin test` and the
    /// benchmarks. Nothing is pooled or called.
    pub fn cold_start(&self) -> Result<ColdStart, CallError> {
        let started = Instant::now();
        let pooled = self
            .instantiate()
            .map_err(|e| self.trapped(classify(&e, None, &self.limits), started))?;
        let instantiate = started.elapsed();
        Ok(ColdStart {
            instantiate,
            memory_bytes: pooled.baseline_memory,
        })
    }

    fn instantiate(&self) -> wasmtime::Result<Pooled> {
        let output = super::stdio::OutputSink::default();
        let state = PluginState {
            plugin: Arc::clone(&self.name),
            settings: Arc::clone(&self.settings),
            redactor: Arc::clone(&self.redactor),
            gate: Arc::clone(&self.gate),
            limiter: Limiter {
                cap: self.limits.memory_bytes,
                current: 0,
                peak: 0,
                denied: false,
            },
            // Nothing is granted: no files (no preopens), no environment,
            // no network of any kind.
            wasi: WasiCtx::builder()
                .stdout(output.clone())
                .stderr(output.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .socket_addr_check(|_, _| Box::pin(async { false }))
                .build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: super::http::DenyAll,
            table: ResourceTable::new(),
            logs: 0,
            dropped_logs: 0,
            panic: None,
            output,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // What wasmtime copies out of the guest in one go (a call's result,
        // a log line) stops near the output cap, before the host holds it:
        // the exact cap is checked on the copied value, which may take up
        // to twice its measured size in host memory (list elements are
        // counted by their host size).
        store.set_hostcall_fuel(
            self.limits
                .max_output_bytes
                .saturating_mul(2)
                .saturating_add(MAX_LOG_LINE * 4),
        );
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        if self.fuel {
            store.set_fuel(u64::MAX)?;
        }
        let instance = match &self.pre {
            WorldPre::Connector(pre, indices, extras) => {
                let instance = pre.instantiate(&mut store)?;
                let world = indices.load(&mut store, &instance)?;
                let funcs = extras.load(&mut store, &instance)?;
                WorldInstance::Connector(world, funcs)
            }
            WorldPre::Classifier(pre) => WorldInstance::Classifier(pre.instantiate(&mut store)?),
            WorldPre::Fhir(pre) => WorldInstance::Fhir(pre.instantiate(&mut store)?),
        };
        let baseline_memory = store.data().limiter.current;
        Ok(Pooled {
            store,
            instance,
            calls: 0,
            baseline_memory,
        })
    }

    fn deadline_ticks(&self) -> u64 {
        self.limits
            .timeout_ms
            .div_ceil(TICK.as_millis() as u64)
            .max(1)
    }

    /// Runs one call on a warm instance of this thread, under the plugin's
    /// limits. `output_size` measures the answer against the output cap.
    pub(crate) fn call<R>(
        &self,
        input_size: usize,
        f: impl FnOnce(
            &mut Store<PluginState>,
            &WorldInstance,
        ) -> wasmtime::Result<Result<R, PluginError>>,
        output_size: impl FnOnce(&R) -> usize,
    ) -> Result<R, CallError> {
        if let Err(trips) = self.breaker.check() {
            self.metrics.record("circuit_open", Duration::ZERO);
            return Err(CallError::CircuitOpen {
                plugin: self.name.to_string(),
                trips,
            });
        }
        if input_size > self.limits.max_input_bytes {
            self.metrics.record("input_too_large", Duration::ZERO);
            return Err(CallError::InputTooLarge {
                plugin: self.name.to_string(),
                size: input_size,
                limit: self.limits.max_input_bytes,
            });
        }
        let started = Instant::now();
        let pooled = POOLS.with(|p| p.borrow_mut().get_mut(&self.uid).and_then(Vec::pop));
        let fresh = pooled.is_none();
        let mut pooled = match pooled {
            Some(p) => p,
            None => match self.instantiate() {
                Ok(p) => p,
                Err(e) => return Err(self.trapped(classify(&e, None, &self.limits), started)),
            },
        };
        let store = &mut pooled.store;
        store.set_epoch_deadline(self.deadline_ticks());
        {
            let data = store.data_mut();
            data.logs = 0;
            data.panic = None;
            data.limiter.denied = false;
        }
        let fuel_before = if self.fuel {
            store.get_fuel().ok()
        } else {
            None
        };
        let result = f(store, &pooled.instance);
        let elapsed = started.elapsed();
        let data = pooled.store.data();
        let stats = CallStats {
            elapsed,
            fuel: fuel_before.and_then(|b| pooled.store.get_fuel().ok().map(|a| b - a)),
            peak_memory_bytes: data.limiter.peak,
            fresh_instance: fresh,
        };
        if data.dropped_logs > 0 && data.logs > MAX_LOGS_PER_CALL {
            tracing::warn!(plugin = %self.name, dropped = data.logs - MAX_LOGS_PER_CALL, "Plugin log lines over the per-call limit were dropped.");
        }
        forward_output(&self.name, &data.output, &self.redactor, &self.gate);
        LAST_STATS.with(|s| *s.borrow_mut() = stats);
        match result {
            Err(e) => {
                let kind = classify(&e, Some(pooled.store.data()), &self.limits);
                // The instance is dropped: a trapped instance is never reused.
                Err(self.trapped(kind, started))
            }
            Ok(Err(error)) => {
                let error = bounded(error);
                // The plugin answered; the instance is healthy.
                self.breaker.success();
                self.metrics.record("plugin_error", elapsed);
                self.repool(pooled);
                Err(CallError::Plugin {
                    plugin: self.name.to_string(),
                    error,
                })
            }
            Ok(Ok(value)) => {
                let size = output_size(&value);
                if size > self.limits.max_output_bytes {
                    let kind = TrapKind::InvalidOutput {
                        message: format!(
                            "output of {size} bytes is over the {}-byte limit",
                            self.limits.max_output_bytes
                        ),
                    };
                    return Err(self.trapped(kind, started));
                }
                self.breaker.success();
                self.metrics.record("ok", elapsed);
                self.repool(pooled);
                Ok(value)
            }
        }
    }

    /// Returns a healthy instance to this thread's pool, unless it has
    /// served its calls or its memory grew.
    fn repool(&self, mut pooled: Pooled) {
        pooled.calls += 1;
        let grown = pooled.store.data().limiter.current
            > pooled.baseline_memory.saturating_mul(2).max(8 << 20);
        if pooled.calls >= self.limits.recycle_after_calls || grown {
            return;
        }
        POOLS.with(|p| {
            let mut pools = p.borrow_mut();
            let pool = pools.entry(self.uid).or_default();
            if pool.len() < POOL_PER_THREAD {
                pool.push(pooled);
            }
        });
    }

    fn trapped(&self, kind: TrapKind, started: Instant) -> CallError {
        self.metrics.record(kind.outcome(), started.elapsed());
        if self.breaker.failure() {
            tracing::error!(plugin = %self.name, error = %kind, "Plugin failed repeatedly; its circuit is open for {} s.", BREAKER_COOLDOWN.as_secs());
        } else {
            tracing::warn!(plugin = %self.name, error = %kind, "Plugin call trapped; instance recycled.");
        }
        CallError::Trapped {
            plugin: self.name.to_string(),
            kind,
        }
    }

    pub(crate) fn missing_export(&self, interface: &'static str) -> CallError {
        CallError::NotExported {
            plugin: self.name.to_string(),
            interface,
        }
    }

    /// A connector's 1.1 interfaces; `None` for other kinds.
    pub(crate) fn extras(&self) -> Option<&ConnectorExtras> {
        match &self.pre {
            WorldPre::Connector(_, _, extras) => Some(extras),
            _ => None,
        }
    }

    pub(crate) fn wrong_kind(&self, wanted: Kind) -> CallError {
        CallError::WrongKind {
            plugin: self.name.to_string(),
            actual: self.kind(),
            wanted,
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // Only this thread's pool can be reached; other threads' instances
        // go when their threads end.
        let _ = POOLS.try_with(|p| p.borrow_mut().remove(&self.uid));
    }
}

/// Forwards what a call printed to the log, at debug level: stdout and
/// stderr are not the contract's log, and may carry message content.
fn forward_output(
    plugin: &str,
    sink: &super::stdio::OutputSink,
    redactor: &Redactor,
    gate: &LogGate,
) {
    let (lines, dropped) = sink.take();
    for line in lines {
        if !gate.admit() {
            break;
        }
        tracing::debug!(plugin, output = %redactor.redact(&line), "Plugin printed.");
    }
    if dropped > 0 {
        tracing::debug!(
            plugin,
            dropped_bytes = dropped,
            "Plugin output over the per-call limit was dropped."
        );
    }
}

fn classify(e: &wasmtime::Error, state: Option<&PluginState>, limits: &Limits) -> TrapKind {
    if e.downcast_ref::<super::stdio::Blocked>().is_some() {
        return TrapKind::Blocked;
    }
    if let Some(state) = state {
        if state.limiter.denied {
            return TrapKind::OutOfMemory {
                cap_bytes: limits.memory_bytes,
            };
        }
        if let Some(message) = &state.panic {
            return TrapKind::Panic {
                message: message.clone(),
            };
        }
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TrapKind::Timeout {
            timeout_ms: limits.timeout_ms,
        },
        Some(trap) => TrapKind::Trap {
            message: trap.to_string(),
        },
        // wasmtime stopped copying a result (or a log line) that went
        // past the hostcall fuel: far over the output cap.
        None if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") => {
            TrapKind::InvalidOutput {
                message: format!(
                    "output over the {}-byte limit (stopped while it was being copied)",
                    limits.max_output_bytes
                ),
            }
        }
        // Not a trap: the guest's answer could not be lifted (bad UTF-8,
        // out-of-range discriminant, pointer out of bounds…).
        None => TrapKind::InvalidOutput {
            message: {
                let mut m = format!("{e:#}");
                truncate(&mut m, MAX_ERROR_TEXT);
                m
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_names_packages_not_prefixes_of_names() {
        for allowed in [
            "mhero:plugin/host@0.1.0",
            "wasi:cli/stdout@0.2.3",
            "wasi:sockets/tcp@0.2.0",
            "wasi:http/outgoing-handler@0.2.3",
            "wasi:http/types",
        ] {
            assert!(import_allowed(allowed), "{allowed}");
        }
        for refused in [
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:httpx/types@0.2.0",
            "wasi:http",
            "mhero:plugins/host@0.1.0",
            "example:evil/exfiltrate",
        ] {
            assert!(!import_allowed(refused), "{refused}");
        }
    }

    /// A core module with `memories` memories and `tables` tables, in the
    /// binary format.
    fn module(memories: u8, tables: u8) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        if tables > 0 {
            let body: Vec<u8> = std::iter::once(tables)
                .chain((0..tables).flat_map(|_| [0x70, 0x00, 0x00]))
                .collect();
            m.extend([0x04, body.len() as u8]);
            m.extend(body);
        }
        if memories > 0 {
            let body: Vec<u8> = std::iter::once(memories)
                .chain((0..memories).flat_map(|_| [0x00, 0x00]))
                .collect();
            m.extend([0x05, body.len() as u8]);
            m.extend(body);
        }
        m
    }

    fn store(engine: &Engine) -> Store<Limiter> {
        let mut store = Store::new(
            engine,
            Limiter {
                cap: 32 << 20,
                current: 0,
                peak: 0,
                denied: false,
            },
        );
        store.limiter(|l| l);
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    #[test]
    fn an_instance_gets_a_bounded_number_of_instances_memories_and_tables() {
        let runtime = Runtime::new(false).unwrap();
        let engine = &runtime.engine;
        let instantiate = |store: &mut Store<Limiter>, bytes: &[u8]| {
            let module = wasmtime::Module::new(engine, bytes).unwrap();
            wasmtime::Instance::new(store, &module, &[]).map(|_| ())
        };
        let mut s = store(engine);
        assert!(instantiate(&mut s, &module(MAX_MEMORIES as u8, 0)).is_ok());
        let mut s = store(engine);
        assert!(instantiate(&mut s, &module(MAX_MEMORIES as u8 + 1, 0)).is_err());
        let mut s = store(engine);
        assert!(instantiate(&mut s, &module(0, MAX_TABLES as u8)).is_ok());
        let mut s = store(engine);
        assert!(instantiate(&mut s, &module(0, MAX_TABLES as u8 + 1)).is_err());
        let mut s = store(engine);
        let empty = module(0, 0);
        for _ in 0..MAX_INSTANCES {
            instantiate(&mut s, &empty).unwrap();
        }
        assert!(
            instantiate(&mut s, &empty).is_err(),
            "one instance too many"
        );
    }

    #[test]
    fn a_plugin_logging_on_every_call_is_held_to_its_log_rate() {
        let gate = LogGate::new(Arc::from("chatty"));
        let started = Instant::now();
        let admitted = (0..5_000).filter(|_| gate.admit()).count() as f64;
        // The burst at once, then the rate for however long this took.
        let ceiling = f64::from(LOG_BURST)
            + f64::from(LOG_LINES_PER_S) * started.elapsed().as_secs_f64()
            + 1.0;
        assert!(admitted >= f64::from(LOG_BURST), "{admitted}");
        assert!(admitted <= ceiling, "{admitted} > {ceiling}");
    }
}
