//! The QUIC API (quinn): batched submission and status and inbound
//! subscriptions for integrators' systems, with `mhero-client`. The frames
//! are in [`mhero_proto::wire`].
//!
//! TLS 1.3 always: a self-signed certificate made on the first start with
//! rcgen and kept in `<data_dir>/tls/` (`quic-cert.der`, and
//! `quic-key.der` readable by its owner only); clients pin its SHA-256,
//! which `mhero serve` prints. A connection's first stream authenticates
//! it with a token; each later stream is one request.
//!
//! Subscriptions are at least once. Statuses: every delivery of the
//! campaign whose status changed at or after `since_ms`, read from its
//! status records and dead letters, then again every
//! [`STATUS_POLL`] for changes since the last read (less
//! [`COMMIT_MARGIN`], for writes stamped before a read and committed
//! after it); a delivery is not sent twice with the same status and time
//! within one subscription. Each read scans the campaign's status records,
//! so a read is made only when the campaign's counters (in memory; every
//! committed status change moves them) have moved since the last one, and
//! at least every [`FULL_READ`] (for a campaign ended over an hour ago,
//! whose late receipts the counters in memory no longer follow). A
//! subscription to a campaign of a million costs a scan of a million short
//! records (about a third of a second of one core here) each time it moves,
//! nothing while it stands still.
//!
//! A subscription ends when its client stops reading it (it closed the
//! subscription, or its connection is gone), not only when the server
//! stops: otherwise each one closed would go on reading for no one and
//! hold one of the connection's streams, and a client that subscribes
//! again and again would run out of them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::wire::{self, InboundEvent, Request, Response, StatusEvent, Submit};
use mhero_proto::{CampaignId, DeliveryId, Lane};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::{Api, Role};
use crate::dispatch::{AudienceSpec, Body, CampaignSpec, Once};
use crate::error::{Error, Result};

/// How often a status subscription reads the campaign again.
pub const STATUS_POLL: Duration = Duration::from_millis(250);
/// The longest a status subscription goes without reading the campaign,
/// its counters standing still or not.
pub const FULL_READ: Duration = Duration::from_secs(5);
/// How far back each status read looks past the last one.
pub const COMMIT_MARGIN: Duration = Duration::from_millis(2000);
/// How often an inbound subscription looks for new messages.
const INBOUND_POLL: Duration = Duration::from_millis(100);

