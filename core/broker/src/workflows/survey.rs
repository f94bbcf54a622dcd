//! Flash surveys: a Questionnaire sent one question at a time to every
//! worker a selector names, each worker's answers kept in a session that
//! survives restarts, live aggregates.
//!
//! State (the `workflows` key space):
//!
//! ```text
//! N                        next survey id
//! S | survey               the survey (questions, audience, timing)
//! s | survey | contact     one worker's session: where they are, answers
//! A | contact              the survey whose question the worker was last asked
//! g | survey               aggregate: sessions by state, answers per question
//! t | due ms | survey | contact   when the question asked times out
//! ```
//!
//! Only the inbound pipeline's task changes sessions and aggregates after
//! a survey starts (answers, and timeouts it checks between pages), so
//! their read-modify-write needs no lock; a survey's creation writes them
//! before its first question leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use mhero_proto::Lane;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::questionnaire::{Answer, Kind, Parsed, Question};
use super::{bad, due_key, key, member_key};
use crate::audience::Recipient;
use crate::directory::Directory;
use crate::dispatch::Body;
use crate::error::{Error, Result};
use crate::plugin::bindings::classifier_types::{AnswerType, ClassifyContext};
use crate::store::{Batch, Cf, Engine, Versioned, decode_value, encode};

const NEXT: &[u8] = b"N";
const SURVEY: u8 = b'S';
const SESSION: u8 = b's';
const ACTIVE: u8 = b'A';
const AGGREGATE: u8 = b'g';
const TIMEOUT: u8 = b't';

/// Replaced, in a question's text, by the worker's facility.
pub const FACILITY: &str = "{facility}";

/// Longest free-text answer kept (characters).
const MAX_TEXT_ANSWER: usize = 1000;
/// Most timed-out questions handled per check.
const TIMEOUTS_PER_CHECK: usize = 5000;

/// A survey as asked for.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SurveySpec {
    /// A FHIR R4 Questionnaire (JSON).
    #[schema(value_type = Object)]
    pub questionnaire: serde_json::Value,
    /// Who is asked: a directory selector (`role:nurse AND location:bong`).
    pub selector: String,
    /// Channels in preference order (default: the API's default channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Default `high`: a flash survey wants answers now.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "high")]
    pub lane: Option<Lane>,
    /// A question not answered within this many seconds is left
    /// unanswered and the next one is asked (default 24 h).
    #[serde(default)]
    pub question_timeout_s: Option<u64>,
    /// No answer is taken after this time (ms since the epoch; default 7
    /// days after the start).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Sent once a worker has answered the last question.
    #[serde(default)]
    pub thanks: Option<Body>,
}

/// A survey as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurveyRecord {
    pub id: u64,
    pub title: String,
    /// The Questionnaire as given (JSON text), for FHIR readers.
    pub questionnaire: String,
    pub parsed: Parsed,
    pub selector: String,
    pub channels: Vec<String>,
    pub lane: Lane,
    pub question_timeout_ms: u64,
    pub deadline_ms: u64,
    pub thanks: Option<Body>,
    pub created_ms: u64,
    pub sessions: u32,
}

impl Versioned for SurveyRecord {
    const VERSION: u8 = 1;
}

/// Where one worker is in a survey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Waiting for the answer to `question`.
    Active,
    Completed,
    /// The worker opted out of messages meanwhile.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub contact: u32,
    pub state: SessionState,
    /// The question asked last (index).
    pub question: u32,
    /// Times it was asked again after an answer it could not read.
    pub attempts: u8,
    /// (question, answer), in the order given.
    pub answers: Vec<(u32, Answer)>,
    /// Questions left unanswered: timed out, or not understood twice.
    pub unanswered: Vec<(u32, Unanswered)>,
    pub language: Option<String>,
    pub recipient: Recipient,
    pub started_ms: u64,
    pub updated_ms: u64,
    /// When `question` was asked.
    pub asked_ms: u64,
}

impl Versioned for Session {
    const VERSION: u8 = 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unanswered {
    TimedOut,
    NotUnderstood,
}

/// A survey's live results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub completed: u64,
    pub stopped: u64,
    pub questions: Vec<QuestionTally>,
    /// When the last answer was counted (ms).
    pub last_answer_ms: u64,
}

