//! `loadgen survey`: a three-question flash survey answered by simulated
//! workers: started over HTTP like an operator would, questions sent
//! through the sandbox gateway, every delivered question answered by the
//! gateway's simulated worker (`1`, `2` or `3`, at random) through the
//! webhook, each answer taken by the inbound pipeline (classified with the
//! question as context) and the next question sent.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::Broker;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct SurveyArgs {
    /// Workers in the generated directory, every one asked.
    #[arg(long, default_value_t = 100_000)]
    workers: u32,
    /// Parent folder of the scratch store (default: the system's temp dir).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn questionnaire() -> Value {
    json!({
        "resourceType": "Questionnaire",
        "id": "ors-check",
        "status": "active",
        "title": "ORS stock check",
        "item": [
            {"linkId": "has-ors", "type": "boolean", "text": "Do you have ORS in stock?"},
            {"linkId": "packets", "type": "integer", "text": "How many packets?",
             "enableWhen": [{"question": "has-ors", "operator": "=", "answerBoolean": true}]},
            {"linkId": "problem", "type": "choice", "text": "Main problem this week?",
             "answerOption": [
                 {"valueCoding": {"code": "stockout", "display": "Stock-out"}},
                 {"valueCoding": {"code": "transport", "display": "Transport"}},
                 {"valueCoding": {"code": "none", "display": "None"}}
             ]}
        ]
    })
}

pub fn run(args: &SurveyArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be > 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn bench(args: &SurveyArgs) -> Result<()> {
    // `mhero serve`'s defaults; the sandbox's simulated workers answer
    // every message they get (the only change, and what the run needs).
    let (_scratch, mut config) = super::api::server_config(args.data_dir.as_ref(), "sync")?;
    let channel = config
        .channels
        .get_mut("sandbox")
        .context("the sandbox channel")?;
    channel.sandbox.reply_percent = 100.0;
    channel.sandbox.replies = vec!["1".into(), "2".into(), "3".into()];
    let data_dir = config.data_dir.clone();
    let broker = Arc::new(Broker::open(config).await?);
    let mapper = broker
        .plugins()
        .get("ihris-practitioner")
        .context("the ihris-practitioner mapper is built in")?;
    let (directory, workers) = (Arc::clone(broker.directory()), args.workers);
    tokio::task::spawn_blocking(move || super::directory::load(&directory, &mapper, workers))
        .await??;

    let served = super::api::Served::start(&broker).await?;
    let (base, token) = (served.base.clone(), served.token.clone());
    let client = reqwest::Client::new();

    let started = Instant::now();
    let created: Value = client
        .post(format!("{base}/v1/surveys"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({"questionnaire": questionnaire(), "selector": "*"}).to_string())
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b))??;
    let create_s = started.elapsed().as_secs_f64();
    let id = created["id"].as_str().context("survey id")?.to_string();
    let sessions = created["sessions"].as_u64().context("sessions")?;

    // Poll the results as an operator's dashboard would, until every
    // worker has finished.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last_change = (Instant::now(), Value::Null);
    let (view, seen_ms) = loop {
        let view: Value = client
            .get(format!("{base}/v1/surveys/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b))??;
        let seen_ms = now_ms();
        if view["completed"].as_u64() == Some(sessions) {
            break (view, seen_ms);
        }
        if Instant::now() > deadline {
            bail!("not every worker finished in 30 minutes: {view}");
        }
        if view["questions"] != last_change.1 {
            last_change = (Instant::now(), view["questions"].clone());
        } else if last_change.0.elapsed() > Duration::from_secs(60) {
            bail!("nothing moved for a minute: {view}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    served.stop().await?;

    // Every answer the pipeline took, and when the last one arrived.
    let store = Arc::clone(broker.store());
    let (answers, replies, last_stored_ms) = tokio::task::spawn_blocking(move || {
        let (mut answers, mut replies, mut last) = (0u64, 0u64, 0u64);
        let mut after = 0;
        loop {
            let page = store.processed_inbound(after, 10_000)?;
            let Some(end) = page.last().map(|p| p.0) else {
                break;
            };
            for (_, m, r) in page {
                replies += 1;
                if r.route == "survey" {
                    answers += 1;
                    last = last.max(m.stored_ms);
                }
            }
            after = end;
        }
        anyhow::Ok((answers, replies, last))
    })
    .await??;
    let answered: u64 = view["questions"]
        .as_array()
        .map(|qs| qs.iter().filter_map(|q| q["answered"].as_u64()).sum())
        .unwrap_or(0);
    let out = json!({
        "scenario": "survey",
        "workers": args.workers,
        "sessions": sessions,
        "questions": 3,
        "create_s": round(create_s, 3),
        "elapsed_s": round(elapsed, 3),
        "answers": answers,
        "answers_per_s": round(answers as f64 / elapsed, 0),
        "answers_is": "replies a session took (an answer, or one it could not read and asked again)",
        "understood": answered,
        "understood_per_s": round(answered as f64 / elapsed, 0),
        "replies": replies,
        "aggregate_lag_ms": seen_ms.saturating_sub(last_stored_ms),
        "aggregate_lag_is": "from the last answer stored to a GET /v1/surveys/{id} (polled every 20 ms) showing every worker finished",
        "results": view["questions"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "path": "POST /v1/surveys over HTTP (the Questionnaire, selector `*`: sessions written, the first question sent as a high-lane campaign) → sandbox connector → the sandbox gateway, whose simulated worker answers each delivered message with 1, 2 or 3 at random through signed webhooks over the broker's webhook entry point → inbound pipeline (directory look-up, the session, the default classifier chain (keywords with the question as context, then stock-report), the answer, aggregate and session in one synced commit per page) → next question (or the re-ask of one not understood) as a campaign per page; `mhero serve`'s defaults throughout",
        "differs_from_defaults": {"sandbox.reply_percent": 100, "sandbox.replies": ["1", "2", "3"]},
        "elapsed_is": "from the POST to every worker finished; includes sending every question through the sandbox (receipt delay 200 ms) and the simulated workers' replies",
        "data_dir": data_dir.display().to_string(),
        "filesystem": fs_type(&data_dir),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    println!("{out}");
    Ok(())
}
