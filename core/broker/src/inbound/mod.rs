//! What comes back: replies, reports and opt-outs from health workers.
//!
//! A webhook stores each inbound message durably before the gateway is
//! answered (see [`crate::channel::Webhooks`]); the [`Pipeline`] then reads
//! the stored messages in arrival order and, for each:
//!
//! 1. marks a **duplicate**: the same text from the same sender on the same
//!    channel within `dedup_window_s` (the gateway's own id already
//!    dropped a webhook sent twice);
//! 2. finds the **sender** in the directory by their address on the
//!    channel, else by phone number; an unknown sender is kept, flagged;
//! 3. finds what the message **answers**: the delivery last handed over to
//!    that address on that channel, within `reply_window_h`;
//! 4. runs the channel's **classifier chain** (wasm plugins, on plugin
//!    threads, a page of messages per call);
//! 5. **routes** it: a trigger word (`STOP`, `ARRET`, `PARAR`… opt-out,
//!    which the directory honours at once; `START`; `HELP`; `REPORT`,
//!    `STOCK`…) or the inbox; answers the sender where an answer is
//!    configured, as a high-lane campaign on the same channel;
//! 6. records the result with the pipeline's position in one batch, so a
//!    message is processed once even across a crash (its side effects at
//!    least once: an opt-out is applied again, harmlessly; an answer is
//!    keyed by the messages it answers, and a page that answers is marked
//!    first, so the page read again after a crash is the same one and its
//!    answers are not sent twice).
//!
//! Subscribers read the processed messages from their own positions: the
//! QUIC inbound stream, and integrators' webhooks ([`subscribers`]),
//! HMAC-signed, retried with backoff, set aside after the last attempt.

pub mod config;
pub mod keywords;
pub mod subscribers;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::{ChannelId, Lane};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};

pub use config::{InboundConfig, SubscriberConfig};
use keywords::Triggers;

use crate::audience::Recipient;
use crate::directory::{Contact, Directory, contact::OptOut};
use crate::dispatch::{AudienceSpec, CampaignSpec, Submitter};
use crate::error::Result;
use crate::plugin::PluginHost;
use crate::plugin::bindings::classifier_types::{AnswerType, Classification, ClassifyContext};
use crate::store::{Batch, InboundRecord, InboundResult, SentRef, Store};
use crate::workflows::lab::{Ack, LabResults};
use crate::workflows::reports::{self, Report, Reports};
use crate::workflows::survey::{self, Session, SurveyRecord};
use crate::workflows::{self, Surveys, Workflows};

/// Most messages processed in one step.
const PAGE: usize = 1000;
/// How long the pipeline waits for a wake-up before looking anyway.
const IDLE: Duration = Duration::from_secs(1);
/// How long it waits after a step failed (the store refused a write).
const AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Routes every message gets besides the configured actions.
pub mod route {
    pub const INBOX: &str = "inbox";
    pub const DUPLICATE: &str = "duplicate";
    pub const OPT_OUT: &str = "opt_out";
    pub const OPT_IN: &str = "opt_in";
    pub const HELP: &str = "help";
    /// An answer to the survey question the sender was asked.
    pub const SURVEY: &str = "survey";
    /// The first reply to a lab result: its acknowledgement.
    pub const LAB_ACK: &str = "lab_ack";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    channel: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SubscriberLabels {
    pub subscriber: String,
    pub outcome: &'static str,
}

/// `mhero_inbound_*`.
#[derive(Clone, Debug, Default)]
pub struct InboundMetrics {
    processed: Family<RouteLabels, Counter>,
    unknown_senders: Counter,
    problems: Counter,
    position: Gauge,
    reports: Counter,
    alerts: Counter,
    pub(crate) subscriber_calls: Family<SubscriberLabels, Counter>,
    pub(crate) subscriber_undelivered: Family<SubscriberLabels, Counter>,
}

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "processed",
            "Inbound messages processed, by channel and route",
            m.processed.clone(),
        );
        registry.register(
            "unknown_senders",
            "Inbound messages from senders not in the directory",
            m.unknown_senders.clone(),
        );
        registry.register(
            "problems",
            "Steps that could not run for an inbound message (a classifier that failed, an answer not sent)",
            m.problems.clone(),
        );
        registry.register(
            "position",
            "Sequence number of the last inbound message processed",
            m.position.clone(),
        );
        registry.register(
            "reports",
            "Structured reports counted (stock, cases)",
            m.reports.clone(),
        );
        registry.register(
            "report_alerts",
            "Alerts sent to districts from reports: stock-outs, low stock, watched cases",
            m.alerts.clone(),
        );
        registry.register(
            "subscriber_calls",
            "Calls to integrators' inbound webhooks, by outcome",
            m.subscriber_calls.clone(),
        );
        registry.register(
            "subscriber_undelivered",
            "Inbound messages a subscriber never took after every attempt",
            m.subscriber_undelivered.clone(),
        );
        m
    }
}

