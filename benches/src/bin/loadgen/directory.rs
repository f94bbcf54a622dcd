//! Directory scenarios: importing an iHRIS-shaped registry through the
//! mapper plugin, and selecting from a million contacts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mhero_benches::{fs_type, peak_rss_mb, round, rss_mb};
use mhero_broker::audience::AudienceSource;
use mhero_broker::directory::generate::{ROLES, Registry};
use mhero_broker::directory::{Directory, ImportReport, Incoming, IncomingContact, Telecom, sync};
use mhero_broker::plugin::Kind;
use mhero_proto::CampaignId;
use serde_json::json;

use crate::dispatch::{config, start};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Practitioners in the generated registry.
    #[arg(long, default_value_t = 200_000)]
    n: u32,
    /// Practitioners per Bundle (each with its PractitionerRole).
    #[arg(long, default_value_t = 1000)]
    page: u32,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SelectArgs {
    /// Contacts in the directory.
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u32,
    /// Counts timed.
    #[arg(long, default_value_t = 200)]
    runs: u32,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// (Internal) measure a store loaded by the parent run, in this fresh
    /// process: its peak RSS is a broker's that opened a directory of n.
    #[arg(long, hide = true)]
    measure: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0.0)]
    load_s: f64,
}

/// The selector the select target names: role AND location subtree AND
/// NOT group.
pub const THREE_TERMS: &str = "role:nurse AND location:C-bong AND NOT group:ebola-responders";

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn import(args: &ImportArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (config, scratch) = config(args.dir.as_ref(), "sync")?;
        let bench = start(config, scratch, Default::default()).await?;
        let data_dir = bench.broker.config().data_dir.clone();
        let mapper = bench.broker.plugins().require("ihris-practitioner", Kind::FhirMapper)?;
        let reg = Registry {
            page: args.page,
            noise_percent: 2.0,
            retired_percent: 3.0,
            ..Registry::new(args.n)
        };
        // The documents as an import reads them from files: text.
        let mut docs = vec![reg.places_bundle().to_string()];
        docs.extend((0..reg.pages()).map(|p| reg.practitioners_page(p).to_string()));
        docs.push(reg.groups_bundle().to_string());
        let bytes: usize = docs.iter().map(String::len).sum();
        let dir = Arc::clone(bench.broker.directory());
        let started = Instant::now();
        let (report, elapsed, mapper_s, envelope_s) =
            tokio::task::spawn_blocking(move || -> Result<(ImportReport, f64, f64, f64)> {
                // What `mhero import <folder>` runs, with the files read.
                let total = sync::import_documents(
                    &dir,
                    &mapper,
                    "ihris",
                    "LR",
                    docs.iter().enumerate().map(|(i, d)| (i.to_string(), Ok(d.clone()))),
                    |_, _| {},
                )?;
                let elapsed = started.elapsed().as_secs_f64();
                // What bounds it: the same documents through the mapper
                // alone, and through the host's own read of them alone.
                let t = Instant::now();
                for doc in &docs {
                    mapper.map_resources(doc)?;
                }
                let mapper_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                for doc in &docs {
                    sync::envelope(doc).map_err(anyhow::Error::msg)?;
                }
                Ok((total, elapsed, mapper_s, t.elapsed().as_secs_f64()))
            })
            .await??;
        if report.contacts() != u64::from(args.n) {
            bail!("{} of {} contacts imported", report.contacts(), args.n);
        }
        let summary = bench.broker.directory().summary();
        let rss = peak_rss_mb();
        bench.broker.shutdown().await;
        println!(
            "{}",
            json!({
                "scenario": "import",
                "differs_from_defaults": bench.differs,
                "n": args.n,
                "page": args.page,
                "path": "generated iHRIS Bundles (Practitioner + PractitionerRole per worker, 4-level Location tree, Organization, Group) as JSON text → ihris-practitioner mapper plugin (wasm) → directory (contacts, identity and phone indexes, posting lists) in RocksDB, one synced commit per Bundle; the next Bundle is mapped while the one before is written (sync::import_documents, what `mhero import` runs)",
                "durability": "sync",
                "noise": "2 % missing/malformed/shared numbers, 3 % retired",
                "documents_mb": round(bytes as f64 / 1e6, 1),
                "data_dir": data_dir.display().to_string(),
                "filesystem": fs_type(&data_dir),
                "elapsed_s": round(elapsed, 3),
                "contacts_per_s": round(f64::from(args.n) / elapsed, 0),
                "mapper_only_s": round(mapper_s, 3),
                "envelope_only_s": round(envelope_s, 3),
                "map_stage_s": round(mapper_s + envelope_s, 3),
                "breakdown_means": "mapper_only_s: the same documents through the mapper plugin alone (wasm JSON parsing and mapping); envelope_only_s: the host's own parse of each document (versions, deletions, next link). Reading and mapping run on one thread while writing runs on another, so elapsed_s is bounded below by map_stage_s (their sum): the mapping stage bounds the import",
                "created": report.created,
                "problems": report.problems.len(),
                "duplicates": report.duplicates.len(),
                "places": summary.places,
                "active": summary.active,
                "peak_rss_mb": round(rss, 1),
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            })
        );
        Ok(())
    })
}

