//! Client library for integrators (surveillance, lab and HR systems) that
//! talk to an mHero broker over its QUIC API: batched submission to
//! explicit recipients, and subscriptions to delivery statuses and inbound
//! messages that resume from a position.
//!
//! The broker makes a self-signed certificate on its first start and
//! prints its SHA-256 fingerprint (`mhero serve` says
//! `serving quic://127.0.0.1:4433 (certificate sha256:…)`); the client pins
//! it, so no certificate authority is involved and no other server is
//! accepted.
//!
//! ```no_run
//! # async fn example() -> Result<(), mhero_client::ClientError> {
//! use mhero_client::{Client, Pin, wire::{Recipient, Submit}};
//!
//! let pin = Pin::parse("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")?;
//! let client = Client::connect("127.0.0.1:4433".parse().unwrap(), pin, "mhero_…").await?;
//! let submitted = client
//!     .submit(Submit {
//!         name: "malaria RDT results".into(),
//!         lane: "high".into(),
//!         text: "Your malaria test result is ready: please come to the clinic.".into(),
//!         recipients: vec![Recipient { phone: "+231770000001".into(), language: None }],
//!         ..Submit::default()
//!     })
//!     .await?;
//! let mut statuses = client.statuses(&submitted.campaign, 0).await?;
//! while let Some(event) = statuses.next_event().await? {
//!     // Store event.updated_ms: resume from it after a disconnect.
//!     println!("{} {}", event.delivery, event.status);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - this file: [`Client`], [`Pin`], [`Subscription`] and the errors.
//! - [`wire`] (from `mhero-proto`): the frames both sides speak.
//!
//! The client shares its data model with the broker through
//! [`mhero_proto`], so ids, lanes and statuses mean the same on both sides.

use std::net::SocketAddr;
use std::sync::Arc;

pub use mhero_proto::wire;
use mhero_proto::wire::{InboundEvent, Request, Response, StatusEvent, Submit};
pub use mhero_proto::{CampaignId, DeliveryId, DeliveryStatus, Lane};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("certificate pin: {0}")]
    Pin(String),
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("connection: {0}")]
    Connection(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// The SHA-256 of the broker's certificate: the only one accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl Pin {
    /// `sha256:<64 hex digits>`, as `mhero serve` prints it.
    pub fn parse(s: &str) -> Result<Self> {
        let hex = s.trim().strip_prefix("sha256:").unwrap_or(s.trim());
        if hex.len() != 64 {
            return Err(ClientError::Pin(format!(
                "{s:?} is not sha256:<64 hex digits>"
            )));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| ClientError::Pin(format!("{s:?} is not hex")))?;
        }
        Ok(Self(out))
    }

    /// The pin of a certificate (DER).
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Accepts exactly the pinned certificate, and checks that the handshake
/// was signed by its key.
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if Pin::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {}, not the pinned {}",
                Pin::of(end_entity),
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a submission became.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub campaign: String,
    pub accepted: u32,
    /// `(index in the batch, reason)`, in batch order.
    pub rejected: Vec<(u32, String)>,
    /// A [`Client::submit_once`] retry: the batch was accepted before
    /// under its key, and this is what it became then.
    pub replayed: bool,
}

impl Submitted {
    /// The batch position of the delivery at `index` in the campaign (a
    /// status event's `index`): the accepted recipients keep the batch's
    /// order, the rejected ones are left out.
    pub fn batch_index(&self, index: u32) -> u32 {
        let mut position = index;
        for (rejected, _) in &self.rejected {
            if *rejected <= position {
                position += 1;
            } else {
                break;
            }
        }
        position
    }
}

/// An authenticated connection to a broker. Cheap to clone; requests on
/// one connection run concurrently (one QUIC stream each).
#[derive(Clone)]
pub struct Client {
    connection: quinn::Connection,
    // Kept so the socket lives as long as the client.
    _endpoint: quinn::Endpoint,
    role: String,
}