impl Versioned for Aggregate {
    const VERSION: u8 = 1;
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionTally {
    pub asked: u64,
    pub answered: u64,
    /// Answers it could not read (each re-asked once).
    pub not_understood: u64,
    pub timed_out: u64,
    /// Per option (choice) or [yes, no] (boolean).
    pub counts: Vec<u64>,
    /// integer and decimal answers.
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A message a survey sends: to one worker, in their language.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub survey: u64,
    /// The worker's directory number.
    pub contact: u32,
    pub recipient: Recipient,
    pub text: String,
}

/// What became of an inbound message a session took.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    pub survey: u64,
    pub question: String,
    /// The answer as recorded, or why not.
    pub outcome: std::result::Result<String, String>,
}

/// The flash-survey engine.
pub struct Surveys {
    engine: Arc<dyn Engine>,
    directory: Arc<Directory>,
    surveys: RwLock<BTreeMap<u64, Arc<SurveyRecord>>>,
    ids: super::Ids,
}

impl Surveys {
    /// Loads the surveys from the store.
    pub fn open(engine: Arc<dyn Engine>, directory: Arc<Directory>) -> Result<Self> {
        let surveys = super::load_all(&*engine, SURVEY, |s: &SurveyRecord| s.id)?;
        let ids = super::Ids::open(&*engine, NEXT)?;
        Ok(Self {
            engine,
            directory,
            surveys: RwLock::new(surveys),
            ids,
        })
    }

