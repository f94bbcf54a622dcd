//! The composition root: [`Broker::open`] wires the store, the plugin
//! host, the channels, the dispatcher, the webhook entry point and the
//! metrics; [`Broker::shutdown`] stops them in order. The CLI, the tests and
//! the benchmarks all start the broker through this one door.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::channel::{SandboxGateway, Webhooks, sandbox};
use crate::config::Config;
use crate::directory::{Directory, Syncer};
use crate::dispatch::{Dispatcher, TokioClock};
use crate::error::{Error, Result};
use crate::inbound::{Pipeline, subscribers::Subscriber};
use crate::metrics::Metrics;
use crate::plugin::{ComponentCache, HostOptions, PluginClock, PluginHost};
use crate::store::{self, Engine, Recovery, Store};
use crate::workflows::Surveys;

/// What differs from a plain [`Broker::open`]; tests and benchmarks only.
#[derive(Clone, Default)]
pub struct Options {
    /// The clock (tests start it at a fixed time on tokio's paused clock).
    pub clock: Option<TokioClock>,
    /// An engine to use instead of the one the config names.
    pub engine: Option<Arc<dyn Engine>>,
}

/// A running broker.
pub struct Broker {
    config: Config,
    store: Arc<Store>,
    directory: Arc<Directory>,
    plugins: Arc<PluginHost>,
    dispatcher: Dispatcher,
    webhooks: Arc<Webhooks>,
    inbound: Arc<Pipeline>,
    surveys: Arc<Surveys>,
    reports: Arc<crate::workflows::Reports>,
    courses: Arc<crate::workflows::Courses>,
    validations: Arc<crate::workflows::Validations>,
    metrics: Arc<Metrics>,
    recovery: Recovery,
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Opens the store (recovering from an earlier stop), loads the
    /// built-in and configured plugins, starts every channel and resumes
    /// every campaign. Must run inside a tokio runtime.
    pub async fn open(config: Config) -> Result<Self> {
        Self::open_with(config, Options::default()).await
    }