/// Loads `n` generated contacts straight into the directory (the mapper
/// is the import scenario's subject, not this one's): the places and
/// groups through the mapper, the contacts as mapped records.
pub fn load(dir: &Directory, mapper: &mhero_broker::plugin::Plugin, n: u32) -> Result<()> {
    let reg = Registry::new(n);
    sync::import_document(dir, mapper, "ihris", "LR", &reg.places_bundle().to_string())?;
    let chunk = 20_000;
    for from in (0..n).step_by(chunk as usize) {
        let contacts = (from..(from + chunk).min(n))
            .map(|i| IncomingContact {
                resource: format!("Practitioner/P-{i}"),
                name: format!("Given{i} Family{}", i % 997),
                telecoms: vec![Telecom {
                    system: "phone".into(),
                    value: format!(
                        "{}{:07}",
                        if i % 2 == 0 { "077" } else { "088" },
                        i % 10_000_000
                    ),
                    use_: Some("mobile".into()),
                    rank: None,
                }],
                languages: vec![if i % 10 == 0 { "fr" } else { "en" }.into()],
                roles: vec![ROLES[reg.role_of(i)].0.into()],
                facilities: vec![format!("Location/F-{}", reg.facility_of(i))],
                organizations: vec!["Organization/MOH".into()],
                active: true,
                ..Default::default()
            })
            .collect();
        dir.import(
            "ihris",
            "LR",
            Incoming {
                contacts,
                ..Default::default()
            },
        )?;
    }
    sync::import_document(dir, mapper, "ihris", "LR", &reg.groups_bundle().to_string())?;
    Ok(())
}