    pub fn get(&self, id: u64) -> Option<Arc<SurveyRecord>> {
        self.surveys.read().get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<SurveyRecord>> {
        self.surveys.read().values().rev().cloned().collect()
    }

    /// Starts a survey: checks it, freezes who is asked (active contacts
    /// who have not opted out, with an address), writes a session for each
    /// and returns the first questions to send. Blocking.
    pub fn create(
        &self,
        spec: SurveySpec,
        channels: Vec<String>,
        now: u64,
    ) -> Result<(Arc<SurveyRecord>, Vec<Outgoing>)> {
        let (mut record, mut aggregate, first) = self.define(spec, channels, now)?;
        let (selected, _) = self.directory.select(&record.selector)?;
        if selected.is_empty() {
            return Err(Error::field_invalid(
                "selector",
                "it selects no contact (opted-out and inactive contacts are never selected)",
            ));
        }
        let mut out = Vec::new();
        // The id is claimed (`define`); what makes the sessions live goes
        // with the record in the last batch.
        let mut batch = Batch::new();
        let mut asked = Vec::new();
        for number in &selected {
            let Some(contact) = self.directory.contact(number)? else {
                continue;
            };
            let recipient = contact.recipient();
            if recipient.phone.is_none() && recipient.addresses.is_empty() {
                continue;
            }
            open_session(
                &mut record,
                &mut aggregate,
                first,
                number,
                recipient,
                now,
                &mut batch,
                &mut out,
            );
            asked.push(number);
            if batch.len() >= super::ENROL_BATCH {
                self.engine.write(std::mem::take(&mut batch))?;
            }
        }
        if record.sessions == 0 {
            return Err(Error::field_invalid(
                "selector",
                "none of the contacts it selects has an address",
            ));
        }
        for number in asked {
            go_live(&mut batch, &record, number, now);
        }
        let record = self.keep(record, &aggregate, batch)?;
        self.personalise(&mut out)?;
        Ok((record, out))
    }

    /// A survey that asks no one yet, with its id claimed: a course's
    /// quiz, whose sessions [`Surveys::begin`] opens one worker at a time.
    /// Its writes go into `batch`, which the course commits with its own
    /// record: a course that is not kept leaves no quiz behind. Once that
    /// batch is committed, [`Surveys::remember`] makes it known (`begin`
    /// reads it from the store if it runs first). Blocking.
    pub fn define_quiz(
        &self,
        spec: SurveySpec,
        channels: Vec<String>,
        now: u64,
        batch: &mut Batch,
    ) -> Result<Arc<SurveyRecord>> {
        let (record, aggregate, _) = self.define(spec, channels, now)?;
        batch.put(Cf::Workflows, key(SURVEY, record.id), encode(&record));
        batch.put(Cf::Workflows, key(AGGREGATE, record.id), encode(&aggregate));
        Ok(Arc::new(record))
    }

    /// Makes a committed quiz ([`Surveys::define_quiz`]) known, unless
    /// [`Surveys::begin`] already read it (and may have moved it on).
    pub fn remember(&self, quiz: Arc<SurveyRecord>) {
        self.surveys.write().entry(quiz.id).or_insert(quiz);
    }

    /// Survey `id` as known, else as committed (a course's quiz committed
    /// with its course), then known; `None` if it was never kept.
    /// Blocking.
    pub fn load(&self, id: u64) -> Result<Option<Arc<SurveyRecord>>> {
        if let Some(s) = self.get(id) {
            return Ok(Some(s));
        }
        let Some(record) = super::load_one::<SurveyRecord>(&*self.engine, SURVEY, id)? else {
            return Ok(None);
        };
        let mut surveys = self.surveys.write();
        Ok(Some(Arc::clone(
            surveys.entry(id).or_insert(Arc::new(record)),
        )))
    }

    /// Opens sessions of a survey for these workers (a course reaching its
    /// quiz): the first question to each. Returns the writes and the
    /// messages. Blocking; only the inbound pipeline's task calls it.
    pub fn begin(
        &self,
        survey: u64,
        workers: Vec<(u32, Recipient)>,
        now: u64,
    ) -> Result<(Batch, Vec<Outgoing>)> {
        let Some(current) = self.load(survey)? else {
            return Err(Error::Internal(format!("no survey s{survey}")));
        };
        let mut record = (*current).clone();
        let mut aggregate = self.aggregate(survey)?.unwrap_or_default();
        let first = first_question(&record)?;
        let (mut batch, mut out) = (Batch::new(), Vec::new());
        for (number, r) in workers {
            open_session(
                &mut record,
                &mut aggregate,
                first,
                number,
                r,
                now,
                &mut batch,
                &mut out,
            );
            go_live(&mut batch, &record, number, now);
        }
        batch.put(Cf::Workflows, key(SURVEY, survey), encode(&record));
        batch.put(Cf::Workflows, key(AGGREGATE, survey), encode(&aggregate));
        self.surveys.write().insert(survey, Arc::new(record));
        self.personalise(&mut out)?;
        Ok((batch, out))
    }

    /// A worker's session of a survey, and whether it still takes their
    /// answers: active, before the deadline, and the survey they were
    /// last asked (a newer one takes over).
    pub fn standing(&self, survey: u64, contact: u32, now: u64) -> Result<Option<(Session, bool)>> {
        let Some(session) = self.session(survey, contact)? else {
            return Ok(None);
        };
        let open = session.state == SessionState::Active
            && self.get(survey).is_some_and(|s| now <= s.deadline_ms)
            && self.pointer(contact)? == Some(survey);
        Ok(Some((session, open)))
    }

    /// Checks a survey and gives it an id: the record, its empty
    /// aggregate, and the first question.
    fn define(
        &self,
        spec: SurveySpec,
        channels: Vec<String>,
        now: u64,
    ) -> Result<(SurveyRecord, Aggregate, u32)> {
        let parsed = super::questionnaire::parse(&spec.questionnaire)
            .map_err(|e| Error::field_invalid("questionnaire", e))?;
        let timeout_ms = spec.question_timeout_s.unwrap_or(86_400).max(1) * 1000;
        let deadline_ms = spec.deadline_ms.unwrap_or(now + 7 * 86_400_000);
        if deadline_ms <= now {
            return Err(Error::field_invalid("deadline_ms", "it is already past"));
        }
        let mut record = SurveyRecord {
            id: 0,
            title: parsed.title.clone(),
            questionnaire: spec.questionnaire.to_string(),
            parsed,
            selector: spec.selector,
            channels,
            lane: spec.lane.unwrap_or(Lane::High),
            question_timeout_ms: timeout_ms,
            deadline_ms,
            thanks: spec.thanks,
            created_ms: now,
            sessions: 0,
        };
        let first = first_question(&record)?;
        let mut aggregate = Aggregate {
            questions: vec![QuestionTally::default(); record.parsed.questions.len()],
            ..Aggregate::default()
        };
        for (q, t) in record.parsed.questions.iter().zip(&mut aggregate.questions) {
            t.counts = match q.kind {
                Kind::Choice => vec![0; q.options.len()],
                Kind::Boolean => vec![0; 2],
                _ => Vec::new(),
            };
        }
        record.id = self.ids.claim(&*self.engine)?;
        Ok((record, aggregate, first))
    }

    /// Writes a new survey with `batch` and keeps it in memory.
    fn keep(
        &self,
        record: SurveyRecord,
        aggregate: &Aggregate,
        mut batch: Batch,
    ) -> Result<Arc<SurveyRecord>> {
        let id = record.id;
        batch.put(Cf::Workflows, key(SURVEY, id), encode(&record));
        batch.put(Cf::Workflows, key(AGGREGATE, id), encode(aggregate));
        self.engine.write(batch)?;
        let record = Arc::new(record);
        self.surveys.write().insert(id, Arc::clone(&record));
        Ok(record)
    }

    /// Fills `{facility}` in what is sent with the name of the worker's
    /// facility as the directory has it (the registry's own spelling),
    /// so a worker can confirm or correct it. Such questions go out as
    /// one campaign per facility.
    fn personalise(&self, out: &mut [Outgoing]) -> Result<()> {
        for o in out.iter_mut().filter(|o| o.text.contains(FACILITY)) {
            let facility = self
                .directory
                .contact(o.contact)?
                .and_then(|c| c.facilities().first().map(|f| f.to_string()));
            let name = match facility {
                Some(f) => self
                    .directory
                    .places_up(&f)
                    .first()
                    .map(|(_, p)| p.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or(f),
                None => "-".to_string(),
            };
            o.text = o.text.replace(FACILITY, &name);
        }
        Ok(())
    }

    /// The open session of a contact: the survey and where they are.
    /// `None` once the session ended or the survey's deadline passed.
    pub fn session_of(
        &self,
        contact: u32,
        now: u64,
    ) -> Result<Option<(Arc<SurveyRecord>, Session)>> {
        let Some(id) = self.pointer(contact)? else {
            return Ok(None);
        };
        let Some(survey) = self.get(id) else {
            return Ok(None);
        };
        if now > survey.deadline_ms {
            return Ok(None);
        }
        let session = self.session(id, contact)?;
        Ok(session
            .filter(|s| s.state == SessionState::Active)
            .map(|s| (survey, s)))
    }

    fn session(&self, survey: u64, contact: u32) -> Result<Option<Session>> {
        let k = session_key(survey, contact);
        self.engine
            .get(Cf::Workflows, &k)?
            .map(|v| decode_value(&v).map_err(|m| bad(&k, m)))
            .transpose()
    }

    pub fn aggregate(&self, survey: u64) -> Result<Option<Aggregate>> {
        let k = key(AGGREGATE, survey);
        self.engine
            .get(Cf::Workflows, &k)?
            .map(|v| decode_value(&v).map_err(|m| bad(&k, m)))
            .transpose()
    }

    /// Sessions of a survey after contact `after`, in contact order.
    pub fn sessions(&self, survey: u64, after: Option<u32>, limit: usize) -> Result<Vec<Session>> {
        super::members(&*self.engine, SESSION, survey, after, limit)
    }

    /// What a classifier is told about the question a session waits on.
    pub fn context(survey: &SurveyRecord, session: &Session) -> ClassifyContext {
        let q = &survey.parsed.questions[session.question as usize];
        let lang = session.language.as_deref();
        ClassifyContext {
            expected: match q.kind {
                Kind::Boolean => AnswerType::YesNo,
                Kind::Choice => AnswerType::Choice,
                Kind::Integer | Kind::Decimal => AnswerType::Number,
                Kind::String | Kind::Date => AnswerType::FreeText,
            },
            choices: q
                .options
                .iter()
                .map(|o| o.display.for_language(lang).0.to_string())
                .collect(),
            language_hint: session.language.clone(),
        }
    }

    /// Takes replies, in arrival order. Moves each session on (next
    /// question, a re-ask, or the end), and returns the writes (to commit
    /// with the inbound results), the messages to send, and what became of
    /// each reply. Blocking.
    pub fn answer(
        &self,
        replies: Vec<Reply>,
        now: u64,
    ) -> Result<(Batch, Vec<Outgoing>, Vec<Option<Taken>>)> {
        let mut state = Changes::default();
        let mut taken = Vec::with_capacity(replies.len());
        for Reply {
            contact,
            text,
            label,
            fields,
            language,
        } in replies
        {
            let Some((survey, mut session)) = self.current(&mut state, contact, now)? else {
                taken.push(None);
                continue;
            };
            if let Some(l) = language {
                session.language = Some(l);
            }
            let qi = session.question;
            let q = &survey.parsed.questions[qi as usize];
            let aggregate = self.tally(&mut state, survey.id)?;
            let outcome = match interpret(q, &text, &label, &fields) {
                Some(answer) => {
                    let shown = show(q, &answer);
                    count(&mut aggregate.questions[qi as usize], &answer);
                    aggregate.last_answer_ms = now;
                    session.answers.push((qi, answer));
                    self.advance(&survey, &mut session, &mut state, now, true);
                    Ok(shown)
                }
                None if session.attempts == 0 => {
                    aggregate.questions[qi as usize].not_understood += 1;
                    session.attempts = 1;
                    state.out.push(Outgoing {
                        survey: survey.id,
                        contact: session.contact,
                        recipient: session.recipient.clone(),
                        text: render(q, session.language.as_deref(), true),
                    });
                    Err("not understood: asked again with help".to_string())
                }
                None => {
                    aggregate.questions[qi as usize].not_understood += 1;
                    session.unanswered.push((qi, Unanswered::NotUnderstood));
                    self.advance(&survey, &mut session, &mut state, now, true);
                    Err("not understood twice: left unanswered".to_string())
                }
            };
            taken.push(Some(Taken {
                survey: survey.id,
                question: q.link_id.clone(),
                outcome,
            }));
            session.updated_ms = now;
            state
                .sessions
                .insert((contact, survey.id), (survey, session));
        }
        let mut moved = state.into_writes();
        self.personalise(&mut moved.out)?;
        Ok((moved.batch, moved.out, taken))
    }

    /// Ends the open session of each contact who opted out. Returns the
    /// writes and the sessions ended (survey, contact).
    pub fn stop(&self, contacts: &[u32], now: u64) -> Result<(Batch, Vec<(u64, u32)>)> {
        let mut state = Changes::default();
        for &contact in contacts {
            if let Some((survey, mut session)) = self.current(&mut state, contact, now)? {
                session.state = SessionState::Stopped;
                session.updated_ms = now;
                self.tally(&mut state, survey.id)?.stopped += 1;
                state.ended.push((
                    survey.id,
                    contact,
                    session.asked_ms + survey.question_timeout_ms,
                ));
                state
                    .sessions
                    .insert((contact, survey.id), (survey, session));
            }
        }
        let moved = state.into_writes();
        Ok((moved.batch, moved.ended))
    }

    /// Questions whose time ran out by `now`: each left unanswered and the
    /// next asked. The sessions that ended had their last question time
    /// out. Blocking.
    pub fn due(&self, now: u64) -> Result<Moved> {
        let expired = super::due_by(&*self.engine, TIMEOUT, now, TIMEOUTS_PER_CHECK)?;
        let mut state = Changes::default();
        for (due, id, contact) in expired {
            // The entry goes whatever it finds.
            state
                .batch
                .delete(Cf::Workflows, timeout_key(due, id, contact));
            let Some(survey) = self.get(id) else { continue };
            if now > survey.deadline_ms || self.pointer(contact)? != Some(id) {
                // Closed, or the worker has been asked by a newer survey
                // since: this one asks nothing more.
                continue;
            }
            let session = match state.sessions.remove(&(contact, id)) {
                Some((_, s)) => Some(s),
                None => self.session(id, contact)?,
            };
            let Some(mut session) = session else { continue };
            if session.state != SessionState::Active
                || session.asked_ms + survey.question_timeout_ms != due
            {
                if session.state == SessionState::Active {
                    state
                        .sessions
                        .insert((contact, id), (Arc::clone(&survey), session));
                }
                continue;
            }
            let qi = session.question;
            let aggregate = self.tally(&mut state, id)?;
            aggregate.questions[qi as usize].timed_out += 1;
            session.unanswered.push((qi, Unanswered::TimedOut));
            self.advance(&survey, &mut session, &mut state, now, false);
            session.updated_ms = now;
            state.sessions.insert((contact, id), (survey, session));
        }
        let mut moved = state.into_writes();
        self.personalise(&mut moved.out)?;
        Ok(moved)
    }

    /// The session of `contact` as changed so far in this call, else as
    /// stored.
    fn current(
        &self,
        state: &mut Changes,
        contact: u32,
        now: u64,
    ) -> Result<Option<(Arc<SurveyRecord>, Session)>> {
        let changed = state
            .sessions
            .range((contact, 0)..=(contact, u64::MAX))
            .find(|(_, (_, s))| s.state == SessionState::Active)
            .map(|(k, _)| *k);
        if let Some(k) = changed {
            let (survey, session) = state.sessions.remove(&k).expect("found above");
            if now > survey.deadline_ms {
                state.sessions.insert(k, (survey, session));
                return Ok(None);
            }
            return Ok(Some((survey, session)));
        }
        if state.ended.iter().any(|e| e.1 == contact) {
            return Ok(None);
        }
        self.session_of(contact, now)
    }

    /// The survey whose question `contact` was last asked.
    fn pointer(&self, contact: u32) -> Result<Option<u64>> {
        let k = active_key(contact);
        match self.engine.get(Cf::Workflows, &k)? {
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| bad(&k, "not 8 bytes".into())),
            None => Ok(None),
        }
    }

    fn tally<'a>(&self, state: &'a mut Changes, survey: u64) -> Result<&'a mut Aggregate> {
        match state.aggregates.entry(survey) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                Ok(e.insert(self.aggregate(survey)?.unwrap_or_default()))
            }
        }
    }

    /// Asks the next question the answers enable, or ends the session.
    fn advance(
        &self,
        survey: &Arc<SurveyRecord>,
        session: &mut Session,
        state: &mut Changes,
        now: u64,
        answered: bool,
    ) {
        // Loaded by the caller's tally.
        let aggregate = state.aggregates.entry(survey.id).or_default();
        // A timed-out question's entry is already being deleted.
        if answered {
            let old_due = session.asked_ms.saturating_add(survey.question_timeout_ms);
            state.batch.delete(
                Cf::Workflows,
                timeout_key(old_due, survey.id, session.contact),
            );
        }
        session.attempts = 0;
        let questions = &survey.parsed.questions;
        let next = (session.question as usize + 1..questions.len())
            .find(|&i| questions[i].enabled(&session.answers));
        match next {
            Some(i) => {
                if let Some(t) = aggregate.questions.get_mut(i) {
                    t.asked += 1;
                }
                session.question = i as u32;
                session.asked_ms = now;
                state.batch.put(
                    Cf::Workflows,
                    timeout_key(now + survey.question_timeout_ms, survey.id, session.contact),
                    Vec::new(),
                );
                state.out.push(Outgoing {
                    survey: survey.id,
                    contact: session.contact,
                    recipient: session.recipient.clone(),
                    text: render(&questions[i], session.language.as_deref(), false),
                });
            }
            None => {
                aggregate.completed += 1;
                session.state = SessionState::Completed;
                // Its timeout entry went above (or is going).
                state.ended.push((survey.id, session.contact, u64::MAX));
                if let Some(thanks) = &survey.thanks {
                    state.out.push(Outgoing {
                        survey: survey.id,
                        contact: session.contact,
                        recipient: session.recipient.clone(),
                        text: thanks
                            .for_language(session.language.as_deref())
                            .0
                            .to_string(),
                    });
                }
            }
        }
    }
}

