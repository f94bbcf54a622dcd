//! `mhero status`: campaigns, their exact counts, queue depths and dead
//! letters of a store on disk; `--verify` checks every recipient.

use anyhow::Result;
use mhero_broker::Config;
use mhero_broker::dispatch::CampaignRecord;
use mhero_broker::metrics::Metrics;
use mhero_broker::store::{self, Store};
use mhero_proto::{CampaignId, DeliveryStatus, Lane};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// One campaign (`c12`), read from a running server's API (`--server`,
    /// `--token`) instead of a store on disk.
    pub campaign: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// With a campaign: follow it until every recipient has ended.
    #[arg(long, requires = "campaign")]
    pub wait: bool,
    #[command(flatten)]
    pub remote: crate::send::Remote,
    /// How many dead letters to list.
    #[arg(long, default_value_t = 10)]
    dead: usize,
    /// How many quarantined (unreadable) records to list.
    #[arg(long, default_value_t = 10)]
    quarantine: usize,
    /// Read every delivery of every campaign and check that each recipient
    /// ended exactly once (status record, dead letter, or never sent
    /// because the campaign stopped).
    #[arg(long)]
    verify: bool,
}

/// How many recipients ended, none, or more than once.
fn verify(store: &Store, id: CampaignId, record: &CampaignRecord) -> Result<Value> {
    let total = record.total as usize;
    let mut seen = vec![0u8; total];
    let mut outside = 0u64;
    let mut mark = |index: u32| match seen.get_mut(index as usize) {
        Some(n) => *n = n.saturating_add(1),
        None => outside += 1,
    };
    store.scan_statuses(id, &mut |d, rec| {
        if rec.status != DeliveryStatus::Queued {
            mark(d.index);
        }
        Ok(true)
    })?;
    store.scan_dead(id, &mut |d| {
        mark(d.id.index);
        Ok(true)
    })?;
    if record.state.stops_sending() {
        for i in record.cursor..record.total {
            mark(i);
        }
    }
    let ended = seen.iter().filter(|n| **n > 0).count();
    let twice = seen.iter().filter(|n| **n > 1).count();
    Ok(
        json!({"ended": ended, "missing": total - ended, "twice": twice, "outside_audience": outside}),
    )
}

pub fn run(config: &Config, args: &StatusArgs) -> Result<()> {
    if !config.data_dir.exists() {
        anyhow::bail!(
            "no store at {} (set --data-dir or data_dir in the config)",
            config.data_dir.display()
        );
    }
    let metrics = Metrics::new();
    // Read-only: it never recovers or writes, and may run beside a broker.
    let (store, recovery) =
        store::open_read_only(&config.data_dir, &config.store, metrics.store.clone())?;
    let mut campaigns = Vec::new();
    for (id, bytes) in store.campaigns()? {
        let k = store.counters(id);
        let (ready, leased) = store.campaign_depth(id);
        let statuses: serde_json::Map<String, Value> = DeliveryStatus::ALL
            .iter()
            .filter(|s| k.status(**s) > 0)
            .map(|s| (s.as_str().to_string(), json!(k.status(*s))))
            .collect();
        let record = CampaignRecord::decode(&bytes).ok();
        let mut c = json!({
            "id": id.to_string(),
            "name": record.as_ref().map(|r| r.spec.name.clone()),
            "lane": record.as_ref().map(|r| r.spec.lane.as_str()),
            "state": record.as_ref().map(|r| r.state.as_str()),
            "total": record.as_ref().map(|r| r.total),
            "fanned_out": record.as_ref().map(|r| r.cursor),
            "unsent": record.as_ref().map(CampaignRecord::unsent),
            "enqueued": k.enqueued,
            "ready": ready,
            "leased": leased,
            "delayed": k.delayed,
            "dead": k.dead,
            "quarantined": k.quarantined,
            "statuses": statuses,
            "retries": k.retries,
            "rerouted": k.rerouted,
            "redelivered": k.redelivered,
        });
        if args.verify
            && let Some(r) = &record
        {
            c["verified"] = verify(&store, id, r)?;
        }
        campaigns.push(c);
    }
    let mut channels = Vec::new();
    for (name, id) in store.channels() {
        let depth = store.depth(id);
        let lanes: serde_json::Map<String, Value> = Lane::ALL
            .iter()
            .map(|l| (l.as_str().to_string(), json!({"ready": depth.ready[l.code() as usize], "leased": depth.leased[l.code() as usize]})))
            .collect();
        let mut entry = json!({"name": name, "lanes": lanes});
        if let Some(c) = config.channels.get(&name) {
            // What a crash can make this channel send again, at most.
            entry["in_flight_bound"] = json!(mhero_broker::dispatch::sender::in_flight_bound(
                c,
                c.batch,
                config.dispatch.lease_max
            ));
        }
        channels.push(entry);
    }
    let globals = store.globals();
    let dead: Vec<_> = store
        .dead_letters(None, args.dead)?
        .into_iter()
        .map(|d| {
            json!({"delivery": d.id.to_string(), "lane": d.lane.as_str(), "reason": d.reason, "attempts": d.item.attempts,
                "history": d.item.history.iter().map(|h| h.reason.clone()).collect::<Vec<_>>()})
        })
        .collect();
    let quarantine: Vec<_> = store
        .quarantined(0, args.quarantine)?
        .into_iter()
        .map(|(seq, q)| {
            json!({"seq": seq, "cf": q.cf, "key": store::hex(&q.key), "bytes": q.value.len(),
                "reason": q.reason, "at_ms": q.at_ms})
        })
        .collect();
    let out = json!({
        "data_dir": config.data_dir.display().to_string(),
        "leased_unsettled": recovery.requeued,
        "campaigns": campaigns,
        "channels": channels,
        "delayed": globals.delayed,
        "dead": globals.dead,
        "dead_letters": dead,
        "quarantined": store.quarantined_count(),
        "quarantine": quarantine,
    });
    if args.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "store {} — {} delayed, {} dead letters, {} quarantined records",
        config.data_dir.display(),
        globals.delayed,
        globals.dead,
        out["quarantined"]
    );
    for c in out["campaigns"].as_array().into_iter().flatten() {
        println!(
            "  {:<5} {:<40} {:<9} {:<9} total {:>8}  queued {:>7}  dead {:>5}  {}",
            c["id"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            c["lane"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["total"],
            c["ready"].as_u64().unwrap_or(0)
                + c["leased"].as_u64().unwrap_or(0)
                + c["delayed"].as_u64().unwrap_or(0),
            c["dead"],
            c["statuses"]
        );
        if let Some(v) = c.get("verified") {
            println!("        verified: {v}");
        }
    }
    for d in out["dead_letters"].as_array().into_iter().flatten() {
        println!(
            "  dead {} ({}): {}",
            d["delivery"].as_str().unwrap_or("?"),
            d["lane"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("?")
        );
    }
    for q in out["quarantine"].as_array().into_iter().flatten() {
        println!(
            "  quarantined #{} {} key {} ({} bytes): {}",
            q["seq"],
            q["cf"].as_str().unwrap_or("?"),
            q["key"].as_str().unwrap_or("?"),
            q["bytes"],
            q["reason"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