/// The broker's QUIC certificate and key, made on first use.
pub struct Certificate {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Certificate {
    /// Loads the certificate kept in `dir`, or makes and keeps one.
    pub fn load_or_make(dir: &Path) -> Result<Self> {
        let cert_path = dir.join("quic-cert.der");
        let key_path = dir.join("quic-key.der");
        let io = |path: &Path, e: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(|e| io(&cert_path, e))?;
            let key = std::fs::read(&key_path).map_err(|e| io(&key_path, e))?;
            return Ok(Self {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let made =
            rcgen::generate_simple_self_signed(vec!["mhero".to_string(), "localhost".to_string()])
                .map_err(|e| Error::Internal(format!("making the QUIC certificate: {e}")))?;
        let key = made.signing_key.serialize_der();
        write_private(&key_path, &key).map_err(|e| io(&key_path, e))?;
        let cert = made.cert.der().to_vec();
        std::fs::write(&cert_path, &cert).map_err(|e| io(&cert_path, e))?;
        Ok(Self {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// `sha256:<hex>`: what clients pin.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.cert.as_ref());
        format!("sha256:{}", crate::store::hex(&digest))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A bound QUIC endpoint.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
}

impl QuicServer {
    /// Binds `listen` with `certificate`.
    pub fn bind(listen: SocketAddr, certificate: &Certificate) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Internal(format!("QUIC TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.cert.clone()],
                PrivateKeyDer::Pkcs8(certificate.key.clone_key()),
            )
            .map_err(|e| Error::Config(format!("the QUIC certificate: {e}")))?;
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Internal(format!("QUIC TLS: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(256u32.into());
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(config, listen).map_err(|e| Error::Io {
            path: std::path::PathBuf::from(format!("udp://{listen}")),
            source: e,
        })?;
        Ok(Self { endpoint })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::Internal(format!("QUIC endpoint address: {e}")))
    }

    /// Serves until `shutdown` resolves, then closes every connection.
    pub async fn serve(
        self,
        api: Arc<Api>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let api = Arc::clone(&api);
                    tokio::spawn(async move {
                        if let Err(e) = connection(api, incoming).await {
                            tracing::debug!(error = %e, "QUIC connection ended.");
                        }
                    });
                }
            }
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(wire::close::STOPPING), b"stopping");
        self.endpoint.wait_idle().await;
    }
}

type Streams = (quinn::SendStream, quinn::RecvStream);

async fn read_request(recv: &mut quinn::RecvStream) -> std::result::Result<Request, String> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let len = wire::frame_len(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    wire::decode(&body).map_err(|e| e.to_string())
}

async fn write(send: &mut quinn::SendStream, r: &Response) -> std::result::Result<(), String> {
    send.write_all(&wire::encode(r))
        .await
        .map_err(|e| e.to_string())
}

fn refusal(code: &str, message: impl Into<String>) -> Response {
    Response::Error {
        code: code.to_string(),
        message: message.into(),
    }
}

async fn connection(api: Arc<Api>, incoming: quinn::Incoming) -> std::result::Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let (mut send, mut recv): Streams = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let role = match read_request(&mut recv).await {
        Ok(Request::Hello { token }) => match api.tokens.check(&token) {
            Some(info) => {
                write(
                    &mut send,
                    &Response::Welcome {
                        role: info.role.as_str().to_string(),
                    },
                )
                .await?;
                let _ = send.finish();
                info.role
            }
            None => {
                write(
                    &mut send,
                    &refusal("unauthorized", "the token is unknown or revoked"),
                )
                .await?;
                let _ = send.finish();
                // Let the refusal arrive, then close.
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                conn.close(
                    quinn::VarInt::from_u32(wire::close::UNAUTHORIZED),
                    b"unauthorized",
                );
                return Err("token refused".into());
            }
        },
        Ok(_) => {
            conn.close(
                quinn::VarInt::from_u32(wire::close::PROTOCOL),
                b"the first request must be Hello",
            );
            return Err("no Hello".into());
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(wire::close::PROTOCOL), b"bad frame");
            return Err(e);
        }
    };
    loop {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            if let Err(e) = exchange(api, role, send, recv).await {
                tracing::debug!(error = %e, "QUIC stream ended.");
            }
        });
    }
}

