//! Micro-benchmarks of the store's operations, per 1,000 deliveries.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mhero_broker::config::{Durability, StoreConfig};
use mhero_broker::metrics::StoreMetrics;
use mhero_broker::store::{
    Engine, MemoryEngine, NewDelivery, Outcome, QueueKey, RocksEngine, Store, SystemClock, keys,
};
use mhero_proto::{CampaignId, ChannelId, DeliveryStatus, Lane};

const BATCH: u32 = 1000;

fn deliveries(start: u32) -> Vec<NewDelivery> {
    (start..start + BATCH)
        .map(|i| NewDelivery {
            index: i,
            recipient: format!("+2317{i:08}"),
            route: 0,
            language: None,
        })
        .collect()
}

fn engines(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn Engine>)> {
    let open = |name: &str, durability| -> Arc<dyn Engine> {
        let config = StoreConfig {
            durability,
            ..StoreConfig::default()
        };
        Arc::new(
            RocksEngine::open(&dir.join(name), &config, StoreMetrics::default())
                .expect("open rocksdb"),
        )
    };
    vec![
        ("memory", Arc::new(MemoryEngine::new())),
        ("rocksdb-async", open("async", Durability::Async)),
        ("rocksdb-sync", open("sync", Durability::Sync)),
    ]
}

fn queue_ops(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    for (name, engine) in engines(dir.path()) {
        let (store, _) = Store::open(engine, Arc::new(SystemClock), StoreMetrics::default())
            .expect("open store");
        let q = QueueKey {
            channel: ChannelId(1),
            lane: Lane::Normal,
            campaign: CampaignId(1),
        };
        let mut next = 0u32;
        group.bench_function(BenchmarkId::new("enqueue_lease_settle", name), |b| {
            b.iter(|| {
                store.enqueue(q, deliveries(next)).wait().expect("enqueue");
                next = next.wrapping_add(BATCH);
                let leased = store
                    .lease(q.channel, BATCH as usize)
                    .expect("lease")
                    .wait()
                    .expect("lease commit");
                let done = Outcome::Done {
                    status: DeliveryStatus::Wired,
                    external_id: None,
                    reason: None,
                };
                store
                    .settle(leased.into_iter().map(|l| (l, done.clone())).collect())
                    .expect("settle")
                    .wait()
                    .expect("settle commit");
            });
        });
    }
    group.finish();
}

fn key_codecs(c: &mut Criterion) {
    let q = QueueKey {
        channel: ChannelId(3),
        lane: Lane::Bulk,
        campaign: CampaignId(42),
    };
    c.bench_function("keys/ready_encode_decode", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            let k = keys::ready(q, seq);
            std::hint::black_box(keys::ready_from(&k))
        });
    });
}

criterion_group!(benches, queue_ops, key_codecs);
criterion_main!(benches);