/// A worker's reply that a survey session may take.
#[derive(Clone, Debug)]
pub struct Reply {
    pub contact: u32,
    pub text: String,
    /// What the classifiers made of it: a label, fields, a language.
    pub label: String,
    pub fields: Vec<(String, String)>,
    pub language: Option<String>,
}

/// Sessions moved on: the writes, the messages to send, and the sessions
/// that ended (survey, contact).
pub struct Moved {
    pub batch: Batch,
    pub out: Vec<Outgoing>,
    pub ended: Vec<(u64, u32)>,
}

/// What one call changes, written together.
#[derive(Default)]
struct Changes {
    batch: Batch,
    /// By (contact, survey).
    sessions: BTreeMap<(u32, u64), (Arc<SurveyRecord>, Session)>,
    aggregates: BTreeMap<u64, Aggregate>,
    /// Sessions that ended: (survey, contact, timeout due to delete or MAX).
    ended: Vec<(u64, u32, u64)>,
    out: Vec<Outgoing>,
}

impl Changes {
    fn into_writes(mut self) -> Moved {
        for ((contact, id), (_, s)) in &self.sessions {
            self.batch
                .put(Cf::Workflows, session_key(*id, *contact), encode(s));
        }
        for (survey, contact, due) in &self.ended {
            if *due != u64::MAX {
                self.batch
                    .delete(Cf::Workflows, timeout_key(*due, *survey, *contact));
            }
            self.batch.delete(Cf::Workflows, active_key(*contact));
        }
        for (id, a) in &self.aggregates {
            self.batch
                .put(Cf::Workflows, key(AGGREGATE, *id), encode(a));
        }
        let ended = self.ended.iter().map(|&(id, c, _)| (id, c)).collect();
        Moved {
            batch: self.batch,
            out: self.out,
            ended,
        }
    }
}