    pub async fn open_with(config: Config, options: Options) -> Result<Self> {
        // Opening reads and writes the store (recovery, the directory's
        // indexes) and compiles plugins: on a blocking thread, not on a
        // runtime worker. The tasks it starts run on the runtime, whose
        // context a blocking thread has.
        match tokio::task::spawn_blocking(move || Self::open_blocking(config, options)).await {
            Ok(opened) => opened,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Internal(format!("opening the broker stopped: {e}"))),
        }
    }

    fn open_blocking(config: Config, options: Options) -> Result<Self> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let clock = options.clock.unwrap_or_default();
        let (store, recovery) = match options.engine {
            Some(engine) => Store::open(engine, Arc::new(clock), metrics.store.clone())?,
            None => store::open_with_clock(
                &config.data_dir,
                &config.store,
                metrics.store.clone(),
                Arc::new(clock),
            )?,
        };
        let store = Arc::new(store);
        // The phone-number metadata (every country's patterns, checked as
        // they load) is built on first use, about 100 ms: here, beside the
        // plugins' compilation, not in the first submit after start.
        let numbers = std::thread::Builder::new()
            .name("mhero-numbers".into())
            .spawn(crate::dispatch::load_number_metadata)
            .map_err(|source| Error::Io {
                path: config.data_dir.clone(),
                source,
            })?;
        let plugins = PluginHost::new(
            HostOptions {
                clock: PluginClock::new(move || store::Clock::now_ms(&clock)),
                ceilings: config.plugins.ceilings.clone(),
                cache: match config.plugin_cache_dir() {
                    Some(dir) => Some(ComponentCache::new(dir, store.secret("plugin-cache")?)),
                    None => None,
                },
                fuel: false,
                settings: config.plugins.config.clone(),
            },
            metrics.plugin.clone(),
        )?;
        plugins.load_builtins()?;
        if let Some(dir) = &config.plugins.dir {
            plugins.load_dir(dir)?;
        }
        let plugins = Arc::new(plugins);
        let _ = numbers.join();
        // The directory's indexes load from the same store, before any
        // campaign that selects from it resumes.
        let directory = Arc::new(Directory::open(Arc::clone(store.engine()))?);
        let dispatcher = Dispatcher::start(
            Arc::clone(&store),
            &plugins,
            &config.channels,
            config.dispatch.clone(),
            clock,
            metrics.dispatch.clone(),
            Some(Arc::clone(&directory) as Arc<dyn crate::audience::AudienceSource>),
        )?;
        let mut webhooks = Webhooks::new(dispatcher.sink(), metrics.webhooks.clone());
        for (name, ch) in dispatcher.channels() {
            webhooks.add(name, ch.id, Arc::clone(&ch.plugin));
        }
        let webhooks = Arc::new(webhooks);
        // Simulated gateways push their receipts and replies through the
        // same entry point a real gateway's webhooks reach.
        let mut tasks = Vec::new();
        for (name, ch) in dispatcher.channels() {
            if let Some(gateway) = &ch.sandbox {
                tasks.push(tokio::spawn(sandbox::push_webhooks(
                    Arc::clone(gateway),
                    Arc::new(clock),
                    name.clone(),
                    Arc::clone(&webhooks),
                    Duration::from_millis(config.dispatch.receipt_poll_ms),
                    dispatcher.shutdown_signal(),
                )));
            }
        }
        // What comes back: the inbound pipeline, and the integrators'
        // webhooks that follow it.
        let channel_ids: std::collections::BTreeMap<_, _> = dispatcher
            .channels()
            .iter()
            .map(|(name, ch)| (ch.id, name.clone()))
            .collect();
        let surveys = Arc::new(Surveys::open(
            Arc::clone(store.engine()),
            Arc::clone(&directory),
        )?);
        let reports = Arc::new(crate::workflows::Reports::open(
            Arc::clone(store.engine()),
            config.reports.clone(),
        )?);
        let courses = Arc::new(crate::workflows::Courses::open(
            Arc::clone(store.engine()),
            Arc::clone(&directory),
            Arc::clone(&surveys),
        )?);
        let validations = Arc::new(crate::workflows::Validations::open(
            Arc::clone(store.engine()),
            Arc::clone(&directory),
            Arc::clone(&surveys),
        )?);
        let inbound = Arc::new(Pipeline::new(
            Arc::clone(&store),
            Arc::clone(&directory),
            Arc::clone(&plugins),
            crate::workflows::Workflows {
                surveys: Arc::clone(&surveys),
                reports: Arc::clone(&reports),
                courses: Arc::clone(&courses),
            },
            dispatcher.submitter(),
            channel_ids.clone(),
            config.inbound.clone(),
            metrics.inbound.clone(),
            dispatcher.inbound_arrived(),
        )?);
        tasks.push(tokio::spawn(
            Arc::clone(&inbound).run(dispatcher.shutdown_signal()),
        ));
        let names: Arc<dyn Fn(mhero_proto::ChannelId) -> String + Send + Sync> =
            Arc::new(move |id| {
                channel_ids
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("channel-{}", id.0))
            });
        for s in &config.inbound.subscribers {
            let subscriber = Subscriber::new(
                s.clone(),
                Arc::clone(&store),
                Arc::clone(&names),
                metrics.inbound.clone(),
            )?;
            tasks.push(tokio::spawn(
                subscriber.run(inbound.processed(), dispatcher.shutdown_signal()),
            ));
        }
        // Scheduled syncs of the directory's FHIR sources.
        for (name, source) in &config.directory.sources {
            if source.every_s == 0 {
                continue;
            }
            let syncer = syncer(&config, &directory, &plugins, name)?;
            let every = Duration::from_secs(source.every_s);
            let mut shutdown = dispatcher.shutdown_signal();
            tasks.push(tokio::spawn(async move {
                loop {
                    let now = store::Clock::now_ms(&clock);
                    match syncer.sync(now, &|_| {}).await {
                        Ok(r) => tracing::info!(source = %syncer.name, pages = r.pages, created = r.import.created, updated = r.import.updated, removed = r.import.removed, problems = r.import.problems.len(), "Directory synced."),
                        Err(e) => tracing::error!(source = %syncer.name, error = %e, "Directory sync failed; the next one resumes where it stopped."),
                    }
                    if !crate::stop::tick(&mut shutdown, every).await {
                        return;
                    }
                }
            }));
        }
        Ok(Self {
            config,
            store,
            directory,
            plugins,
            dispatcher,
            webhooks,
            inbound,
            surveys,
            reports,
            courses,
            validations,
            metrics,
            recovery,
            tasks,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The health-worker directory.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The syncer of a configured FHIR source.
    pub fn syncer(&self, source: &str) -> Result<Syncer> {
        syncer(&self.config, &self.directory, &self.plugins, source)
    }

    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.plugins
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The entry point for every channel's webhooks.
    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// Flash surveys.
    pub fn surveys(&self) -> &Arc<Surveys> {
        &self.surveys
    }

    /// Structured reports and the inventory they keep.
    pub fn reports(&self) -> &Arc<crate::workflows::Reports> {
        &self.reports
    }

    /// Training courses.
    pub fn courses(&self) -> &Arc<crate::workflows::Courses> {
        &self.courses
    }

    /// Data validations: workers confirming or correcting their records.
    pub fn validations(&self) -> &Arc<crate::workflows::Validations> {
        &self.validations
    }

    /// The inbound pipeline: what replies became.
    pub fn inbound(&self) -> &Arc<Pipeline> {
        &self.inbound
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What opening the store found (deliveries re-queued after a crash).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The simulated gateway behind a channel, if it has one.
    pub fn sandbox(&self, channel: &str) -> Option<Arc<SandboxGateway>> {
        self.dispatcher.sandbox(channel)
    }

    /// Stops sending after the rounds on the wire have settled, stops the
    /// simulators' webhooks, and closes the store once everything that
    /// holds it is gone.
    pub async fn shutdown(self) {
        self.dispatcher.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.webhooks);
        drop(self.inbound);
        drop(self.surveys);
        drop(self.reports);
        drop(self.courses);
        drop(self.validations);
        drop(self.plugins);
        // The store (and its writer thread) closes when its last holder
        // goes; closing flushes what is queued.
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    }
}

/// Process settings for a binary that runs the broker; call it first
/// thing in `main`, before the runtime and the store start.
///
/// Turns transparent huge pages off for the process. The broker's memory
/// is many small, short-lived allocations (message records, plugin
/// buffers, request bodies); with huge pages each first touch of a 2 MiB
/// page is zeroed whole and a freed page is only returned whole, which
/// doubled the resident size of a 300,000-delivery fan-out (414 MB with
/// them, 202 MB without, at the same throughput).
pub fn tune_process() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE reads its integer
        // arguments only; it touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "Transparent huge pages stay on."
            );
        }
    }
}

