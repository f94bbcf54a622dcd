//! `http`: campaigns through the real HTTP transport (keep-alive pools,
//! the production connector path) to `gateway-sink`, a separate process on
//! loopback that answers after `--latency-ms`. With `--rate`, each of
//! `--channels` channels is held to that rate: the achieved aggregate rate
//! against the configured one shows whether the window keeps enough
//! requests in flight for the gateway's latency. With `--tls` the sink
//! speaks HTTPS, as hosted gateways do, offering HTTP/2 through ALPN.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mhero_benches::{
    cpu_seconds, fs_type, histogram_buckets, histogram_delta, histogram_quantile, peak_rss_mb,
    round,
};
use mhero_broker::channel::HttpConfig;
use mhero_broker::config::ChannelConfig;
use mhero_broker::dispatch::{AudienceSpec, CampaignSpec, Dispatcher};
use mhero_broker::plugin::bindings::HttpRequest;
use mhero_broker::plugin::bindings::connector_types::{self as ct, OutboundMessage};
use mhero_proto::{CampaignId, Lane};
use serde_json::json;

use super::dispatch::{config, start};

/// The broker's per-request histogram.
const REQUEST_DURATION: &str = "mhero_dispatch_request_duration_seconds";

#[derive(clap::Args)]
pub struct HttpArgs {
    /// Deliveries in all.
    #[arg(long, default_value_t = 500_000)]
    n: u32,
    /// The gateway's latency (ms).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Channels, each with its own campaign and connection pool.
    #[arg(long, default_value_t = 1)]
    channels: u32,
    /// Rate of each channel (messages per second); 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages per request (the connector's batch form).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests in flight per channel, fixed; default: the broker's
    /// (`window`, widened on a rated channel up to `window_max` to what the
    /// rate needs at the gateway's latency).
    #[arg(long)]
    window: Option<usize>,
    /// HTTPS to the sink, which offers HTTP/2 through ALPN (its
    /// self-signed certificate trusted through the channels' `http.ca_file`),
    /// instead of HTTP/1.1 over plain TCP.
    #[arg(long)]
    tls: bool,
    /// "sync" or "async".
    #[arg(long, default_value = "sync")]
    durability: String,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// The sink process; killed when dropped.
struct SinkProcess {
    child: Child,
    url: String,
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sink; with `tls`, it serves HTTPS and writes its certificate to
/// `tls/cert.pem`.
fn start_sink(latency_ms: u64, tls: Option<&Path>) -> Result<SinkProcess> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("gateway-sink");
    let mut command = Command::new(&path);
    command.args(["--latency-ms", &latency_ms.to_string()]);
    if let Some(dir) = tls {
        command.arg("--tls").arg(dir);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build --release -p mhero-tests --bin gateway-sink)",
                path.display()
            )
        })?;
    let stdout = child.stdout.take().context("sink stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from the sink: {line:?}"))?
        .to_string();
    Ok(SinkProcess { child, url })
}

const TEXT: &str = "Cholera alert: report suspected cases to the county health team today.";