/// One message on its way through a step.
struct Work {
    seq: u64,
    record: InboundRecord,
    channel: String,
    contact: Option<Contact>,
    /// The survey question the sender was asked and has not answered.
    session: Option<(Arc<SurveyRecord>, Session)>,
    /// Its duplicate-window key.
    digest: u64,
    result: InboundResult,
}

/// The inbound pipeline. [`Pipeline::run`] processes until shutdown;
/// [`Pipeline::step`] processes one page.
pub struct Pipeline {
    store: Arc<Store>,
    directory: Arc<Directory>,
    plugins: Arc<PluginHost>,
    surveys: Arc<Surveys>,
    reports: Arc<Reports>,
    courses: Arc<workflows::Courses>,
    submitter: Submitter,
    channels: BTreeMap<ChannelId, String>,
    config: InboundConfig,
    triggers: Triggers,
    metrics: InboundMetrics,
    arrived: Arc<Notify>,
    processed: watch::Sender<u64>,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        directory: Arc<Directory>,
        plugins: Arc<PluginHost>,
        workflows: Workflows,
        submitter: Submitter,
        channels: BTreeMap<ChannelId, String>,
        config: InboundConfig,
        metrics: InboundMetrics,
        arrived: Arc<Notify>,
    ) -> Result<Self> {
        for name in channels
            .values()
            .flat_map(|c| config.chain(c))
            .chain(&config.classifiers)
        {
            plugins.require(name, crate::plugin::Kind::Classifier)?;
        }
        let position = store.inbound_processed()?;
        metrics.position.set(position as i64);
        Ok(Self {
            triggers: Triggers::new(&config.keywords),
            store,
            directory,
            plugins,
            surveys: workflows.surveys,
            reports: workflows.reports,
            courses: workflows.courses,
            submitter,
            channels,
            config,
            metrics,
            arrived,
            processed: watch::channel(position).0,
        })
    }

    /// The last message processed, updated after each step's commit.
    pub fn processed(&self) -> watch::Receiver<u64> {
        self.processed.subscribe()
    }

    /// Processes until `shutdown` turns true, waking when messages arrive.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut checked = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Survey questions that went unanswered too long, between
            // pages: the same task moves every session on.
            if checked.elapsed() >= IDLE {
                checked = tokio::time::Instant::now();
                if let Err(e) = self.timeouts().await {
                    tracing::error!(error = %e, "Checking survey timeouts and course steps failed; the next check retries.");
                }
            }
            let wait = match self.step().await {
                Ok(n) if n >= PAGE => continue,
                Ok(_) => IDLE,
                Err(e) => {
                    tracing::error!(error = %e, "Inbound processing failed; it resumes from the last message it recorded.");
                    AFTER_FAILURE
                }
            };
            tokio::select! {
                _ = self.arrived.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Moves on the survey sessions whose question timed out, and the
    /// course steps that are due.
    pub async fn timeouts(self: &Arc<Self>) -> Result<()> {
        let now = self.store.now_ms();
        let surveys = Arc::clone(&self.surveys);
        let courses = Arc::clone(&self.courses);
        let engine = Arc::clone(self.store.engine());
        let (mut out, lessons) = blocking(move || {
            let survey::Moved {
                mut batch,
                out,
                ended,
            } = surveys.due(now)?;
            // A course's quiz whose last question timed out: scored now,
            // not at the course's next look.
            batch.append(courses.nudge(&ended, now)?);
            if !batch.is_empty() {
                engine.write(batch)?;
            }
            let (batch, due) = courses.due(now)?;
            if !batch.is_empty() {
                engine.write(batch)?;
            }
            let mut out = out;
            out.extend(due.questions);
            Ok((out, due.lessons))
        })
        .await?;
        if !out.is_empty() {
            for p in workflows::send(&self.surveys, &self.submitter, std::mem::take(&mut out)).await
            {
                tracing::warn!(problem = %p, "Survey and quiz questions not sent.");
            }
        }
        if !lessons.is_empty() {
            for p in workflows::send_lessons(&self.courses, &self.submitter, lessons).await {
                tracing::warn!(problem = %p, "Course lessons not sent.");
            }
        }
        Ok(())
    }

    /// Processes the next page of stored messages; how many.
    pub async fn step(self: &Arc<Self>) -> Result<usize> {
        let this = Arc::clone(self);
        let mut work = blocking(move || this.read_page()).await?;
        if work.is_empty() {
            return Ok(0);
        }
        self.classify(&mut work).await;
        for w in &mut work {
            self.route(w);
        }
        let with = self.act(&mut work).await?;
        let n = work.len();
        let last = work.last().map_or(0, |w| w.seq);
        let this = Arc::clone(self);
        let pending = blocking(move || this.record(work, with)).await?;
        pending.await?;
        self.metrics.position.set(last as i64);
        self.processed.send_replace(last);
        Ok(n)
    }

    /// Reads the next page and does the store and directory look-ups:
    /// duplicates, senders, what each answers. On a blocking thread.
    fn read_page(&self) -> Result<Vec<Work>> {
        let after = self.store.inbound_processed()?;
        let mut page = self.store.inbound(after, PAGE)?;
        // A page answered before a crash, not committed: the same page
        // again, whatever arrived since, so its answers make the same keys.
        let marked = self.store.inbound_page_mark()?;
        if marked > after {
            page.retain(|(seq, _)| *seq <= marked);
        }
        let window_ms = self.config.dedup_window_s * 1000;
        let reply_ms = self.config.reply_window_h * 3_600_000;
        // Digest → (seq, stored ms) of the messages of this page.
        let mut in_page: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(page.len());
        for (seq, record) in page {
            let channel = self
                .channels
                .get(&record.channel)
                .cloned()
                .unwrap_or_else(|| format!("channel-{}", record.channel.0));
            let contact = self.directory.by_address(&channel, &record.from)?;
            let reply_to = self
                .answered(&record, &channel, contact.as_ref())?
                .filter(|s| s.at_ms <= record.stored_ms && record.stored_ms - s.at_ms <= reply_ms);
            // The same text again is a duplicate only while it answers the
            // same message: "1" to a survey's next question is an answer.
            let digest = keywords::digest(
                record.channel.0,
                &record.from,
                &record.text,
                reply_to.as_ref().map(|s| s.delivery),
            );
            let earlier = match in_page.get(&digest) {
                Some(pair) => Some(*pair),
                None => self.store.recent_inbound(digest)?,
            };
            let duplicate_of = earlier
                .filter(|(s, ms)| {
                    window_ms > 0 && *s != seq && record.stored_ms.saturating_sub(*ms) <= window_ms
                })
                .map(|(s, _)| s);
            if duplicate_of.is_none() {
                in_page.insert(digest, (seq, record.stored_ms));
            }
            let session = match (&contact, duplicate_of) {
                (Some(c), None) => self.surveys.session_of(c.number, record.stored_ms)?,
                _ => None,
            };
            let result = InboundResult {
                contact: contact.as_ref().map(|c| c.number),
                duplicate_of,
                reply_to,
                label: "unknown".into(),
                confidence: 0.0,
                fields: Vec::new(),
                classifier: None,
                language: None,
                route: route::INBOX.into(),
                keyword: None,
                problems: Vec::new(),
                processed_ms: 0,
            };
            out.push(Work {
                seq,
                record,
                channel,
                contact,
                session,
                digest,
                result,
            });
        }
        Ok(out)
    }

    /// The delivery last handed over to the sender on this channel: to the
    /// address the directory has for them there, else the address the
    /// message came from (`231…` or `+231…`).
    fn answered(
        &self,
        record: &InboundRecord,
        channel: &str,
        contact: Option<&Contact>,
    ) -> Result<Option<SentRef>> {
        let mut addresses = Vec::new();
        if let Some(c) = contact
            && let Some(a) = c.recipient().address(channel)
        {
            addresses.push(a.to_string());
        }
        let from = record.from.trim();
        addresses.push(from.to_string());
        if from.bytes().all(|b| b.is_ascii_digit()) && !from.is_empty() {
            addresses.push(format!("+{from}"));
        }
        addresses.dedup();
        let mut best: Option<SentRef> = None;
        for a in addresses {
            if let Some(s) = self.store.last_sent(record.channel, &a)?
                && best.as_ref().is_none_or(|b| s.at_ms > b.at_ms)
            {
                best = Some(s);
            }
        }
        Ok(best)
    }

    /// Runs each message (not a duplicate) through its channel's chain:
    /// one plugin call per classifier per page, on a plugin thread.
    async fn classify(&self, work: &mut [Work]) {
        let mut chains: BTreeMap<&[String], Vec<usize>> = BTreeMap::new();
        for (i, w) in work.iter().enumerate() {
            if w.result.duplicate_of.is_none() {
                chains
                    .entry(self.config.chain(&w.channel))
                    .or_default()
                    .push(i);
            }
        }
        let chains: Vec<(Vec<String>, Vec<usize>)> =
            chains.into_iter().map(|(c, is)| (c.to_vec(), is)).collect();
        for (chain, indexes) in chains {
            for name in chain {
                let Some(plugin) = self.plugins.get(&name) else {
                    continue;
                };
                let hints: Vec<Option<String>> = indexes
                    .iter()
                    .map(|&i| {
                        let w = &work[i];
                        match &w.session {
                            Some((_, s)) => s.language.clone(),
                            None => w.contact.as_ref()?.language().map(str::to_string),
                        }
                    })
                    .collect();
                let inputs: Vec<(String, ClassifyContext)> = indexes
                    .iter()
                    .map(|&i| {
                        let w = &work[i];
                        let hint = w
                            .result
                            .language
                            .clone()
                            .or_else(|| w.contact.as_ref()?.language().map(str::to_string));
                        let context = match &w.session {
                            Some((survey, session)) => Surveys::context(survey, session),
                            None => ClassifyContext {
                                expected: AnswerType::FreeText,
                                choices: Vec::new(),
                                language_hint: hint,
                            },
                        };
                        (w.record.text.clone(), context)
                    })
                    .collect();
                let outputs = plugin
                    .offload(move |p| {
                        Ok(inputs
                            .iter()
                            .map(|(text, context)| p.classify(text, context))
                            .collect::<Vec<_>>())
                    })
                    .await;
                let outputs = match outputs {
                    Ok(o) => o,
                    Err(e) => {
                        for &i in &indexes {
                            work[i]
                                .result
                                .problems
                                .push(format!("classifier {name}: {e}"));
                        }
                        continue;
                    }
                };
                for ((&i, out), hint) in indexes.iter().zip(outputs).zip(&hints) {
                    let r = &mut work[i].result;
                    match out {
                        Ok(c) => self.take(r, &name, c, hint.as_deref()),
                        Err(e) => r.problems.push(format!("classifier {name}: {e}")),
                    }
                }
            }
        }
    }

    /// Keeps what a classifier said where nothing earlier in the chain was
    /// sure: its label if it is sure, its language if none was found yet,
    /// or if the one found only repeated the hint it was given (a
    /// classifier that detects languages, `language`, then prevails). A
    /// `language` label says only that: it is not kept as the label.
    fn take(&self, r: &mut InboundResult, name: &str, c: Classification, hint: Option<&str>) {
        match (r.language.as_deref(), c.language.as_deref()) {
            (None, Some(l)) => r.language = Some(l.to_string()),
            (Some(current), Some(l)) if Some(current) == hint && Some(l) != hint => {
                r.language = Some(l.to_string());
            }
            _ => {}
        }
        if r.classifier.is_none()
            && c.label != "unknown"
            && c.label != "language"
            && c.confidence >= self.config.min_confidence
        {
            r.label = c.label;
            r.confidence = c.confidence;
            r.fields = c.fields.into_iter().map(|f| (f.name, f.value)).collect();
            r.classifier = Some(name.to_string());
        }
    }

    /// Picks the message's route.
    fn route(&self, w: &mut Work) {
        if w.result.duplicate_of.is_some() {
            w.result.route = route::DUPLICATE.into();
            return;
        }
        let trigger = self.triggers.matching(&w.record.text);
        // An open survey question takes the answer; opting out, back in
        // and asking for help work whatever was asked.
        let always =
            trigger.is_some_and(|(a, _)| matches!(a, route::OPT_OUT | route::OPT_IN | route::HELP));
        if w.session.is_some() && !always {
            w.result.route = route::SURVEY.into();
            return;
        }
        if let Some((action, word)) = trigger {
            w.result.route = action.to_string();
            w.result.keyword = Some(word.to_string());
        }
    }

    /// Does what routes ask: survey answers (their writes are returned,
    /// to commit with the results), opt-outs and opt-ins in the directory,
    /// answers to the senders.
    async fn act(&self, work: &mut [Work]) -> Result<Batch> {
        let now = self.store.now_ms();
        let mut with = self.take_survey_answers(work, now).await?;
        with.append(self.take_lab_acks(work).await?);
        with.append(self.take_reports(work, now).await?);
        // Directory changes, on a blocking thread.
        let changes: Vec<(usize, u32, Option<OptOut>)> = work
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let c = w.contact.as_ref()?;
                match w.result.route.as_str() {
                    route::OPT_OUT if c.opted_out.is_none() => Some((
                        i,
                        c.number,
                        Some(OptOut {
                            at_ms: now,
                            via: format!(
                                "{} by {}",
                                w.result.keyword.as_deref().unwrap_or("opt-out"),
                                w.channel
                            ),
                        }),
                    )),
                    route::OPT_IN if c.opted_out.is_some() => Some((i, c.number, None)),
                    _ => None,
                }
            })
            .collect();
        for w in work.iter_mut() {
            if w.contact.is_none()
                && matches!(w.result.route.as_str(), route::OPT_OUT | route::OPT_IN)
            {
                w.result.problems.push(
                    "the sender is not in the directory: nothing to opt out or in (explicit-recipient campaigns still reach this address)".into(),
                );
            }
        }
        if !changes.is_empty() {
            let directory = Arc::clone(&self.directory);
            let plan: Vec<(u32, Option<OptOut>)> =
                changes.iter().map(|(_, n, o)| (*n, o.clone())).collect();
            let done = blocking(move || {
                Ok(plan
                    .into_iter()
                    .map(|(n, o)| directory.set_opted_out(n, o).map_err(|e| e.to_string()))
                    .collect::<Vec<_>>())
            })
            .await;
            for (k, (i, _, _)) in changes.iter().enumerate() {
                let failed = match &done {
                    Ok(results) => results[k].clone().err(),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = failed {
                    work[*i].result.problems.push(format!("directory: {e}"));
                }
            }
        }
        // Answers: one high-lane campaign per channel and action.
        let mut answers: BTreeMap<(String, String), Vec<(usize, Recipient)>> = BTreeMap::new();
        for (i, w) in work.iter().enumerate() {
            if !self.config.answers.contains_key(&w.result.route) {
                continue;
            }
            let language = w
                .result
                .language
                .clone()
                .or_else(|| w.contact.as_ref()?.language().map(str::to_string));
            let recipient = Recipient {
                phone: None,
                addresses: [(w.channel.clone(), w.record.from.trim().to_string())].into(),
                not_on: Vec::new(),
                language,
            };
            answers
                .entry((w.channel.clone(), w.result.route.clone()))
                .or_default()
                .push((i, recipient));
        }
        if !answers.is_empty() {
            let last = work.last().map_or(0, |w| w.seq);
            self.store.mark_inbound_page(last).await?;
        }
        for ((channel, action), recipients) in answers {
            let (indexes, list): (Vec<usize>, Vec<Recipient>) = recipients.into_iter().unzip();
            // Keyed by the messages it answers: a page processed again
            // after a crash (before its results were committed) is the
            // page marked above, and answers them once.
            let once = crate::dispatch::Once {
                scope: "inbound-answer",
                field: "answer",
                key: answer_key(&channel, &action, indexes.iter().map(|&i| work[i].seq)),
                request: [0; 32],
            };
            let spec = CampaignSpec {
                name: format!("answer: {action} ({channel})"),
                lane: Lane::High,
                body: self.config.answers[&action].clone(),
                channels: vec![channel.clone()],
                audience: AudienceSpec::Recipients(list),
                expires_at_ms: Some(now + 24 * 3_600_000),
                start_at_ms: None,
            };
            match self.submitter.answer_once(spec, once).await {
                Ok(s) => {
                    for r in s.rejected {
                        work[indexes[r.index]]
                            .result
                            .problems
                            .push(format!("answer not sent: {}", r.reason));
                    }
                }
                Err(e) => {
                    tracing::warn!(channel, action, error = %e, "Cannot answer inbound messages.");
                    for i in indexes {
                        work[i]
                            .result
                            .problems
                            .push(format!("answer not sent: {e}"));
                    }
                }
            }
        }
        Ok(with)
    }

    /// The first reply to a lab result (not a trigger, not a survey
    /// answer) is its acknowledgement. Returns the writes.
    async fn take_lab_acks(&self, work: &mut [Work]) -> Result<Batch> {
        let candidates: Vec<(usize, u64, Ack)> = work
            .iter()
            .enumerate()
            .filter(|(_, w)| w.result.route == route::INBOX && w.result.duplicate_of.is_none())
            .filter_map(|(i, w)| {
                let sent = w.result.reply_to.as_ref()?;
                Some((
                    i,
                    sent.delivery.campaign.0,
                    Ack {
                        seq: w.seq,
                        text: w.record.text.clone(),
                        at_ms: w.record.stored_ms,
                        contact: w.result.contact,
                    },
                ))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(Batch::new());
        }
        let lab = LabResults::new(Arc::clone(self.store.engine()));
        let (batch, taken) = blocking(move || {
            let mut batch = Batch::new();
            let mut taken = Vec::new();
            let mut done = std::collections::BTreeSet::new();
            for (i, campaign, ack) in candidates {
                if done.contains(&campaign) {
                    continue;
                }
                if lab.acknowledge(campaign, ack, &mut batch)? {
                    done.insert(campaign);
                    taken.push(i);
                }
            }
            Ok((batch, taken))
        })
        .await?;
        for i in taken {
            work[i].result.route = route::LAB_ACK.into();
        }
        Ok(batch)
    }

    /// Reports (a message whose trigger word is a report kind, which a
    /// classifier read as one) update the facility's figures; the alerts they raise
    /// go to the district. Returns the writes.
    async fn take_reports(&self, work: &mut [Work], now: u64) -> Result<Batch> {
        let mut taken = Vec::new();
        let mut reporters = HashMap::new();
        for w in work.iter_mut() {
            let r = &mut w.result;
            if r.duplicate_of.is_some() || self.reports.tally(&r.route).is_none() {
                continue;
            }
            if r.label != r.route {
                r.problems.push(format!(
                    "report not counted: no classifier read it as a {} report (label {:?})",
                    r.route, r.label
                ));
                continue;
            }
            let items = reports::items(&r.fields);
            let Some(c) = &w.contact else {
                r.problems.push(
                    "report not counted: the sender is not in the directory, so its facility is unknown".into(),
                );
                continue;
            };
            let Some(facility) = c.facilities().first().map(|f| f.to_string()) else {
                r.problems
                    .push("report not counted: the sender has no facility in the directory".into());
                continue;
            };
            if items.is_empty() {
                r.problems
                    .push("report not counted: no item with a count was read".into());
                continue;
            }
            reporters.insert(w.seq, c.name().to_string());
            taken.push(Report {
                seq: w.seq,
                kind: r.label.clone(),
                contact: c.number,
                source: c.parts.first().map(|p| p.resource.clone()),
                facility,
                items,
                at_ms: w.record.stored_ms,
                channel: w.channel.clone(),
            });
        }
        if taken.is_empty() {
            return Ok(Batch::new());
        }
        self.metrics.reports.inc_by(taken.len() as u64);
        let this = Arc::clone(&self.reports);
        let (batch, alerts) = blocking(move || Ok(this.record(taken))).await?;
        let channels = if self.reports.config().channels.is_empty() {
            self.channels.values().cloned().collect()
        } else {
            self.reports.config().channels.clone()
        };
        for alert in alerts {
            let reporter = reporters
                .get(&alert.report.seq)
                .cloned()
                .unwrap_or_default();
            let Some(spec) = self.reports.alert_campaign(
                &self.directory,
                &alert,
                &reporter,
                channels.clone(),
                now,
            ) else {
                continue;
            };
            // Keyed by the report's message: a page processed again after
            // a crash (before its results were committed) alerts once.
            let once = crate::dispatch::Once {
                scope: "report-alert",
                field: "report",
                key: alert.report.seq.to_string(),
                request: [0; 32],
            };
            let problem = match self.submitter.submit_once(spec, once).await {
                Ok(s) if s.accepted == 0 => Some(format!(
                    "alert not sent: nobody matches reports.notify ({}) in the facility's {}",
                    self.reports.config().notify,
                    self.reports.config().alert_level
                )),
                Ok(_) => None,
                Err(e) => Some(format!("alert not sent: {e}")),
            };
            if let Some(p) = problem {
                tracing::warn!(report = alert.report.seq, problem = %p, "Report alert not sent.");
                if let Some(w) = work.iter_mut().find(|w| w.seq == alert.report.seq) {
                    w.result.problems.push(p);
                }
            } else {
                self.metrics.alerts.inc();
            }
        }
        Ok(batch)
    }

    /// Survey answers move their sessions on; opt-outs end them. Returns
    /// the session writes; sends the next questions.
    async fn take_survey_answers(&self, work: &mut [Work], now: u64) -> Result<Batch> {
        let answers: Vec<usize> = (0..work.len())
            .filter(|&i| work[i].result.route == route::SURVEY)
            .collect();
        let stopped: Vec<u32> = work
            .iter()
            .filter(|w| w.session.is_some() && w.result.route == route::OPT_OUT)
            .filter_map(|w| w.result.contact)
            .collect();
        if answers.is_empty() && stopped.is_empty() {
            return Ok(Batch::new());
        }
        let input: Vec<_> = answers
            .iter()
            .map(|&i| {
                let w = &work[i];
                survey::Reply {
                    contact: w.result.contact.expect("a session has a contact"),
                    text: w.record.text.clone(),
                    label: w.result.label.clone(),
                    fields: w.result.fields.clone(),
                    language: w.result.language.clone(),
                }
            })
            .collect();
        let contacts: Vec<u32> = input.iter().map(|r| r.contact).collect();
        let surveys = Arc::clone(&self.surveys);
        let courses = Arc::clone(&self.courses);
        let (batch, out, taken) = blocking(move || {
            let (mut batch, out, taken) = surveys.answer(input, now)?;
            let (stop, stopped) = surveys.stop(&stopped, now)?;
            batch.append(stop);
            // A course's quiz answered or stopped: the course looks at once.
            let answered: Vec<(u64, u32)> = taken
                .iter()
                .zip(&contacts)
                .filter_map(|(t, &c)| Some((t.as_ref()?.survey, c)))
                .chain(stopped)
                .collect();
            batch.append(courses.nudge(&answered, now)?);
            Ok((batch, out, taken))
        })
        .await?;
        for (&i, t) in answers.iter().zip(taken) {
            let r = &mut work[i].result;
            match t {
                Some(t) => {
                    r.fields.push(("survey".into(), format!("s{}", t.survey)));
                    r.fields.push(("question".into(), t.question));
                    match t.outcome {
                        Ok(answer) => r.fields.push(("answer".into(), answer)),
                        Err(why) => r.problems.push(why),
                    }
                }
                // The session ended earlier in this page.
                None => r.route = route::INBOX.into(),
            }
        }
        for p in workflows::send(&self.surveys, &self.submitter, out).await {
            if let Some(&i) = answers.first() {
                work[i].result.problems.push(p);
            }
        }
        Ok(batch)
    }

    /// Records the results and the new position (one batch). On a
    /// blocking thread.
    fn record(&self, work: Vec<Work>, with: Batch) -> Result<crate::store::Pending<()>> {
        let now = self.store.now_ms();
        let window_ms = self.config.dedup_window_s * 1000;
        let mut recent: Vec<(u64, u64, u64, Option<u64>)> = Vec::new();
        let mut results = Vec::with_capacity(work.len());
        let mut by_digest: HashMap<u64, usize> = HashMap::new();
        for mut w in work {
            if window_ms > 0 && w.result.duplicate_of.is_none() {
                let digest = w.digest;
                match by_digest.get(&digest) {
                    // A later message with the same digest in this page
                    // (after the window) replaces the earlier entry.
                    Some(&k) => {
                        recent[k].1 = w.seq;
                        recent[k].2 = w.record.stored_ms;
                    }
                    None => {
                        let earlier = self.store.recent_inbound(digest)?.map(|(_, ms)| ms);
                        by_digest.insert(digest, recent.len());
                        recent.push((digest, w.seq, w.record.stored_ms, earlier));
                    }
                }
            }
            w.result.processed_ms = now;
            self.metrics
                .processed
                .get_or_create(&RouteLabels {
                    channel: w.channel.clone(),
                    route: w.result.route.clone(),
                })
                .inc();
            if w.result.contact.is_none() {
                self.metrics.unknown_senders.inc();
            }
            if !w.result.problems.is_empty() {
                self.metrics.problems.inc();
            }
            results.push((w.seq, w.result));
        }
        self.store
            .finish_inbound(results, recent, now.saturating_sub(window_ms), with)
            .map_err(Into::into)
    }
}

