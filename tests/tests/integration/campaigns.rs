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

/// An unreadable campaign record does not stop the broker from starting:
/// it is moved to the quarantine (which `mhero status` lists), what was
/// queued for it ends as dead letters, and the other campaigns go on.
#[test]
fn an_unreadable_campaign_record_is_quarantined_at_start_and_the_rest_resumes() {
    use mhero_broker::metrics::StoreMetrics;
    use mhero_broker::store::{Batch, Cf, Engine, RocksEngine, keys};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut config = config(&data);
    config.channels.get_mut("sms").unwrap().rate = 200.0;
    let spec = |name: &str| {
        CampaignSpec::generated(
            name,
            Lane::Normal,
            "Stock report due Friday.",
            2_000,
            &["sms"],
        )
    };
    let (broken, healthy) = runtime.block_on(async {
        let broker = Broker::open(config.clone()).await.unwrap();
        let a = broker.dispatcher().submit(spec("a")).await.unwrap().id;
        let b = broker.dispatcher().submit(spec("b")).await.unwrap().id;
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.shutdown().await;
        (a, b)
    });
    {
        let engine = RocksEngine::open(&data, &config.store, StoreMetrics::default()).unwrap();
        let mut batch = Batch::new();
        batch.put(
            Cf::Campaigns,
            keys::campaign(broken),
            vec![1, 0xff, 0xff, 0xff],
        );
        engine.write(batch).unwrap();
    }
    runtime.block_on(async {
        let broker = Broker::open(config.clone()).await.unwrap();
        assert!(broker.dispatcher().progress(broken).is_none());
        assert!(
            broker
                .dispatcher()
                .wait_done(&[healthy], Duration::from_secs(30))
                .await,
            "{:?}",
            broker.dispatcher().progress(healthy)
        );
        let p = broker.dispatcher().progress(healthy).unwrap();
        assert_eq!(p.wired + p.delivered, 2_000, "{p:?}");
        broker.shutdown().await;
    });
    let status = super::status_json(&data, &[]);
    assert_eq!(status["quarantined"], 1, "{status}");
    let q = &status["quarantine"][0];
    assert_eq!(q["cf"], "campaigns", "{status}");
    assert!(
        q["reason"]
            .as_str()
            .unwrap()
            .contains("unreadable campaign record"),
        "{status}"
    );
    // What was queued for the broken campaign ended as dead letters.
    let reasons: Vec<&str> = status["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("campaign record is missing")),
        "{reasons:?}"
    );
}