/// Reads an answer to `q` from the text and what the classifiers said.
pub fn interpret(
    q: &Question,
    text: &str,
    label: &str,
    fields: &[(String, String)],
) -> Option<Answer> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let t = text.trim();
    match q.kind {
        Kind::Boolean => match (label, t) {
            ("yes", _) | (_, "1") => Some(Answer::Boolean(true)),
            ("no", _) | (_, "2") => Some(Answer::Boolean(false)),
            _ => None,
        },
        Kind::Choice => {
            if let Some(i) = field("choice-index").and_then(|v| v.parse::<usize>().ok())
                && (1..=q.options.len()).contains(&i)
            {
                return Some(Answer::Choice(i as u32 - 1));
            }
            q.options
                .iter()
                .position(|o| {
                    o.code.eq_ignore_ascii_case(t)
                        || o.code.eq_ignore_ascii_case(label)
                        || o.display.default.eq_ignore_ascii_case(label)
                        || o.display
                            .variants
                            .values()
                            .any(|d| d.eq_ignore_ascii_case(label))
                })
                .map(|i| Answer::Choice(i as u32))
        }
        Kind::Integer => {
            let n: f64 = field("number")
                .map(str::to_string)
                .unwrap_or_else(|| t.to_string())
                .parse()
                .ok()?;
            (n.fract() == 0.0 && n.abs() < 1e15).then_some(Answer::Integer(n as i64))
        }
        Kind::Decimal => {
            let n: f64 = field("number")
                .map(str::to_string)
                .unwrap_or_else(|| t.replace(',', "."))
                .parse()
                .ok()?;
            n.is_finite().then_some(Answer::Decimal(n))
        }
        Kind::String => {
            (!t.is_empty()).then(|| Answer::String(t.chars().take(MAX_TEXT_ANSWER).collect()))
        }
        Kind::Date => date(t).map(Answer::Date),
    }
}