impl Client {
    /// Connects, checks the certificate against `pin`, and authenticates
    /// with `token`.
    pub async fn connect(addr: SocketAddr, pin: Pin, token: &str) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Connect {
                addr,
                message: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| {
            ClientError::Connect {
                addr,
                message: e.to_string(),
            }
        })?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr,
            message: e.to_string(),
        })?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connection = endpoint
            .connect(addr, "mhero")
            .map_err(|e| ClientError::Connect {
                addr,
                message: e.to_string(),
            })?
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                message: e.to_string(),
            })?;
        let mut client = Self {
            connection,
            _endpoint: endpoint,
            role: String::new(),
        };
        let mut exchange = client
            .request(&Request::Hello {
                token: token.to_string(),
            })
            .await?;
        match exchange.next().await? {
            Some(Response::Welcome { role }) => client.role = role,
            other => return Err(unexpected(other)),
        }
        Ok(client)
    }

    /// The token's role: `viewer`, `sender` or `admin`.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Submits a batch as one campaign (a sender token is needed).
    pub async fn submit(&self, batch: Submit) -> Result<Submitted> {
        self.submitted(&Request::Submit(batch)).await
    }

    /// Submits a batch under an idempotency key, so that sending it again
    /// (after a lost connection or a timeout, when whether it was accepted
    /// is unknown) sends nothing twice: the retry is answered with what the
    /// first became, `replayed` set. One key per batch (a UUID does, kept
    /// with the batch until it is answered); the key with another batch is
    /// refused, and a retry while the first is still being accepted is
    /// refused with `conflict` and may be tried again.
    pub async fn submit_once(&self, key: &str, batch: Submit) -> Result<Submitted> {
        self.submitted(&Request::SubmitOnce {
            key: key.to_string(),
            batch,
        })
        .await
    }

    async fn submitted(&self, request: &Request) -> Result<Submitted> {
        let mut exchange = self.request(request).await?;
        let (response, replayed) = match exchange.next().await? {
            Some(Response::Submitted {
                campaign,
                accepted,
                rejected,
            }) => ((campaign, accepted, rejected), false),
            Some(Response::Replayed {
                campaign,
                accepted,
                rejected,
            }) => ((campaign, accepted, rejected), true),
            other => return Err(unexpected(other)),
        };
        let (campaign, accepted, rejected) = response;
        Ok(Submitted {
            campaign,
            accepted,
            rejected,
            replayed,
        })
    }

    /// A campaign's delivery statuses: each delivery whose status changed
    /// at or after `since_ms`, then each change as it happens.
    pub async fn statuses(
        &self,
        campaign: &str,
        since_ms: u64,
    ) -> Result<Subscription<StatusEvent>> {
        let exchange = self
            .request(&Request::Statuses {
                campaign: campaign.to_string(),
                since_ms,
            })
            .await?;
        Ok(Subscription {
            exchange,
            pick: |r| match r {
                Response::Status(e) => Some(e),
                _ => None,
            },
            caught_up: false,
        })
    }

    /// Messages health workers sent, after `after` (a sequence number; none:
    /// from the first), then each new one.
    pub async fn inbound(&self, after: Option<u64>) -> Result<Subscription<InboundEvent>> {
        let exchange = self.request(&Request::Inbound { after }).await?;
        Ok(Subscription {
            exchange,
            pick: |r| match r {
                Response::Inbound(e) => Some(e),
                _ => None,
            },
            caught_up: false,
        })
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection
            .close(quinn::VarInt::from_u32(wire::close::DONE), b"bye");
    }

    async fn request(&self, request: &Request) -> Result<Exchange> {
        let (mut send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        send.write_all(&wire::encode(request))
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        Ok(Exchange { send, recv })
    }
}

fn unexpected(r: Option<Response>) -> ClientError {
    match r {
        Some(Response::Error { code, message }) => ClientError::Refused { code, message },
        Some(other) => ClientError::Protocol(format!("unexpected answer {other:?}")),
        None => ClientError::Protocol("the stream ended without an answer".into()),
    }
}

/// One stream: a request and its answers.
struct Exchange {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Exchange {
    async fn next(&mut self) -> Result<Option<Response>> {
        let mut header = [0u8; 4];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => return Err(ClientError::Connection(e.to_string())),
        }
        let len = wire::frame_len(header).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut body = vec![0u8; len];
        self.recv
            .read_exact(&mut body)
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        wire::decode(&body)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// What a subscription brings next.
#[derive(Clone, Debug, PartialEq)]
pub enum Update<T> {
    Event(T),
    /// Everything from before the subscription has been received; what
    /// follows happens live.
    CaughtUp,
}

/// Events of a subscription, in order, until it is closed.
pub struct Subscription<T> {
    exchange: Exchange,
    pick: fn(Response) -> Option<T>,
    caught_up: bool,
}

impl<T> Subscription<T> {
    /// The next event, or the moment the subscription caught up; `None`
    /// once the broker ends the stream (it is stopping). An error the
    /// broker sent ends it with that error.
    pub async fn next(&mut self) -> Result<Option<Update<T>>> {
        match self.exchange.next().await? {
            None => Ok(None),
            Some(Response::CaughtUp) => {
                self.caught_up = true;
                Ok(Some(Update::CaughtUp))
            }
            Some(Response::Error { code, message }) => Err(ClientError::Refused { code, message }),
            Some(r) => match (self.pick)(r) {
                Some(event) => Ok(Some(Update::Event(event))),
                None => Err(ClientError::Protocol("an event of another kind".into())),
            },
        }
    }

    /// The next event, passing over the catch-up mark.
    pub async fn next_event(&mut self) -> Result<Option<T>> {
        loop {
            match self.next().await? {
                Some(Update::Event(e)) => return Ok(Some(e)),
                Some(Update::CaughtUp) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Whether everything from before the subscription has been received
    /// (what follows happens live).
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Ends the subscription.
    pub fn close(mut self) {
        let _ = self.exchange.send.finish();
        let _ = self.exchange.recv.stop(quinn::VarInt::from_u32(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_positions_map_back_to_the_batch() {
        let s = Submitted {
            campaign: "c1".into(),
            accepted: 6,
            rejected: vec![(1, "x".into()), (2, "x".into()), (5, "x".into())],
            replayed: false,
        };
        // Batch 0 3 4 6 7 8 were accepted, in that order.
        let mapped: Vec<u32> = (0..6).map(|i| s.batch_index(i)).collect();
        assert_eq!(mapped, [0, 3, 4, 6, 7, 8]);
    }

    #[test]
    fn pins_parse_and_print_alike() {
        let pin = Pin::of(b"certificate");
        assert_eq!(Pin::parse(&pin.to_string()).unwrap(), pin);
        assert!(Pin::parse("sha256:abc").is_err());
        assert!(Pin::parse(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }
}
