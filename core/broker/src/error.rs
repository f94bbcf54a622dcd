//! The broker's error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed (its own error says how).
    #[error(transparent)]
    Store(#[from] mhero_store::Error),

    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unreadable record in column family {cf} at key {key}: {message}")]
    BadRecord {
        cf: &'static str,
        key: String,
        message: String,
    },

    #[error("plugin {plugin} not loaded: {message}")]
    PluginLoad { plugin: String, message: String },

    /// A request that cannot be accepted as it is.
    #[error("{0}")]
    Invalid(String),

    /// One field of a request is not acceptable; `field` is its path
    /// (`body.variants.fr`, `channels`).
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },

    /// What a request names does not exist.
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },

    /// The request clashes with the current state (already done, still
    /// running).
    #[error("{0}")]
    Conflict(String),

    /// The caller's credentials are missing or refused.
    #[error("{0}")]
    Unauthorized(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot read config file {path}")]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },

    /// A system the broker reads from (a FHIR server) failed or refused,
    /// after the retries it was due.
    #[error("{system}: {message}")]
    Upstream { system: String, message: String },

    /// A task the broker runs stopped unexpectedly (a bug, or shutdown).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A broker error met inside a store callback (a reroute's next step reads
/// the campaign's audience): the store's own error passes through, any
/// other becomes the store's internal error with its text.
impl From<Error> for mhero_store::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => e,
            other => mhero_store::Error::Internal(other.to_string()),
        }
    }
}

/// What kind of failure an error is, stable across releases: the API maps
/// it to an HTTP status and puts it in its error bodies, so callers act on
/// the code, not on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or out of range: fix it, do not retry.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It clashes with the current state.
    Conflict,
    /// Credentials missing or refused.
    Unauthorized,
    /// The broker cannot serve it now (store locked or failing, stopping):
    /// retry later.
    Unavailable,
    /// A fault of the broker: report it.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Invalid => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Store(e) => store_code(e),
            Error::Invalid(_)
            | Error::InvalidField { .. }
            | Error::Config(_)
            | Error::ConfigParse { .. } => ErrorCode::Invalid,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::PluginLoad { .. }
            | Error::ConfigFile { .. }
            | Error::Io { .. }
            | Error::Upstream { .. } => ErrorCode::Unavailable,
            Error::BadRecord { .. } | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The field an invalid request is wrong in, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// An invalid field, with its path.
    pub fn field_invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn store_code(e: &mhero_store::Error) -> ErrorCode {
    use mhero_store::Error as S;
    match e {
        S::NoDeadLetter(_) => ErrorCode::NotFound,
        S::NotLeased(_) | S::ReadOnly { .. } => ErrorCode::Conflict,
        S::Invalid(_) => ErrorCode::Invalid,
        S::Locked { .. }
        | S::Open { .. }
        | S::Read { .. }
        | S::Write { .. }
        | S::Io { .. }
        | S::StoreClosed
        | S::Spawn(_) => ErrorCode::Unavailable,
        S::ForeignStore { .. } | S::Corrupt { .. } | S::BadRecord { .. } | S::Internal(_) => {
            ErrorCode::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_stable_codes_and_statuses() {
        let cases = [
            (
                Error::field_invalid("body.default", "must not be empty"),
                "invalid",
                400,
            ),
            (
                Error::NotFound {
                    what: "campaign",
                    id: "c9".into(),
                },
                "not_found",
                404,
            ),
            (Error::Conflict("already cancelled".into()), "conflict", 409),
            (Error::Unauthorized("bad token".into()), "unauthorized", 401),
            (
                Error::Store(mhero_store::Error::Locked {
                    path: "/data".into(),
                }),
                "unavailable",
                503,
            ),
            (
                Error::Store(mhero_store::Error::StoreClosed),
                "unavailable",
                503,
            ),
            (Error::Internal("bug".into()), "internal", 500),
        ];
        for (e, code, status) in cases {
            assert_eq!(
                (e.code().as_str(), e.code().http_status()),
                (code, status),
                "{e}"
            );
        }
        let e = Error::field_invalid("body.variants.fr", "must not be empty");
        assert_eq!(e.field(), Some("body.variants.fr"));
        assert_eq!(e.to_string(), "body.variants.fr: must not be empty");
    }
}