/// `YYYY-MM-DD`, or a day first (`DD/MM/YYYY`, `DD-MM-YYYY`,
/// `DD.MM.YYYY`), as `YYYY-MM-DD` if it is a real date.
pub fn date(t: &str) -> Option<String> {
    let parts: Vec<&str> = t.split(['-', '/', '.']).collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let (y, m, d) = if a.len() == 4 { (a, b, c) } else { (c, b, a) };
    let (y, m, d): (i16, i8, i8) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let date = jiff::civil::Date::new(y, m, d).ok()?;
    Some(date.to_string())
}

/// An answer as the worker would read it.
pub fn show(q: &Question, a: &Answer) -> String {
    match a {
        Answer::Boolean(b) => if *b { "yes" } else { "no" }.into(),
        Answer::Choice(i) => q
            .options
            .get(*i as usize)
            .map_or_else(|| i.to_string(), |o| o.code.clone()),
        Answer::Integer(n) => n.to_string(),
        Answer::Decimal(n) => n.to_string(),
        Answer::String(s) | Answer::Date(s) => s.clone(),
    }
}

fn count(t: &mut QuestionTally, a: &Answer) {
    t.answered += 1;
    match a {
        Answer::Boolean(b) => {
            if let Some(c) = t.counts.get_mut(usize::from(!*b)) {
                *c += 1;
            }
        }
        Answer::Choice(i) => {
            if let Some(c) = t.counts.get_mut(*i as usize) {
                *c += 1;
            }
        }
        Answer::Integer(n) => numeric(t, *n as f64),
        Answer::Decimal(n) => numeric(t, *n),
        Answer::String(_) | Answer::Date(_) => {}
    }
}