/// Runs store and directory work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::error::Error::Internal(format!("inbound step stopped: {e}")))?
}

/// An inbound message as the API, the QUIC stream and subscribers see it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct InboundEvent {
    /// Its place in arrival order: page with `after`.
    pub seq: u64,
    pub channel: String,
    /// The sender's address on the channel (E.164 for SMS).
    pub from: String,
    pub text: String,
    /// The gateway's id of the message, if it gave one.
    pub external_id: Option<String>,
    /// When the gateway says it arrived (ms), if it says.
    pub received_ms: Option<u64>,
    /// When the broker stored it (ms).
    pub stored_ms: u64,
    /// What the pipeline made of it; absent until it has been processed.
    pub processed: Option<Processed>,
}

/// What the inbound pipeline made of a message.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Processed {
    /// `inbox`, `duplicate`, or a trigger's action (`opt_out`, `opt_in`,
    /// `help`, `report`, `stock`…).
    pub route: String,
    /// The trigger word, as written.
    pub keyword: Option<String>,
    /// The sender's directory number (`GET /v1/contacts/{number}`); absent
    /// for a sender the directory does not know.
    pub contact: Option<u32>,
    /// The message (seq) this one repeats.
    pub duplicate_of: Option<u64>,
    /// The delivery it answers: what was last handed over to the sender on
    /// this channel (`campaign-index`), its campaign, and when.
    pub reply_to: Option<String>,
    pub reply_to_campaign: Option<u64>,
    pub reply_to_sent_ms: Option<u64>,
    /// The classifier chain's verdict (`unknown` when none was sure).
    pub label: String,
    pub confidence: f32,
    pub fields: BTreeMap<String, String>,
    /// The plugin whose label was kept.
    pub classifier: Option<String>,
    /// BCP 47, detected in the text.
    pub language: Option<String>,
    /// Steps that could not run, with why.
    pub problems: Vec<String>,
    pub processed_ms: u64,
}