async fn exchange(
    api: Arc<Api>,
    role: Role,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> std::result::Result<(), String> {
    let request = match read_request(&mut recv).await {
        Ok(r) => r,
        Err(e) => {
            write(
                &mut send,
                &refusal("invalid", format!("unreadable request: {e}")),
            )
            .await?;
            let _ = send.finish();
            return Err(e);
        }
    };
    let needed = match &request {
        Request::Submit(_) | Request::SubmitOnce { .. } => Role::Sender,
        _ => Role::Viewer,
    };
    if role < needed {
        write(
            &mut send,
            &refusal(
                "forbidden",
                format!("this needs a {} token", needed.as_str()),
            ),
        )
        .await?;
        let _ = send.finish();
        return Ok(());
    }
    match request {
        Request::Hello { .. } => {
            write(
                &mut send,
                &refusal("invalid", "this connection is already authenticated"),
            )
            .await?;
        }
        Request::Submit(batch) => {
            let answer = match submit(&api, batch, None).await {
                Ok(r) => r,
                Err(e) => refusal(e.code().as_str(), e.to_string()),
            };
            write(&mut send, &answer).await?;
        }
        Request::SubmitOnce { key, batch } => {
            let answer = match submit(&api, batch, Some(key)).await {
                Ok(r) => r,
                Err(e) => refusal(e.code().as_str(), e.to_string()),
            };
            write(&mut send, &answer).await?;
        }
        Request::Statuses { campaign, since_ms } => {
            statuses(&api, &campaign, since_ms, &mut send).await?;
        }
        Request::Inbound { after } => inbound(&api, after, &mut send).await?,
    }
    let _ = send.finish();
    Ok(())
}

/// A batch as one campaign; under `key`, once.
async fn submit(api: &Api, batch: Submit, key: Option<String>) -> Result<Response> {
    // The batch as the client sent it identifies the request.
    let once = key.map(|key| Once {
        scope: "quic",
        field: "SubmitOnce.key",
        key,
        request: *blake3::hash(&postcard::to_stdvec(&batch).unwrap_or_default()).as_bytes(),
    });
    if batch.recipients.len() > wire::MAX_BATCH {
        return Err(Error::field_invalid(
            "recipients",
            format!(
                "{} recipients in one batch; at most {}",
                batch.recipients.len(),
                wire::MAX_BATCH
            ),
        ));
    }
    let lane: Lane = batch
        .lane
        .parse()
        .map_err(|e: mhero_proto::ParseLaneError| Error::field_invalid("lane", e.to_string()))?;
    let channels = if !batch.channels.is_empty() {
        batch.channels
    } else if !api.config.default_channels.is_empty() {
        api.config.default_channels.clone()
    } else {
        api.broker.dispatcher().channels().keys().cloned().collect()
    };
    let spec = CampaignSpec {
        name: batch.name,
        lane,
        body: Body {
            default: batch.text,
            variants: batch.variants.into_iter().collect(),
            attachments: Vec::new(),
        },
        channels,
        audience: AudienceSpec::Recipients(
            batch
                .recipients
                .into_iter()
                .map(|r| crate::audience::Recipient {
                    phone: Some(r.phone),
                    language: r.language,
                    ..Default::default()
                })
                .collect(),
        ),
        expires_at_ms: batch.expires_at_ms,
        start_at_ms: None,
    };
    let dispatcher = api.broker.dispatcher();
    let submitted = match once {
        Some(once) => dispatcher.submit_once(spec, once).await?,
        None => dispatcher.submit(spec).await?,
    };
    let campaign = submitted.id.to_string();
    let accepted = submitted.accepted;
    let rejected = submitted
        .rejected
        .into_iter()
        .map(|r| (r.index as u32, r.reason))
        .collect();
    Ok(if submitted.replayed {
        Response::Replayed {
            campaign,
            accepted,
            rejected,
        }
    } else {
        Response::Submitted {
            campaign,
            accepted,
            rejected,
        }
    })
}

/// What changed in a campaign at or after `since_ms`, read from the store.
fn changed_since(api: &Api, campaign: CampaignId, since_ms: u64) -> Result<Vec<StatusEvent>> {
    let store = api.broker.store();
    let name = |c| api.broker.dispatcher().channel_name(c).map(str::to_string);
    let mut out = Vec::new();
    store.scan_statuses(campaign, &mut |id, r| {
        if r.updated_ms >= since_ms {
            out.push(StatusEvent {
                delivery: id.to_string(),
                index: id.index,
                status: r.status.as_str().to_string(),
                channel: name(r.channel),
                updated_ms: r.updated_ms,
                reason: r.reason,
            });
        }
        Ok(true)
    })?;
    store.scan_dead(campaign, &mut |d| {
        if d.dead_ms >= since_ms {
            out.push(StatusEvent {
                delivery: DeliveryId::new(campaign, d.id.index).to_string(),
                index: d.id.index,
                status: "failed".into(),
                channel: name(d.channel),
                updated_ms: d.dead_ms,
                reason: Some(format!("dead letter: {}", d.reason)),
            });
        }
        Ok(true)
    })?;
    out.sort_by_key(|e| (e.updated_ms, e.index));
    Ok(out)
}

/// Whether a status subscription reads its campaign again: before it has
/// caught up, whenever the campaign's counters moved since the last read
/// (or are not in memory), and at least every [`FULL_READ`].
#[derive(Default)]
struct ReadGate {
    /// The counters at the last read (taken before it), and when it was.
    counted: Option<crate::dispatch::Progress>,
    last_read: Option<tokio::time::Instant>,
}

impl ReadGate {
    /// Whether to read now, the counters standing at `counts`; a read
    /// that is due is counted as made.
    fn due(
        &mut self,
        caught_up: bool,
        counts: Option<crate::dispatch::Progress>,
        now: tokio::time::Instant,
    ) -> bool {
        let still = caught_up
            && counts.is_some()
            && counts == self.counted
            && self.last_read.is_some_and(|t| now - t < FULL_READ);
        if !still {
            self.counted = counts;
            self.last_read = Some(now);
        }
        !still
    }
}

async fn statuses(
    api: &Arc<Api>,
    campaign: &str,
    since_ms: u64,
    send: &mut quinn::SendStream,
) -> std::result::Result<(), String> {
    let id: CampaignId = match campaign.parse() {
        Ok(id) => id,
        Err(e) => {
            return write(send, &refusal("not_found", format!("{e}"))).await;
        }
    };
    if api.broker.store().campaign(id).ok().flatten().is_none() {
        return write(send, &refusal("not_found", format!("no campaign {id}"))).await;
    }
    // Last (updated_ms, status) sent per delivery, so one subscription
    // does not repeat itself.
    let mut sent: std::collections::HashMap<u32, (u64, String)> = Default::default();
    let mut since = since_ms;
    let mut caught_up = false;
    let margin = COMMIT_MARGIN.as_millis() as u64;
    let mut reads = ReadGate::default();
    let mut gone = Box::pin(send.stopped());
    loop {
        if api.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let counts = api.broker.dispatcher().live_progress(id);
        if !reads.due(caught_up, counts, tokio::time::Instant::now()) {
            if !still_read(&mut gone, STATUS_POLL).await {
                return Ok(());
            }
            continue;
        }
        let read_at = api.broker.dispatcher().now_ms();
        let reader = Arc::clone(api);
        let events = tokio::task::spawn_blocking(move || changed_since(&reader, id, since))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for e in events {
            let key = (e.updated_ms, e.status.clone());
            if sent.get(&e.index) == Some(&key) {
                continue;
            }
            sent.insert(e.index, key);
            write(send, &Response::Status(e)).await?;
        }
        if !caught_up {
            write(send, &Response::CaughtUp).await?;
            caught_up = true;
        }
        since = since.max(read_at.saturating_sub(margin));
        if !still_read(&mut gone, STATUS_POLL).await {
            return Ok(());
        }
    }
}

/// Waits `pause`: whether the client still reads the subscription's
/// stream after it (`gone` is the stream's `stopped()`: the client
/// stopped reading, or its connection is gone).
async fn still_read<F: std::future::Future + Unpin>(gone: &mut F, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        _ = gone => false,
    }
}