fn numeric(t: &mut QuestionTally, n: f64) {
    t.sum += n;
    t.min = Some(t.min.map_or(n, |m| m.min(n)));
    t.max = Some(t.max.map_or(n, |m| m.max(n)));
}

/// A question as sent, in `language` where the Questionnaire has it, with
/// how to answer; `again` prefixes the apology of a re-ask.
pub fn render(q: &Question, language: Option<&str>, again: bool) -> String {
    let lang = language.map(crate::directory::contact::primary_language);
    let lang = lang.as_deref();
    let pick = |en: &'static str, fr: &'static str, pt: &'static str, sw: &'static str| match lang {
        Some("fr") => fr,
        Some("pt") => pt,
        Some("sw") => sw,
        _ => en,
    };
    let mut out = String::new();
    if again {
        out.push_str(pick(
            "Sorry, we did not understand your answer.",
            "Désolé, nous n'avons pas compris votre réponse.",
            "Desculpe, não entendemos a sua resposta.",
            "Samahani, hatukuelewa jibu lako.",
        ));
        out.push('\n');
    } else if let Some(p) = &q.preface {
        out.push_str(p.for_language(language).0);
        out.push('\n');
    }
    out.push_str(q.text.for_language(language).0);
    let hint = match q.kind {
        Kind::Boolean => Some(pick(
            "Reply 1 for Yes, 2 for No",
            "Répondez 1 pour Oui, 2 pour Non",
            "Responda 1 para Sim, 2 para Não",
            "Jibu 1 kwa Ndiyo, 2 kwa Hapana",
        )),
        Kind::Choice => Some(pick(
            "Reply with the number:",
            "Répondez par le numéro :",
            "Responda com o número:",
            "Jibu kwa namba:",
        )),
        Kind::Integer | Kind::Decimal => Some(pick(
            "Reply with a number",
            "Répondez par un nombre",
            "Responda com um número",
            "Jibu kwa namba",
        )),
        Kind::Date => Some(pick(
            "Reply with a date (DD/MM/YYYY)",
            "Répondez par une date (JJ/MM/AAAA)",
            "Responda com uma data (DD/MM/AAAA)",
            "Jibu kwa tarehe (DD/MM/YYYY)",
        )),
        Kind::String => None,
    };
    if let Some(h) = hint {
        out.push('\n');
        out.push_str(h);
    }
    if q.kind == Kind::Choice {
        for (i, o) in q.options.iter().enumerate() {
            out.push_str(&format!(
                "\n{}. {}",
                i + 1,
                o.display.for_language(language).0
            ));
        }
    }
    out
}

