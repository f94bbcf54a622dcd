//! `mhero import`, `mhero sync` and `mhero contacts …`: the health-worker
//! directory from the command line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mhero_broker::directory::ImportReport;
use mhero_broker::plugin::Kind;
use mhero_broker::{Broker, Config};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A FHIR R4 JSON document (a Bundle or one resource), or a folder of
    /// them (`*.json`, in name order).
    path: PathBuf,
    /// The source the resources come from; a resource imported again from
    /// the same source updates its contact.
    #[arg(long, default_value = "import")]
    source: String,
    /// The mapper plugin.
    #[arg(long, default_value = "ihris-practitioner")]
    mapper: String,
    /// Country for phone numbers written without one (default:
    /// `dispatch.default_country`).
    #[arg(long)]
    country: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Only this source (default: every configured one).
    #[arg(long)]
    source: Option<String>,
    /// Print the reports as one JSON array, a report per source.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum ContactsCommand {
    /// How many a selector reaches, and on which channels.
    Count {
        /// `role:nurse AND location:Location/bong AND NOT group:retired`
        selector: String,
        /// Channels in preference order, comma-separated (`whatsapp,sms`).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// One contact: by number, phone number or resource
    /// (`Practitioner/123`, `ihris:Practitioner/123`).
    Show { id: String },
    /// The directory's figures: contacts, active, opted out, unreachable.
    Summary,
    /// Data quality: numbers shared by several contacts, active workers
    /// with no address, numbers and addresses a source gave that are
    /// unusable (what the registries should fix).
    Quality {
        /// Most entries listed per kind (the totals are whole).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

fn open(config: &Config) -> Result<(tokio::runtime::Runtime, Broker)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let broker = rt
        .block_on(Broker::open(config.clone()))
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    Ok((rt, broker))
}

fn print_report(r: &ImportReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "contacts: {} new, {} updated, {} merged with another source's, {} unchanged, {} removed; {} places, {} groups",
        r.created, r.updated, r.merged, r.unchanged, r.removed, r.places, r.groups
    );
    if !r.problems.is_empty() {
        println!("{} problems (the rest was imported):", r.problems.len());
        for p in &r.problems {
            let at = match (p.index, &p.resource) {
                (Some(i), Some(res)) => format!("entry {i} ({res})"),
                (Some(i), None) => format!("entry {i}"),
                (None, Some(res)) => res.clone(),
                (None, None) => "?".into(),
            };
            println!("  {at}: {}", p.message);
        }
    }
    if !r.duplicates.is_empty() {
        println!(
            "{} numbers shared by several records of one source:",
            r.duplicates.len()
        );
        for (phone, resources) in &r.duplicates {
            println!("  {phone}: {}", resources.join(", "));
        }
    }
    if !r.unreachable.is_empty() {
        println!(
            "{} active contacts with no usable address: {}",
            r.unreachable.len(),
            r.unreachable
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub fn import(config: &Config, args: &ImportArgs) -> Result<()> {
    let files = mhero_broker::directory::sync::documents(&args.path)?;
    if files.is_empty() {
        bail!("{} holds no .json files", args.path.display());
    }
    let (rt, broker) = open(config)?;
    let mapper = broker.plugins().require(&args.mapper, Kind::FhirMapper)?;
    let country = args
        .country
        .clone()
        .unwrap_or_else(|| config.dispatch.default_country.clone());
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} files  {msg}",
    )?);
    let started = Instant::now();
    let mut contacts = 0;
    let report = mhero_broker::directory::sync::import_path(
        broker.directory(),
        &mapper,
        &args.source,
        &country,
        &args.path,
        |_, r| {
            contacts += r.contacts();
            bar.inc(1);
            bar.set_message(format!("{contacts} contacts"));
        },
    );
    bar.finish_and_clear();
    let report = report?;
    rt.block_on(broker.shutdown());
    print_report(&report, args.json)?;
    if !args.json {
        println!(
            "{} contacts in {:.1} s",
            report.contacts(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub fn sync(config: &Config, args: &SyncArgs) -> Result<()> {
    let names: Vec<String> = match &args.source {
        Some(s) => vec![s.clone()],
        None => config.directory.sources.keys().cloned().collect(),
    };
    if names.is_empty() {
        bail!("no FHIR source is configured ([directory.sources.<name>] in the config)");
    }
    let (rt, broker) = open(config)?;
    let mut failed = false;
    let mut reports = Vec::new();
    for name in names {
        let syncer = broker.syncer(&name)?;
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        let b = bar.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let result = rt.block_on(syncer.sync(now, &move |e| {
            b.set_message(format!(
                "{name}: {} pages, {} contacts ({})",
                e.pages, e.contacts, e.resource_type
            ));
        }));
        bar.finish_and_clear();
        match result {
            Ok(r) => {
                if args.json {
                    reports.push(r);
                } else {
                    println!(
                        "{}: {} pass{}, {} pages, {} retried requests; next from {}",
                        r.source,
                        if r.full { "full" } else { "incremental" },
                        if r.resumed { " (resumed)" } else { "" },
                        r.pages,
                        r.requests_retried,
                        r.since.as_deref().unwrap_or("the start")
                    );
                    print_report(&r.import, false)?;
                }
            }
            Err(e) => {
                eprintln!("error: {e} (the next sync resumes where this one stopped)");
                failed = true;
            }
        }
    }
    rt.block_on(broker.shutdown());
    if args.json {
        // One document: the report of each source that completed.
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if failed {
        bail!("a sync failed");
    }
    Ok(())
}

pub fn contacts(config: &Config, command: &ContactsCommand) -> Result<()> {
    let (rt, broker) = open(config)?;
    let dir = broker.directory();
    let result = (|| -> Result<()> {
        match command {
            ContactsCommand::Count {
                selector,
                channels,
                json,
            } => {
                let started = Instant::now();
                let c = dir.count(selector, channels)?;
                let took = started.elapsed();
                if *json {
                    println!("{}", serde_json::to_string_pretty(&c)?);
                    return Ok(());
                }
                println!(
                    "{} contacts selected ({:.2} ms)",
                    c.selected,
                    took.as_secs_f64() * 1e3
                );
                for (channel, n) in &c.by_channel {
                    println!("  {n} first on {channel}");
                }
                println!(
                    "  {} with no address on {}",
                    c.unreachable,
                    if channels.is_empty() {
                        "any channel".to_string()
                    } else {
                        channels.join(", ")
                    }
                );
                for t in &c.unknown_terms {
                    println!("  note: {t} matches nothing the directory knows");
                }
                Ok(())
            }
            ContactsCommand::Show { id } => {
                let Some(c) = dir.find(id)? else {
                    bail!("no contact {id}");
                };
                println!("#{}  {}", c.number, c.name());
                println!("  phone:     {}", c.phone().unwrap_or("-"));
                for (kind, a) in c.addresses() {
                    println!("  {kind:<10} {a}");
                }
                println!("  language:  {}", c.language().unwrap_or("-"));
                println!("  roles:     {}", c.roles().join(", "));
                for f in c.facilities() {
                    let path: Vec<String> = dir
                        .ancestry(f)
                        .into_iter()
                        .map(|(id, name)| {
                            if name.is_empty() {
                                id
                            } else {
                                format!("{name} ({id})")
                            }
                        })
                        .collect();
                    println!("  facility:  {}", path.join(" → "));
                }
                if !c.organizations().is_empty() {
                    println!("  orgs:      {}", c.organizations().join(", "));
                }
                let groups = dir.groups_of(c.number);
                if !groups.is_empty() {
                    let g: Vec<String> = groups
                        .into_iter()
                        .map(|(id, n)| format!("{n} ({id})"))
                        .collect();
                    println!("  groups:    {}", g.join(", "));
                }
                println!(
                    "  state:     {}{}",
                    if c.active() { "active" } else { "inactive" },
                    c.opted_out
                        .as_ref()
                        .map(|o| format!(", opted out ({})", o.via))
                        .unwrap_or_default()
                );
                for p in &c.parts {
                    println!(
                        "  source:    {} {} version {} updated {}",
                        p.source,
                        p.resource,
                        p.version_id.as_deref().unwrap_or("-"),
                        p.last_updated.as_deref().unwrap_or("-")
                    );
                    for why in &p.problems {
                        println!("    problem: {why}");
                    }
                }
                Ok(())
            }
            ContactsCommand::Summary => {
                println!("{}", serde_json::to_string_pretty(&dir.summary())?);
                Ok(())
            }
            ContactsCommand::Quality { limit, json } => {
                let q = dir.quality(*limit)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&q)?);
                    return Ok(());
                }
                println!(
                    "{} numbers shared by several contacts",
                    q.shared_numbers_total
                );
                for (phone, who) in &q.shared_numbers {
                    println!("  {phone}: {}", who.join(", "));
                }
                println!("{} active contacts with no address", q.unreachable_total);
                for who in &q.unreachable {
                    println!("  {who}");
                }
                println!("{} contacts with unusable data", q.problems_total);
                for (who, what) in &q.problems {
                    println!("  {who}: {}", what.join("; "));
                }
                Ok(())
            }
        }
    })();
    rt.block_on(broker.shutdown());
    result
}