pub fn select(args: &SelectArgs) -> Result<()> {
    if let Some(data_dir) = &args.measure {
        return measure(args, data_dir);
    }
    // Load in this process, then measure in a fresh one: loading a million
    // contacts (memtables, import batches) is not what a broker holds once
    // it has opened them.
    let (config, scratch, differs, load_s) = runtime()?.block_on(async {
        let (config, scratch) = config(args.dir.as_ref(), "sync")?;
        let bench = start(config, scratch, Default::default()).await?;
        let mapper = bench
            .broker
            .plugins()
            .require("ihris-practitioner", Kind::FhirMapper)?;
        let n = args.contacts;
        let loaded = Instant::now();
        {
            // Nothing may hold the store past the shutdown below.
            let dir = Arc::clone(bench.broker.directory());
            tokio::task::spawn_blocking(move || load(&dir, &mapper, n)).await??;
        }
        let load_s = loaded.elapsed().as_secs_f64();
        let config = bench.broker.config().clone();
        let differs = bench.differs.clone();
        let crate::dispatch::Bench {
            broker, _scratch, ..
        } = bench;
        broker.shutdown().await;
        anyhow::Ok((config, _scratch, differs, load_s))
    })?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "select",
            "--contacts",
            &args.contacts.to_string(),
            "--runs",
            &args.runs.to_string(),
        ])
        .arg("--measure")
        .arg(&config.data_dir)
        .args(["--load-s", &load_s.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "the measuring run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["differs_from_defaults"] = differs;
    println!("{v}");
    drop(scratch);
    Ok(())
}

fn measure(args: &SelectArgs, data_dir: &std::path::Path) -> Result<()> {
    runtime()?.block_on(async {
        let config = mhero_broker::Config {
            data_dir: data_dir.to_owned(),
            ..mhero_broker::Config::default()
        };
        let n = args.contacts;
        let opening = Instant::now();
        let broker = mhero_broker::Broker::open(config).await?;
        let open_s = opening.elapsed().as_secs_f64();
        let dir = Arc::clone(broker.directory());
        let rss_open = rss_mb();
        let selected = dir.count(THREE_TERMS, &[])?.selected;
        if selected == 0 {
            bail!("the selector selects nobody");
        }
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..args.runs {
            let t = Instant::now();
            let c = dir.count(THREE_TERMS, &["sms".into()])?;
            h.saturating_record(t.elapsed().as_micros().max(1) as u64);
            assert_eq!(c.selected, selected);
        }
        // Freeze the whole directory, as a national alert would.
        let mut freeze = Vec::new();
        for i in 0..5 {
            let d = Arc::clone(&dir);
            let t = Instant::now();
            let count = tokio::task::spawn_blocking(move || d.freeze(CampaignId(1_000_000 + i), "*"))
                .await??;
            freeze.push(t.elapsed().as_secs_f64() * 1e3);
            if count != n {
                bail!("froze {count} of {n}");
            }
        }
        freeze.sort_by(f64::total_cmp);
        let summary = dir.summary();
        let rss = peak_rss_mb();
        drop(dir);
        broker.shutdown().await;
        println!(
            "{}",
            json!({
                "scenario": "select",
                "contacts": n,
                "selector": THREE_TERMS,
                "selected": selected,
                "count_form": "count with the per-channel split for [sms] (what `mhero contacts count` answers)",
                "runs": args.runs,
                "count_p50_ms": round(h.value_at_quantile(0.5) as f64 / 1e3, 3),
                "count_p99_ms": round(h.value_at_quantile(0.99) as f64 / 1e3, 3),
                "freeze_selector": "*",
                "freeze_ms": round(freeze[freeze.len() / 2], 2),
                "freeze_means": "evaluate the selector, serialize the bitmap, one synced commit (median of 5)",
                "places": summary.places,
                "load_s": round(args.load_s, 1),
                "load_means": "places and groups through the mapper plugin, contacts as mapped records, 20,000 per synced commit (a separate process)",
                "open_s": round(open_s, 2),
                "rss_after_open_mb": round(rss_open, 1),
                "peak_rss_mb": round(rss, 1),
                "peak_rss_means": "a broker process that opened the store holding the 1M-contact directory (default config, plugins loaded), then ran the counts and freezes",
                "data_dir": data_dir.display().to_string(),
                "filesystem": fs_type(data_dir),
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            })
        );
        Ok(())
    })
}

/// Loads a directory of `n` for the fan-out scenario.
pub async fn load_for_fanout(broker: &mhero_broker::Broker, n: u32) -> Result<()> {
    let mapper = broker
        .plugins()
        .require("ihris-practitioner", Kind::FhirMapper)
        .context("the mapper")?;
    let dir = Arc::clone(broker.directory());
    tokio::task::spawn_blocking(move || load(&dir, &mapper, n)).await?
}