/// The first question asked: the first one enabled with no answers.
fn first_question(record: &SurveyRecord) -> Result<u32> {
    record
        .parsed
        .questions
        .iter()
        .position(|q| q.enabled(&[]))
        .map(|i| i as u32)
        .ok_or_else(|| {
            Error::field_invalid(
                "questionnaire",
                "no question is asked without an answer before it",
            )
        })
}

/// A worker's session at the first question: its writes, the question.
/// What makes it live is the caller's to write ([`go_live`]).
#[allow(clippy::too_many_arguments)]
fn open_session(
    record: &mut SurveyRecord,
    aggregate: &mut Aggregate,
    first: u32,
    number: u32,
    recipient: Recipient,
    now: u64,
    batch: &mut Batch,
    out: &mut Vec<Outgoing>,
) {
    let id = record.id;
    let session = Session {
        contact: number,
        state: SessionState::Active,
        question: first,
        attempts: 0,
        answers: Vec::new(),
        unanswered: Vec::new(),
        language: recipient.language.clone(),
        recipient,
        started_ms: now,
        updated_ms: now,
        asked_ms: now,
    };
    out.push(Outgoing {
        survey: id,
        contact: session.contact,
        recipient: session.recipient.clone(),
        text: render(
            &record.parsed.questions[first as usize],
            session.language.as_deref(),
            false,
        ),
    });
    batch.put(Cf::Workflows, session_key(id, number), encode(&session));
    record.sessions += 1;
    if let Some(t) = aggregate.questions.get_mut(first as usize) {
        t.asked += 1;
    }
}

/// What makes a worker's new session live: the survey becomes the one
/// that takes their replies, and the first question (asked at `now`) its
/// timeout.
fn go_live(batch: &mut Batch, record: &SurveyRecord, contact: u32, now: u64) {
    let id = record.id;
    batch.put(
        Cf::Workflows,
        active_key(contact),
        id.to_be_bytes().to_vec(),
    );
    batch.put(
        Cf::Workflows,
        timeout_key(now + record.question_timeout_ms, id, contact),
        Vec::new(),
    );
}

/// A batch that claims survey id `id` (the next id after it is kept).
fn session_key(survey: u64, contact: u32) -> Vec<u8> {
    member_key(SESSION, survey, contact)
}

fn active_key(contact: u32) -> Vec<u8> {
    let mut k = vec![ACTIVE];
    k.extend_from_slice(&contact.to_be_bytes());
    k
}

fn timeout_key(due: u64, survey: u64, contact: u32) -> Vec<u8> {
    due_key(TIMEOUT, due, survey, contact)
}