fn syncer(
    config: &Config,
    directory: &Arc<Directory>,
    plugins: &PluginHost,
    name: &str,
) -> Result<Syncer> {
    let source = config
        .directory
        .sources
        .get(name)
        .ok_or_else(|| crate::Error::NotFound {
            what: "directory source",
            id: name.to_string(),
        })?;
    let mapper = plugins.require(&source.mapper, crate::plugin::Kind::FhirMapper)?;
    Syncer::new(
        name,
        source.clone(),
        &config.dispatch.default_country,
        Arc::clone(directory),
        mapper,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// On a runtime with one worker, the rest of the process (a server
    /// answering health checks, a signal handler) keeps running while
    /// the broker opens its store and compiles its plugins.
    #[tokio::test(flavor = "current_thread")]
    async fn opening_leaves_the_runtime_free() {
        let data = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        let opening = Arc::new(AtomicBool::new(true));
        let ran = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let (opening, ran) = (Arc::clone(&opening), Arc::clone(&ran));
            tokio::spawn(async move {
                while opening.load(Ordering::Relaxed) {
                    ran.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let broker = Broker::open(config).await.unwrap();
        opening.store(false, Ordering::Relaxed);
        ticker.await.unwrap();
        assert!(
            ran.load(Ordering::Relaxed) > 0,
            "the runtime ran nothing else while the broker opened"
        );
        broker.shutdown().await;
    }
}
