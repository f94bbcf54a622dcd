//! Priority lanes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A priority lane. Lanes are served in strict priority: nothing in a lower
/// lane is sent while a higher lane of the same channel has work ready.
///
/// The discriminant is the on-disk code and sorts highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Lane {
    Emergency = 0,
    High = 1,
    Normal = 2,
    Bulk = 3,
}

impl Lane {
    /// All lanes, highest priority first.
    pub const ALL: [Lane; 4] = [Lane::Emergency, Lane::High, Lane::Normal, Lane::Bulk];

    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_code(code: u8) -> Option<Lane> {
        match code {
            0 => Some(Lane::Emergency),
            1 => Some(Lane::High),
            2 => Some(Lane::Normal),
            3 => Some(Lane::Bulk),
            _ => None,
        }
    }

    /// The label value used in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Lane::Emergency => "emergency",
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = ParseLaneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lane::ALL
            .into_iter()
            .find(|lane| lane.as_str() == s)
            .ok_or_else(|| ParseLaneError(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lane {0:?} (expected emergency, high, normal or bulk)")]
pub struct ParseLaneError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_sort_by_priority() {
        for lane in Lane::ALL {
            assert_eq!(Lane::from_code(lane.code()), Some(lane));
            assert_eq!(lane.as_str().parse::<Lane>(), Ok(lane));
        }
        assert!(Lane::Emergency < Lane::Bulk);
        assert_eq!(Lane::from_code(4), None);
        assert!(
            "urgent"
                .parse::<Lane>()
                .unwrap_err()
                .to_string()
                .contains("urgent")
        );
    }
}