async fn inbound(
    api: &Arc<Api>,
    after: Option<u64>,
    send: &mut quinn::SendStream,
) -> std::result::Result<(), String> {
    let mut after = after.unwrap_or(0);
    let mut caught_up = false;
    let mut gone = Box::pin(send.stopped());
    loop {
        if api.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let store = Arc::clone(api.broker.store());
        let page = tokio::task::spawn_blocking(move || store.processed_inbound(after, 1000))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let full = page.len() == 1000;
        for (seq, m, r) in page {
            after = seq;
            write(
                send,
                &Response::Inbound(InboundEvent {
                    seq,
                    channel: api
                        .broker
                        .dispatcher()
                        .channel_name(m.channel)
                        .map_or_else(|| m.channel.to_string(), str::to_string),
                    from: m.from,
                    text: m.text,
                    received_ms: m.received_ms,
                    route: r.route,
                    label: r.label,
                    contact: r.contact,
                    reply_to: r.reply_to.map(|s| s.delivery.to_string()),
                    duplicate_of: r.duplicate_of,
                    language: r.language,
                }),
            )
            .await?;
        }
        if full {
            continue;
        }
        if !caught_up {
            write(send, &Response::CaughtUp).await?;
            caught_up = true;
        }
        if !still_read(&mut gone, INBOUND_POLL).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Progress;

    #[test]
    fn a_subscription_reads_when_its_campaign_moves_and_at_least_every_full_read() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let counts = |wired: u64| {
            Some(Progress {
                wired,
                ..Progress::default()
            })
        };
        let mut gate = ReadGate::default();
        // Until it has caught up, every time.
        assert!(gate.due(false, counts(5), at(0)));
        assert!(gate.due(false, counts(5), at(250)));
        // Caught up: nothing while the counters stand still…
        assert!(!gate.due(true, counts(5), at(500)));
        assert!(!gate.due(true, counts(5), at(4_000)));
        // …a read as soon as they move…
        assert!(gate.due(true, counts(6), at(4_250)));
        assert!(!gate.due(true, counts(6), at(4_500)));
        // …and one at least every FULL_READ whatever they do.
        let full = FULL_READ.as_millis() as u64;
        assert!(!gate.due(true, counts(6), at(4_250 + full - 1)));
        assert!(gate.due(true, counts(6), at(4_250 + full)));
        // A campaign no longer in memory (ended long ago): every time.
        assert!(gate.due(true, None, at(20_000)));
        assert!(gate.due(true, None, at(20_250)));
    }
}
