//! Delivery statuses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where one delivery stands.
///
/// The success ladder is `queued → wired → sent → delivered → read`
/// (`wired`: handed to the gateway, which accepted it). `failed`,
/// `expired` and `cancelled` end a delivery. Receipts arrive out of order,
/// so updates go through [`DeliveryStatus::advance`], which never moves a
/// delivery backwards.
///
/// The discriminant is the on-disk code; it never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum DeliveryStatus {
    Queued = 0,
    Wired = 1,
    Sent = 2,
    Delivered = 3,
    Read = 4,
    Failed = 5,
    Expired = 6,
    Cancelled = 7,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 8] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Wired,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
        DeliveryStatus::Failed,
        DeliveryStatus::Expired,
        DeliveryStatus::Cancelled,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_code(code: u8) -> Option<DeliveryStatus> {
        match code {
            0 => Some(DeliveryStatus::Queued),
            1 => Some(DeliveryStatus::Wired),
            2 => Some(DeliveryStatus::Sent),
            3 => Some(DeliveryStatus::Delivered),
            4 => Some(DeliveryStatus::Read),
            5 => Some(DeliveryStatus::Failed),
            6 => Some(DeliveryStatus::Expired),
            7 => Some(DeliveryStatus::Cancelled),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Wired => "wired",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    /// True once the delivery has left the queue: the gateway took it, or it
    /// ended without being sent.
    pub const fn is_settled(self) -> bool {
        !matches!(self, DeliveryStatus::Queued)
    }

    /// True for the ends that no receipt can change.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Read
                | DeliveryStatus::Failed
                | DeliveryStatus::Expired
                | DeliveryStatus::Cancelled
        )
    }

    /// Position on the success ladder; the failure ends rank by when they
    /// can happen. `failed` outranks `sent` (a gateway may report a sent
    /// message undeliverable) but not `delivered` (a late failure receipt
    /// for a message already delivered is stale).
    const fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Queued => 0,
            DeliveryStatus::Expired | DeliveryStatus::Cancelled => 1,
            DeliveryStatus::Wired => 2,
            DeliveryStatus::Sent => 3,
            DeliveryStatus::Failed => 4,
            DeliveryStatus::Delivered => 5,
            DeliveryStatus::Read => 6,
        }
    }

    /// The status after a report of `next`: `next` if it moves the delivery
    /// forward, otherwise the current status unchanged.
    pub fn advance(self, next: DeliveryStatus) -> DeliveryStatus {
        if self.is_final() && !(self == DeliveryStatus::Failed && next.rank() > self.rank()) {
            return self;
        }
        if next.rank() > self.rank() {
            next
        } else {
            self
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery status {0:?}")]
pub struct ParseStatusError(pub String);

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for st in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::from_code(st.code()), Some(st));
            assert_eq!(st.as_str().parse::<DeliveryStatus>(), Ok(st));
        }
        assert_eq!(DeliveryStatus::from_code(8), None);
    }

    #[test]
    fn a_status_never_goes_backwards() {
        assert_eq!(Delivered.advance(Sent), Delivered);
        assert_eq!(Read.advance(Delivered), Read);
        assert_eq!(Wired.advance(Delivered), Delivered);
        assert_eq!(Sent.advance(Failed), Failed);
        assert_eq!(Delivered.advance(Failed), Delivered);
        // A gateway that reported failure and then delivery did deliver.
        assert_eq!(Failed.advance(Delivered), Delivered);
        assert_eq!(Failed.advance(Sent), Failed);
        assert_eq!(Cancelled.advance(Wired), Cancelled);
        assert_eq!(Expired.advance(Delivered), Expired);
    }

    #[test]
    fn advance_is_order_independent_for_any_two_reports() {
        for a in DeliveryStatus::ALL {
            for b in DeliveryStatus::ALL {
                if a.is_final() || b.is_final() {
                    continue;
                }
                assert_eq!(
                    Wired.advance(a).advance(b),
                    Wired.advance(b).advance(a),
                    "{a} {b}"
                );
            }
        }
    }
}
