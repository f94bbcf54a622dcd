//! The QUIC API's frames: what `mhero-client` and the broker say to each
//! other.
//!
//! A connection speaks ALPN [`ALPN`] over TLS 1.3. Every exchange is one
//! bidirectional stream: the client writes one [`Request`] frame, the
//! broker answers with [`Response`] frames. The first stream of a
//! connection carries [`Request::Hello`] with a token; nothing else is
//! served until it is answered [`Response::Welcome`].
//!
//! - [`Request::Submit`]: a batch of messages to explicit recipients (lab
//!   results, reminders), one campaign per batch; answered
//!   [`Response::Submitted`].
//! - [`Request::SubmitOnce`]: the same under an idempotency key, so that a
//!   batch sent again after a lost connection or a timeout is not sent
//!   twice: a retry is answered [`Response::Replayed`] with what the first
//!   became.
//! - [`Request::Statuses`]: a campaign's delivery statuses as they change,
//!   from a position (`since_ms`): every delivery whose status changed at
//!   or after it, then each later change, until the client closes the
//!   stream. At least once: resuming from the last event's `updated_ms`
//!   may repeat events, never skips one.
//! - [`Request::Inbound`]: messages health workers sent, after a sequence
//!   number, then each new one, once the inbound pipeline has processed
//!   it (its route, label, sender and what it answers).
//!
//! A frame is a 4-byte big-endian length, then that many bytes of postcard.

use serde::{Deserialize, Serialize};

/// The protocol's ALPN id; a new incompatible version gets a new one.
pub const ALPN: &[u8] = b"mhero/1";

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Most messages in one [`Submit`].
pub const MAX_BATCH: usize = 100_000;

/// Application error codes a connection is closed with.
pub mod close {
    /// The client said goodbye.
    pub const DONE: u32 = 0;
    /// The token was refused.
    pub const UNAUTHORIZED: u32 = 1;
    /// A frame could not be read.
    pub const PROTOCOL: u32 = 2;
    /// The broker is stopping.
    pub const STOPPING: u32 = 3;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Authenticates the connection.
    Hello {
        token: String,
    },
    Submit(Submit),
    Statuses {
        campaign: String,
        since_ms: u64,
    },
    Inbound {
        after: Option<u64>,
    },
    // Appended: the variants before keep their numbers, so a broker reads
    // the frames of clients that do not know this one.
    /// A batch under an idempotency key (1 to 255 visible ASCII
    /// characters, unique per batch; a UUID does): the same batch under the
    /// same key is accepted once, and a retry is answered
    /// [`Response::Replayed`]. The key with another batch is refused
    /// (`invalid`); a retry while the first is still being accepted is
    /// refused (`conflict`) and may be tried again.
    SubmitOnce {
        key: String,
        batch: Submit,
    },
}

/// One campaign's worth of messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    pub name: String,
    /// `emergency`, `high`, `normal` or `bulk`.
    pub lane: String,
    pub text: String,
    /// Language (BCP 47) → text.
    pub variants: Vec<(String, String)>,
    /// Channel names in preference order; empty: the broker's defaults.
    pub channels: Vec<String>,
    pub recipients: Vec<Recipient>,
    /// Nothing is sent after this time (ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// E.164, or national with the broker's default country.
    pub phone: String,
    pub language: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Welcome {
        /// `viewer`, `sender` or `admin`.
        role: String,
    },
    /// A request refused; the stream ends.
    Error {
        code: String,
        message: String,
    },
    Submitted {
        campaign: String,
        accepted: u32,
        /// `(index in the batch, reason)`.
        rejected: Vec<(u32, String)>,
    },
    Status(StatusEvent),
    Inbound(InboundEvent),
    /// Everything up to now has been sent; later events follow as they
    /// happen.
    CaughtUp,
    /// A [`Request::SubmitOnce`] whose key was accepted before: what that
    /// batch became; nothing is sent again.
    Replayed {
        campaign: String,
        accepted: u32,
        rejected: Vec<(u32, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// `c12-40017`.
    pub delivery: String,
    /// Position in the campaign's audience: the batch's order less the
    /// rejected recipients (`mhero_client::Submitted::batch_index` maps it
    /// back).
    pub index: u32,
    /// `queued` … `cancelled` (see [`crate::DeliveryStatus`]).
    pub status: String,
    pub channel: Option<String>,
    /// When the status last changed: resume from here.
    pub updated_ms: u64,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// Arrival order: resume after the last one seen.
    pub seq: u64,
    pub channel: String,
    pub from: String,
    pub text: String,
    pub received_ms: Option<u64>,
    // What the inbound pipeline made of it (appended: a reader of the
    // first five fields ignores them). Events are sent once processed.
    /// `inbox`, `duplicate`, or a trigger's action (`opt_out`, `help`,
    /// `report`…).
    pub route: String,
    /// The classifier chain's label (`unknown` when none was sure).
    pub label: String,
    /// The sender's directory number, if the directory knows them.
    pub contact: Option<u32>,
    /// The delivery it answers (`c12-40017`), if any.
    pub reply_to: Option<String>,
    /// The message (seq) it repeats, if it is a duplicate.
    pub duplicate_of: Option<u64>,
    /// BCP 47, as detected.
    pub language: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A value as one frame: length, then postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(value, out).expect("postcard encodes plain types");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// The length a frame's 4-byte header announces, checked.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// A frame's body (after its header) as a value.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_length() {
        let r = Request::Submit(Submit {
            name: "lab results".into(),
            lane: "high".into(),
            text: "Your result is ready.".into(),
            recipients: vec![Recipient {
                phone: "+231770000001".into(),
                language: Some("fr".into()),
            }],
            ..Submit::default()
        });
        let frame = encode(&r);
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<Request>(&frame[4..]).unwrap(), r);
    }

    #[test]
    fn variants_keep_their_numbers_on_the_wire() {
        // A frame's first byte is its variant: clients and brokers of
        // different versions read each other's older frames.
        let first = |r: &Request| encode(r)[4];
        assert_eq!(first(&Request::Hello { token: "t".into() }), 0);
        assert_eq!(first(&Request::Submit(Submit::default())), 1);
        assert_eq!(first(&Request::Inbound { after: None }), 3);
        let once = Request::SubmitOnce {
            key: "k".into(),
            batch: Submit::default(),
        };
        assert_eq!(first(&once), 4);
        let caught_up = encode(&Response::CaughtUp)[4];
        assert_eq!(caught_up, 5);
        let replayed = encode(&Response::Replayed {
            campaign: "c1".into(),
            accepted: 1,
            rejected: vec![],
        });
        assert_eq!(replayed[4], 6);
        assert_eq!(decode::<Request>(&encode(&once)[4..]).unwrap(), once);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        assert!(matches!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            decode::<Request>(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
    }
}
