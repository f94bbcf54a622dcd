//! `loadgen api`: FHIR `CommunicationRequest`s to one recipient each, over
//! HTTP from concurrent clients, to the server `mhero serve` runs: what an
//! EMR or a lab system sending results one by one asks of the broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use mhero_benches::{cpu_seconds, fs_type, peak_rss_mb, round};
use mhero_broker::Broker;
use mhero_broker::api::{self, Api, Role, Tokens};
use mhero_broker::config::ChannelConfig;
use serde_json::json;

#[derive(clap::Args)]
pub struct ApiArgs {
    /// Requests sent (each a whole campaign to one recipient).
    #[arg(long, default_value_t = 20_000)]
    n: u64,
    /// Clients sending at once, each waiting for its answer before the
    /// next request.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Parent folder of the scratch store (default: the system's temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sync` (the default: fsynced before the 201) or `async`.
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ApiArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be > 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

/// What `mhero serve` runs with no config (the defaults, one sandbox
/// channel), with its store in a scratch folder under `parent` (default:
/// the system's temp dir); only the durability may differ (`sync`, the
/// default, or `async`).
pub fn server_config(
    parent: Option<&PathBuf>,
    durability: &str,
) -> Result<(tempfile::TempDir, mhero_broker::Config)> {
    let scratch = mhero_benches::scratch(parent.map(PathBuf::as_path))?;
    let mut config = mhero_broker::Config {
        data_dir: scratch.path().join("store"),
        ..mhero_broker::Config::default()
    };
    config.store.durability = match durability {
        "sync" => mhero_broker::config::Durability::Sync,
        "async" => mhero_broker::config::Durability::Async,
        other => bail!("--durability must be sync or async, not {other:?}"),
    };
    config
        .channels
        .insert("sandbox".into(), ChannelConfig::default());
    Ok((scratch, config))
}

/// The HTTP server of `mhero serve` on a free loopback port, over
/// `broker`, with a sender token.
pub struct Served {
    pub base: String,
    pub token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(broker: &Arc<Broker>) -> Result<Self> {
        let tokens = Arc::new(Tokens::open(Arc::clone(broker.store().engine()))?);
        let (token, _) = tokens.create(Role::Sender, "loadgen", 0)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let api = Arc::new(Api::new(Arc::clone(broker), tokens));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(listener, api, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base,
            token,
            stop,
            server,
        })
    }

    /// Stops serving once the requests in flight are answered.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }
}

async fn bench(args: &ApiArgs) -> Result<()> {
    let (scratch, config) = server_config(args.data_dir.as_ref(), &args.durability)?;
    let data_dir = config.data_dir.clone();
    let broker = Arc::new(Broker::open(config).await?);
    let served = Served::start(&broker).await?;
    let (base, token) = (served.base.clone(), served.token.clone());

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = reqwest::Url::parse(&format!("{base}/fhir/r4/CommunicationRequest"))?;
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, token, url) = (
            client.clone(),
            Arc::clone(&next),
            token.clone(),
            url.clone(),
        );
        let n = args.n;
        workers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok((latencies, errors));
                }
                // The same resource every run, written out directly: the
                // clients share the server's cores, so they spend as little
                // as they can on building it.
                let body = format!(
                    r##"{{"resourceType":"CommunicationRequest","status":"active","priority":"urgent","identifier":[{{"value":"lab-{i}"}}],"contained":[{{"resourceType":"Practitioner","id":"p","telecom":[{{"system":"phone","value":"+23177{phone:07}"}}]}}],"recipient":[{{"reference":"#p"}}],"payload":[{{"contentString":"Lab result ready for sample S-{i}: collect it at the district lab."}}]}}"##,
                    phone = i % 10_000_000
                );
                let t = Instant::now();
                let r = client
                    .post(url.clone())
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let _ = r.bytes().await?;
                        latencies.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Ok(r) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("refused: {} {}", r.status(), r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await??;
        latencies.add(h)?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu_before;
    let rss = peak_rss_mb();
    served.stop().await?;
    let Some(broker) = api::release(broker, std::time::Duration::from_secs(10)).await else {
        bail!("the broker was still in use after the server stopped");
    };
    broker.shutdown().await;
    let ms = |q: f64| round(latencies.value_at_quantile(q) as f64 / 1000.0, 2);
    println!(
        "{}",
        json!({
            "scenario": "api",
            "n": args.n,
            "concurrency": args.concurrency,
            "requests_per_s": round(latencies.len() as f64 / elapsed, 0),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": round(latencies.max() as f64 / 1000.0, 2),
            "cpu_us_per_request": round(cpu * 1e6 / latencies.len().max(1) as f64, 1),
            "cpu_means": format!("user + system CPU of the whole process while the requests ran, per request answered: the server, the broker sending each message, and the {} clients", args.concurrency),
            "errors": errors,
            "seconds": round(elapsed, 2),
            "peak_rss_mb": round(rss, 1),
            "data_dir": data_dir.display().to_string(),
            "filesystem": fs_type(&data_dir),
            "durability": args.durability,
            "path": "POST /fhir/r4/CommunicationRequest over HTTP/1.1 on loopback (keep-alive), the server of `mhero serve` with its defaults (sender token, body limit, the sandbox channel); each request is a whole campaign (record, audience, state: synced writes) whose one message is sent through the sandbox connector while requests arrive",
            "differs": "server and clients share one process and its 2 cores; the gateway is the sandbox simulator inside the broker",
        })
    );
    drop(scratch);
    Ok(())
}
