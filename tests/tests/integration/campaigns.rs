//! Campaign state across a restart: the real broker on RocksDB, on a
//! multi-threaded runtime, stopped and opened again.

use std::collections::BTreeMap;
use std::time::Duration;

use mhero_broker::Broker;
use mhero_broker::config::{ChannelConfig, Config, DispatchConfig};
use mhero_broker::dispatch::CampaignSpec;
use mhero_proto::Lane;

fn config(data: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: data.to_path_buf(),
        ..Config::default()
    };
    // An unlimited channel whose leases and settles keep the store busy,
    // so fan-out steps and cancels often meet.
    config.channels = BTreeMap::from([("sms".to_string(), ChannelConfig::default())]);
    config.dispatch = DispatchConfig {
        fanout_ahead: 1_000_000,
        ..DispatchConfig::default()
    };
    config
}

/// A cancel committed while a fan-out step is between reading the campaign
/// and committing its page must not be overwritten by that page's commit:
/// after a restart every cancelled campaign is still cancelled and sends
/// nothing more.
#[test]
fn a_cancelled_campaign_stays_cancelled_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let ids = runtime.block_on(async {
        let broker = Broker::open(config(&data)).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..300u64 {
            let spec = CampaignSpec::generated(
                &format!("race {i}"),
                Lane::Normal,
                "Measles campaign: bring children under five to the clinic.",
                20_000,
                &["sms"],
            );
            let id = broker.dispatcher().submit(spec).await.unwrap().id;
            // Cancel at varying points of the fan-out, which runs on
            // another worker thread.
            tokio::time::sleep(Duration::from_micros(300 * (i % 20))).await;
            broker.dispatcher().cancel(id).await.unwrap();
            ids.push(id);
        }
        broker.shutdown().await;
        ids
    });
    runtime.block_on(async {
        let broker = Broker::open(config(&data)).await.unwrap();
        let before: Vec<u64> = ids
            .iter()
            .map(|id| broker.dispatcher().progress(*id).unwrap().wired)
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (id, wired_before) in ids.iter().zip(before) {
            let p = broker.dispatcher().progress(*id).unwrap();
            assert_eq!(p.state, "cancelled", "{p:?}");
            assert_eq!(
                p.wired, wired_before,
                "a cancelled campaign sent again: {p:?}"
            );
        }
        broker.shutdown().await;
    });
}