impl InboundEvent {
    pub fn new(
        seq: u64,
        record: InboundRecord,
        result: Option<InboundResult>,
        channel: String,
    ) -> Self {
        Self {
            seq,
            channel,
            from: record.from,
            text: record.text,
            external_id: record.external_id,
            received_ms: record.received_ms,
            stored_ms: record.stored_ms,
            processed: result.map(|r| Processed {
                route: r.route,
                keyword: r.keyword,
                contact: r.contact,
                duplicate_of: r.duplicate_of,
                reply_to: r.reply_to.as_ref().map(|s| s.delivery.to_string()),
                reply_to_campaign: r.reply_to.as_ref().map(|s| s.delivery.campaign.0),
                reply_to_sent_ms: r.reply_to.as_ref().map(|s| s.at_ms),
                label: r.label,
                confidence: r.confidence,
                fields: r.fields.into_iter().collect(),
                classifier: r.classifier,
                language: r.language,
                problems: r.problems,
                processed_ms: r.processed_ms,
            }),
        }
    }
}

/// The idempotency key of an answer on `channel` for `action` to the
/// messages `seqs` (in page order): the first and last of them, how many,
/// and a digest of the channel and action (names an operator chose, in
/// any script; a key is visible ASCII).
fn answer_key(channel: &str, action: &str, seqs: impl Iterator<Item = u64>) -> String {
    use sha2::Digest as _;
    let (mut first, mut last, mut n) = (0, 0, 0u64);
    for seq in seqs {
        if n == 0 {
            first = seq;
        }
        last = seq;
        n += 1;
    }
    let digest = sha2::Sha256::new()
        .chain_update(channel)
        .chain_update([0])
        .chain_update(action)
        .finalize();
    let tag = crate::store::hex(&digest[..8]);
    format!("{first}-{last}:{n}:{tag}")
}