/// What HTTP alone does here: each channel's own transport (the broker's
/// allow-list check and keep-alive pool) sends copies of the request its
/// connector builds for `batch` messages (its batch form above one), each
/// message with its own id and idempotency key, `per_channel` messages in
/// all, as many requests at a time as its window (`windows`, in the order
/// of `names`), with no rate limit, plugin call or store write. Answers
/// messages per second and the messages sent.
async fn transport_limit(
    dispatcher: &Dispatcher,
    names: &[String],
    per_channel: u32,
    batch: usize,
    windows: &[usize],
) -> Result<(f64, u64)> {
    const ID: &str = "limit-placeholder-id";
    let mut senders = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (c, name) in names.iter().enumerate() {
        let ch = dispatcher
            .channels()
            .get(name)
            .context("channel vanished")?;
        // Ids `<ID>-<k>`: one replace gives every message of a copy its own.
        let messages: Vec<OutboundMessage> = (0..batch)
            .map(|k| OutboundMessage {
                id: format!("{ID}-{k}"),
                to: format!("+23177{c:02}{k:05}"),
                text: TEXT.into(),
                language: None,
                lane: ct::Lane::Normal,
                expires_at_ms: None,
                attempt: 1,
            })
            .collect();
        let template = std::sync::Arc::new(
            ch.plugin
                .offload(move |p| match messages.as_slice() {
                    [one] => p.build_send(one),
                    many => p.build_send_batch(many),
                })
                .await
                .context("building the template request")?,
        );
        let requests = per_channel.div_ceil(batch as u32);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        for _ in 0..windows[c] {
            let (transport, template, next) = (
                std::sync::Arc::clone(&ch.transport),
                std::sync::Arc::clone(&template),
                std::sync::Arc::clone(&next),
            );
            senders.spawn(async move {
                let body = String::from_utf8_lossy(&template.body).into_owned();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= requests {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let id = format!("limit-{c}-{i}");
                    let mut request = (*template).clone();
                    request.body = body.replace(ID, &id).into_bytes();
                    for h in &mut request.headers {
                        if h.value.contains(ID) {
                            h.value = h.value.replace(ID, &id);
                        }
                    }
                    let response = transport.send(request).await?;
                    if !(200..300).contains(&response.status) {
                        bail!("the sink answered {} to a limit request", response.status);
                    }
                }
            });
        }
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let sent = u64::from(per_channel.div_ceil(batch as u32)) * batch as u64 * names.len() as u64;
    Ok((sent as f64 / started.elapsed().as_secs_f64(), sent))
}

/// The sink's counts (`GET /stats`), through a channel's own transport.
async fn sink_stats(
    dispatcher: &Dispatcher,
    channel: &str,
    url: &str,
) -> Result<serde_json::Value> {
    let ch = dispatcher
        .channels()
        .get(channel)
        .context("channel vanished")?;
    let response = ch
        .transport
        .send(HttpRequest {
            method: "GET".into(),
            url: format!("{url}/stats"),
            headers: Vec::new(),
            body: Vec::new(),
        })
        .await?;
    serde_json::from_slice(&response.body).context("the sink's stats")
}

pub fn run(args: &HttpArgs) -> Result<()> {
    if args.channels == 0 || args.n < args.channels {
        bail!("--channels must be between 1 and --n");
    }
    let certificate = if args.tls {
        Some(mhero_benches::scratch(args.dir.as_deref())?)
    } else {
        None
    };
    let sink = start_sink(args.latency_ms, certificate.as_ref().map(|d| d.path()))?;
    let http = HttpConfig {
        ca_file: certificate.as_ref().map(|d| d.path().join("cert.pem")),
        ..HttpConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (mut config, scratch) = config(args.dir.as_ref(), &args.durability)?;
        config
            .plugins
            .config
            .entry("sandbox".into())
            .or_default()
            .insert("base_url".into(), sink.url.clone().into());
        let defaults = ChannelConfig::default();
        let (window, window_max) = match args.window {
            Some(w) => (w, w),
            None => (defaults.window, defaults.window_max),
        };
        let names: Vec<String> = (0..args.channels).map(|i| format!("gw{i}")).collect();
        let channels = names
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    ChannelConfig {
                        rate: args.rate,
                        burst: 10,
                        batch: args.batch,
                        window,
                        window_max,
                        count_segments: Some(false),
                        http: http.clone(),
                        ..ChannelConfig::default()
                    },
                )
            })
            .collect();
        let bench = start(config, scratch, channels).await?;
        let data_dir = bench.broker.config().data_dir.clone();
        let per_channel = args.n / args.channels;
        let cpu_before = cpu_seconds("self");
        let sink_pid = sink.child.id().to_string();
        let sink_cpu_before = cpu_seconds(&sink_pid);
        let metrics = bench.broker.metrics();
        let series: Vec<String> = names.iter().map(|n| format!("channel=\"{n}\"")).collect();
        let requests_before = histogram_buckets(&metrics.encode_text(), REQUEST_DURATION, &series);
        let started = Instant::now();
        let mut ids: Vec<CampaignId> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut spec = CampaignSpec::generated(
                &format!("http {name}"),
                Lane::Normal,
                TEXT,
                per_channel,
                &[name.as_str()],
            );
            if let AudienceSpec::Generated(g) = &mut spec.audience {
                g.prefix = format!("+23177{i:02}");
            }
            ids.push(bench.broker.dispatcher().submit(spec).await?.id);
        }
        let dispatcher = bench.broker.dispatcher();
        let mut peak_in_flight = 0usize;
        // Each channel's widest window while it sent (a window narrows
        // when its gateway answers faster).
        let mut reached = vec![0usize; names.len()];
        loop {
            let in_flight: usize = dispatcher.channels().values().map(|c| c.in_flight()).sum();
            peak_in_flight = peak_in_flight.max(in_flight);
            for (seen, name) in reached.iter_mut().zip(&names) {
                let now = dispatcher.channels().get(name).map_or(window, |c| c.window_size());
                *seen = (*seen).max(now);
            }
            if ids.iter().all(|id| dispatcher.progress(*id).is_some_and(|p| p.done)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self") - cpu_before;
        let requests = histogram_delta(
            &histogram_buckets(&metrics.encode_text(), REQUEST_DURATION, &series),
            &requests_before,
        );
        let request_ms = |q| histogram_quantile(&requests, q).map(|s| round(s * 1000.0, 3));
        let sink_cpu = cpu_seconds(&sink_pid) - sink_cpu_before;
        let total = u64::from(per_channel) * u64::from(args.channels);
        let mut wired = 0;
        let mut dead = 0;
        let mut first_ms = u64::MAX;
        let mut last_ms = 0;
        let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
        let accepted_ms = bench.broker.store().now_ms() - (elapsed * 1000.0) as u64;
        // Each channel's own rate: its deliveries over its own span (first
        // to last settled). Channels start a few ms apart (each campaign is
        // a commit of its own), so one span over all of them would count
        // that start-up skew as time the channels were too slow.
        let mut per_channel_rates = Vec::with_capacity(ids.len());
        let mut first_starts = Vec::with_capacity(ids.len());
        for id in &ids {
            let p = dispatcher.progress(*id).context("campaign vanished")?;
            wired += p.wired;
            dead += p.dead;
            let (mut first, mut last) = (u64::MAX, 0u64);
            bench.broker.store().scan_statuses(*id, &mut |_, rec| {
                first = first.min(rec.updated_ms);
                last = last.max(rec.updated_ms);
                latency.saturating_record(rec.updated_ms.saturating_sub(accepted_ms).max(1));
                Ok(true)
            })?;
            first_ms = first_ms.min(first);
            last_ms = last_ms.max(last);
            first_starts.push(first);
            let span = last.saturating_sub(first) as f64 / 1000.0;
            per_channel_rates.push(if span > 0.0 { p.wired as f64 / span } else { 0.0 });
        }
        if wired != total {
            bail!("only {wired} of {total} wired ({dead} dead letters)");
        }
        let span_s = (last_ms.saturating_sub(first_ms)) as f64 / 1000.0;
        let overall = if span_s > 0.0 { total as f64 / span_s } else { 0.0 };
        let achieved: f64 = per_channel_rates.iter().sum();
        let slowest = per_channel_rates.iter().copied().fold(f64::INFINITY, f64::min);
        let start_skew_s = (first_starts.iter().max().copied().unwrap_or(0)
            - first_starts.iter().min().copied().unwrap_or(0)) as f64
            / 1000.0;
        let configured = args.rate * f64::from(args.channels);
        let rss = peak_rss_mb();
        // The same exchanges without the broker, on the same warm pools,
        // once the campaigns are done.
        let cpu_before = cpu_seconds("self");
        let sink_cpu_before = cpu_seconds(&sink_pid);
        // Each channel's limit keeps as many in flight as its window
        // reached.
        let widest = reached.iter().copied().max().unwrap_or(window);
        let (limit, limit_sent) =
            transport_limit(dispatcher, &names, per_channel, args.batch, &reached).await?;
        let limit_cpu = cpu_seconds("self") - cpu_before;
        let limit_sink_cpu = cpu_seconds(&sink_pid) - sink_cpu_before;
        let sink_stats = sink_stats(dispatcher, &names[0], &sink.url).await?;
        bench.broker.shutdown().await;
        let mut out = json!({
            "scenario": "http",
            "differs_from_defaults": bench.differs,
            "n": total,
            "channels": args.channels,
            "latency_ms": args.latency_ms,
            "rate_per_channel": args.rate,
            "batch": args.batch,
            "window": window,
            "window_max": window_max,
            "window_reached": [reached.iter().copied().min().unwrap_or(window), widest],
            "window_is_default": args.window.is_none(),
            "durability": args.durability,
            "transport": if args.tls {
                "HTTPS (rustls, the sink's self-signed certificate trusted through http.ca_file; HTTP/2 offered through ALPN) over loopback to gateway-sink, a separate process (1 runtime thread)"
            } else {
                "HTTP/1.1 keep-alive over loopback to gateway-sink, a separate process (1 runtime thread)"
            },
            "sink_http_versions": sink_stats["http_versions"],
            "sink_connections": sink_stats["connections"],
            "receipts": false,
            "delivery_means": "request answered 202 by the gateway and the delivery settled as wired",
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s": round(total as f64 / elapsed, 0),
            "sending_span_s": round(span_s, 3),
            "achieved_per_s": round(achieved, 1),
            "achieved_means": "the sum of each channel's deliveries over its own first-to-last settled span",
            "overall_per_s": round(overall, 1),
            "start_skew_s": round(start_skew_s, 3),
            "peak_in_flight": peak_in_flight,
            "p50_ms": request_ms(0.5),
            "p99_ms": request_ms(0.99),
            "p99_means": "each gateway request's time, from taking a keep-alive connection to the gateway's answer, as the broker's own mhero_dispatch_request_duration_seconds histogram records it (buckets doubling from 25 µs; read as PromQL's histogram_quantile reads them, so within a factor of two)",
            "requests": requests.last().map_or(0, |(_, count)| *count),
            "wire_p50_ms": latency.value_at_quantile(0.5),
            "wire_p99_ms": latency.value_at_quantile(0.99),
            "wire_means": "from the campaigns' acceptance to each delivery settled as wired: queueing behind the whole campaign included",
            "cpu_us_per_delivery": round(cpu * 1e6 / total as f64, 2),
            "sink_cpu_us_per_delivery": round(sink_cpu * 1e6 / total as f64, 2),
            "transport_limit": {
                "messages_per_s": round(limit, 0),
                "messages": limit_sent,
                "requests": limit_sent / args.batch as u64,
                "cpu_us_per_message": round(limit_cpu * 1e6 / limit_sent as f64, 2),
                "sink_cpu_us_per_message": round(limit_sink_cpu * 1e6 / limit_sent as f64, 2),
                "means": "the same requests (the connector's, in its batch form when --batch is above one, each message with its own id and idempotency key) through each channel's own transport and keep-alive pool, each channel's window as it reached it (`window_reached`: the narrowest and the widest), the same sink and latency, with no rate limit, plugin call or store write: what HTTP alone does on this machine",
            },
            "ratio_to_limit": round(total as f64 / elapsed / limit, 3),
            "peak_rss_mb": round(rss, 1),
            "data_dir": data_dir.display().to_string(),
            "filesystem": fs_type(&data_dir),
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
        if configured > 0.0 {
            out["configured_per_s"] = json!(configured);
            out["achieved_ratio"] = json!(round(achieved / configured, 4));
            out["slowest_channel_ratio"] = json!(round(slowest / args.rate, 4));
        }
        println!("{out}");
        Ok(())
    })
}
