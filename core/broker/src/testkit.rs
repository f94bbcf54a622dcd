//! Set-up the broker's test modules share: a worker with a mobile number,
//! and a broker with sandbox channels on a given engine and clock.

use std::sync::Arc;

use crate::Broker;
use crate::channel::SandboxConfig;
use crate::config::{ChannelConfig, Config, EngineKind};
use crate::directory::{IncomingContact, Telecom};
use crate::dispatch::TokioClock;
use crate::store::Engine;

/// An active worker `Practitioner/{id}` with one mobile number; tests add
/// roles, facilities and languages with struct update syntax.
pub fn phone_worker(id: &str, phone: &str) -> IncomingContact {
    IncomingContact {
        resource: format!("Practitioner/{id}"),
        name: format!("Worker {id}"),
        telecoms: vec![Telecom {
            system: "phone".into(),
            value: phone.into(),
            use_: Some("mobile".into()),
            rank: None,
        }],
        active: true,
        ..Default::default()
    }
}

/// A broker on `engine` whose clock starts at `at_ms`, with one sandbox
/// channel per name (receipts after 50 ms), the plugin cache off, and
/// whatever `change` sets. Opened again on the same engine, it is the
/// same broker after a restart.
pub async fn broker_on(
    engine: Arc<dyn Engine>,
    at_ms: u64,
    channels: &[&str],
    change: impl FnOnce(&mut Config),
) -> Broker {
    let channel = ChannelConfig {
        sandbox: SandboxConfig {
            receipt_delay_ms: 50,
            ..SandboxConfig::default()
        },
        ..ChannelConfig::default()
    };
    let mut config = Config {
        channels: channels
            .iter()
            .map(|name| (name.to_string(), channel.clone()))
            .collect(),
        ..Config::default()
    };
    config.store.engine = EngineKind::Memory;
    config.plugins.cache_dir = None;
    change(&mut config);
    Broker::open_with(
        config,
        crate::broker::Options {
            clock: Some(TokioClock::at(at_ms)),
            engine: Some(engine),
        },
    )
    .await
    .unwrap()
}
