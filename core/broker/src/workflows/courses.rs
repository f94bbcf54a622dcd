//! Training: a course is a sequence of steps, each after a delay — a
//! lesson (a message), or a quiz (a FHIR Questionnaire asked through the
//! survey engine, scored against the answers the course gives). Workers
//! are enrolled by a selector; each one's progress lives in the store and
//! is moved on by the inbound pipeline's periodic check, so a course
//! resumes where it was after a restart.
//!
//! State (the `workflows` key space):
//!
//! ```text
//! NC                               next course id
//! C | course                       the course (steps, audience, timing)
//! c | course | contact             one worker's progress
//! d | due ms | course | contact    when that worker's next step is due
//! T | course                       how far its workers are (a [`Tally`])
//! ```
//!
//! The tally changes in the same write as the progress it counts, so a
//! course's view reads one record, not every worker's; a course kept
//! before tallies gets its own from a scan when the broker opens.
//!
//! A worker in a quiz is looked at at once after each answer they give,
//! when they stop it and when its last question times out
//! ([`Courses::nudge`]), and every [`QUIZ_CHECK_MS`] otherwise (a newer
//! survey may take the worker over): once the quiz session ended its score
//! is kept and the course goes on. Only the
//! inbound pipeline's task moves progress on after enrolment, so its
//! read-modify-write needs no lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use mhero_proto::Lane;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::questionnaire::{Answer, Kind};
use super::survey::{SessionState, SurveySpec, Surveys, show};
use super::{bad, key, member_key};
use crate::audience::Recipient;
use crate::directory::Directory;
use crate::dispatch::Body;
use crate::error::{Error, Result};
use crate::store::{Batch, Cf, Engine, Versioned, decode_value, encode};

const NEXT: &[u8] = b"NC";
const COURSE: u8 = b'C';
const PROGRESS: u8 = b'c';
const DUE: u8 = b'd';
const TALLY: u8 = b'T';

/// How often a worker in a quiz is looked at.
pub const QUIZ_CHECK_MS: u64 = 60_000;
/// Most due steps handled per check.
const DUE_PER_CHECK: usize = 5000;

/// A course as asked for.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CourseSpec {
    pub name: String,
    /// Who is enrolled: a directory selector.
    pub selector: String,
    /// Channels in preference order (default: the API's default channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Default `normal`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "normal")]
    pub lane: Option<Lane>,
    pub steps: Vec<StepSpec>,
    /// A quiz question not answered within this many seconds is left
    /// unanswered and the next asked (default 24 h).
    #[serde(default)]
    pub question_timeout_s: Option<u64>,
    /// When the first step's delay starts (ms since the epoch; default now).
    #[serde(default)]
    pub start_at_ms: Option<u64>,
    /// Sent to a worker who finished every step.
    #[serde(default)]
    pub completion: Option<Body>,
}

/// One step: a lesson or a quiz, after a delay.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Seconds after the step before ends (or after the start).
    #[serde(default)]
    pub delay_s: u64,
    /// A lesson: the message.
    #[serde(default)]
    pub lesson: Option<Body>,
    /// A quiz: a FHIR R4 Questionnaire (JSON).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub quiz: Option<serde_json::Value>,
    /// A quiz's key: `linkId` → the right answer (an option's code,
    /// `yes`/`no`, a number).
    #[serde(default)]
    pub answers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Lesson {
        body: Body,
        delay_ms: u64,
    },
    Quiz {
        survey: u64,
        delay_ms: u64,
        /// Question index → the right answer as [`show`] writes it.
        answers: Vec<(u32, String)>,
    },
}

impl Step {
    fn delay_ms(&self) -> u64 {
        match self {
            Step::Lesson { delay_ms, .. } | Step::Quiz { delay_ms, .. } => *delay_ms,
        }
    }
}

/// A course as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CourseRecord {
    pub id: u64,
    pub name: String,
    pub selector: String,
    pub channels: Vec<String>,
    pub lane: Lane,
    pub steps: Vec<Step>,
    pub completion: Option<Body>,
    pub created_ms: u64,
    pub start_ms: u64,
    pub enrolled: u32,
}

impl Versioned for CourseRecord {
    const VERSION: u8 = 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// Waiting for the step's time.
    Waiting,
    /// In the step's quiz.
    InQuiz,
    Completed,
    /// Opted out, or left the directory.
    Stopped,
}

/// Where one worker is in a course.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub contact: u32,
    /// The step being waited for, or in.
    pub step: u32,
    pub state: ProgressState,
    pub due_ms: u64,
    pub lessons_sent: u32,
    /// (step, right answers, questions with a key), per quiz taken.
    pub scores: Vec<(u32, u32, u32)>,
    pub enrolled_ms: u64,
    pub updated_ms: u64,
    pub completed_ms: Option<u64>,
}

impl Versioned for Progress {
    const VERSION: u8 = 1;
}

/// How far a course's workers are: what its view shows, counted as their
/// progress changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Workers past each step.
    pub done: Vec<u64>,
    /// Per step: quizzes scored, and the sum of their scores (each the
    /// share of its questions answered right).
    pub scores: Vec<(u64, f64)>,
    pub completed: u64,
    pub stopped: u64,
}

impl Versioned for Tally {
    const VERSION: u8 = 1;
}

impl Tally {
    fn new(steps: usize) -> Self {
        Self {
            done: vec![0; steps],
            scores: vec![(0, 0.0); steps],
            completed: 0,
            stopped: 0,
        }
    }

    /// Counts a worker whose progress was `before` (None: new) and is now
    /// `after`. Scores are only ever added to a worker's, so the new ones
    /// are the ones after `before`'s.
    fn moved(&mut self, before: Option<&Progress>, after: &Progress) {
        if let Some(b) = before {
            self.places(b, false);
        }
        self.places(after, true);
        let old = before.map_or(0, |b| b.scores.len());
        for &(step, right, questions) in after.scores.get(old..).unwrap_or_default() {
            if let Some(s) = self.scores.get_mut(step as usize)
                && questions > 0
            {
                s.0 += 1;
                s.1 += f64::from(right) / f64::from(questions);
            }
        }
    }

    /// Adds (or takes away) where `p` is: the steps it is past, and
    /// whether it completed or stopped.
    fn places(&mut self, p: &Progress, add: bool) {
        let bump = |v: &mut u64| {
            *v = if add { *v + 1 } else { v.saturating_sub(1) };
        };
        let n = self.done.len();
        let past = match p.state {
            ProgressState::Completed => n,
            _ => (p.step as usize).min(n),
        };
        self.done[..past].iter_mut().for_each(bump);
        match p.state {
            ProgressState::Completed => bump(&mut self.completed),
            ProgressState::Stopped => bump(&mut self.stopped),
            ProgressState::Waiting | ProgressState::InQuiz => {}
        }
    }

    /// The mean score of step `i`'s quiz, once anyone was scored.
    pub fn mean_score(&self, i: usize) -> Option<f64> {
        let (n, sum) = *self.scores.get(i)?;
        (n > 0).then(|| sum / n as f64)
    }
}

/// A lesson (or completion message) to send: grouped by course, step and
/// text into one campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct Lesson {
    pub course: u64,
    pub step: u32,
    pub recipient: Recipient,
    pub text: String,
}

/// What a check sends.
#[derive(Default)]
pub struct Due {
    pub lessons: Vec<Lesson>,
    pub questions: Vec<super::Outgoing>,
}

pub struct Courses {
    engine: Arc<dyn Engine>,
    directory: Arc<Directory>,
    surveys: Arc<Surveys>,
    courses: RwLock<BTreeMap<u64, Arc<CourseRecord>>>,
    /// Quiz survey → its course.
    quizzes: RwLock<BTreeMap<u64, u64>>,
    ids: super::Ids,
}

fn quizzes_of(c: &CourseRecord) -> impl Iterator<Item = (u64, u64)> + '_ {
    c.steps.iter().filter_map(|s| match s {
        Step::Quiz { survey, .. } => Some((*survey, c.id)),
        Step::Lesson { .. } => None,
    })
}

impl Courses {
    pub fn open(
        engine: Arc<dyn Engine>,
        directory: Arc<Directory>,
        surveys: Arc<Surveys>,
    ) -> Result<Self> {
        let courses = super::load_all(&*engine, COURSE, |c: &CourseRecord| c.id)?;
        for c in courses.values() {
            if engine.get(Cf::Workflows, &tally_key(c.id))?.is_none() {
                let tally = tally_by_scan(&*engine, c)?;
                let mut batch = Batch::new();
                batch.put(Cf::Workflows, tally_key(c.id), encode(&tally));
                engine.write(batch)?;
            }
        }
        let ids = super::Ids::open(&*engine, NEXT)?;
        let quizzes = courses.values().flat_map(|c| quizzes_of(c)).collect();
        Ok(Self {
            engine,
            directory,
            surveys,
            courses: RwLock::new(courses),
            quizzes: RwLock::new(quizzes),
            ids,
        })
    }

    pub fn get(&self, id: u64) -> Option<Arc<CourseRecord>> {
        self.courses.read().get(&id).cloned()
    }

    /// How far course `id`'s workers are. Blocking.
    pub fn tally(&self, id: u64) -> Result<Tally> {
        let k = tally_key(id);
        match self.engine.get(Cf::Workflows, &k)? {
            Some(v) => decode_value(&v).map_err(|m| bad(&k, m)),
            None => {
                let course = self.get(id).ok_or_else(|| Error::NotFound {
                    what: "course",
                    id: format!("c{id}"),
                })?;
                tally_by_scan(&*self.engine, &course)
            }
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<CourseRecord>> {
        self.courses.read().values().rev().cloned().collect()
    }

    /// Creates a course and enrols everyone the selector names (active,
    /// not opted out, with an address). The first step goes out at the
    /// first check after its time. Blocking.
    pub fn create(
        &self,
        spec: CourseSpec,
        channels: Vec<String>,
        now: u64,
    ) -> Result<Arc<CourseRecord>> {
        if spec.name.trim().is_empty() {
            return Err(Error::field_invalid("name", "must not be empty"));
        }
        if spec.steps.is_empty() {
            return Err(Error::field_invalid(
                "steps",
                "a course needs at least one step",
            ));
        }
        let start = spec.start_at_ms.unwrap_or(now).max(now);
        let total_delay: u64 = spec.steps.iter().map(|s| s.delay_s * 1000).sum();
        let (selected, _) = self.directory.select(&spec.selector)?;
        if selected.is_empty() {
            return Err(Error::field_invalid(
                "selector",
                "it selects no contact (opted-out and inactive contacts are never selected)",
            ));
        }
        // Check every step before any quiz is kept.
        let mut quizzes = Vec::new();
        for (i, s) in spec.steps.iter().enumerate() {
            match (&s.lesson, &s.quiz) {
                (Some(body), None) => {
                    if body.default.trim().is_empty() {
                        return Err(Error::field_invalid(
                            format!("steps[{i}].lesson.default"),
                            "must not be empty",
                        ));
                    }
                    if !s.answers.is_empty() {
                        return Err(Error::field_invalid(
                            format!("steps[{i}].answers"),
                            "only a quiz has answers",
                        ));
                    }
                }
                (None, Some(q)) => {
                    let parsed = super::questionnaire::parse(q)
                        .map_err(|e| Error::field_invalid(format!("steps[{i}].quiz"), e))?;
                    let mut key = Vec::new();
                    for (link, right) in &s.answers {
                        let Some(qi) = parsed.questions.iter().position(|q| &q.link_id == link)
                        else {
                            return Err(Error::field_invalid(
                                format!("steps[{i}].answers.{link}"),
                                "the quiz has no question with this linkId",
                            ));
                        };
                        let question = &parsed.questions[qi];
                        let right = normalise(question, right).ok_or_else(|| {
                            Error::field_invalid(
                                format!("steps[{i}].answers.{link}"),
                                format!("{right:?} is not an answer to this question"),
                            )
                        })?;
                        key.push((qi as u32, right));
                    }
                    quizzes.push((i, q.clone(), key));
                }
                _ => {
                    return Err(Error::field_invalid(
                        format!("steps[{i}]"),
                        "a step is a lesson or a quiz (one of them)",
                    ));
                }
            }
        }
        // Who is enrolled, before anything is kept.
        let mut enrolled = Vec::new();
        for number in &selected {
            let Some(contact) = self.directory.contact(number)? else {
                continue;
            };
            let r = contact.recipient();
            if r.phone.is_some() || !r.addresses.is_empty() {
                enrolled.push(number);
            }
        }
        if enrolled.is_empty() {
            return Err(Error::field_invalid(
                "selector",
                "none of the contacts it selects has an address",
            ));
        }
        // A quiz takes answers until well after the last step could end.
        // The quizzes are written with the course's record, in the last
        // batch.
        let deadline = start + total_delay + 30 * 86_400_000;
        let mut last = Batch::new();
        let mut kept_quizzes = Vec::new();
        let mut steps = Vec::with_capacity(spec.steps.len());
        let mut quizzes = quizzes.into_iter().peekable();
        for (i, s) in spec.steps.iter().enumerate() {
            let delay_ms = s.delay_s * 1000;
            match quizzes.next_if(|(k, _, _)| *k == i) {
                Some((_, questionnaire, answers)) => {
                    let survey = self.surveys.define_quiz(
                        SurveySpec {
                            questionnaire,
                            selector: spec.selector.clone(),
                            channels: channels.clone(),
                            lane: Some(spec.lane.unwrap_or(Lane::Normal)),
                            question_timeout_s: spec.question_timeout_s,
                            deadline_ms: Some(deadline),
                            thanks: None,
                        },
                        channels.clone(),
                        now,
                        &mut last,
                    )?;
                    kept_quizzes.push(Arc::clone(&survey));
                    steps.push(Step::Quiz {
                        survey: survey.id,
                        delay_ms,
                        answers,
                    });
                }
                None => steps.push(Step::Lesson {
                    body: s.lesson.clone().expect("checked above"),
                    delay_ms,
                }),
            }
        }
        // Claimed before anything is written: an enrolment cut short by a
        // crash leaves records under an id no later course takes.
        let id = self.ids.claim(&*self.engine)?;
        let record = CourseRecord {
            id,
            name: spec.name,
            selector: spec.selector,
            channels,
            lane: spec.lane.unwrap_or(Lane::Normal),
            steps,
            completion: spec.completion,
            created_ms: now,
            start_ms: start,
            enrolled: enrolled.len() as u32,
        };
        let due = start + record.steps[0].delay_ms();
        let mut batch = Batch::new();
        for &number in &enrolled {
            let progress = Progress {
                contact: number,
                step: 0,
                state: ProgressState::Waiting,
                due_ms: due,
                lessons_sent: 0,
                scores: Vec::new(),
                enrolled_ms: now,
                updated_ms: now,
                completed_ms: None,
            };
            batch.put(Cf::Workflows, progress_key(id, number), encode(&progress));
            if batch.len() >= super::ENROL_BATCH {
                self.engine.write(std::mem::take(&mut batch))?;
            }
        }
        // The first steps fall due with the course itself.
        for number in enrolled {
            batch.put(Cf::Workflows, due_key(due, id, number), Vec::new());
        }
        // Workers waiting for their first step are past none: the tally
        // starts empty.
        let tally = Tally::new(record.steps.len());
        batch.put(Cf::Workflows, tally_key(id), encode(&tally));
        batch.put(Cf::Workflows, key(COURSE, id), encode(&record));
        batch.append(last);
        self.engine.write(batch)?;
        for quiz in kept_quizzes {
            self.surveys.remember(quiz);
        }
        let record = Arc::new(record);
        self.remember(&record);
        Ok(record)
    }

    fn remember(&self, record: &Arc<CourseRecord>) {
        self.quizzes.write().extend(quizzes_of(record));
        self.courses.write().insert(record.id, Arc::clone(record));
    }

    /// Course `id`: as known, else as just committed by a
    /// [`Courses::create`] that has not yet made it known.
    fn course(&self, id: u64) -> Result<Option<Arc<CourseRecord>>> {
        if let Some(c) = self.get(id) {
            return Ok(Some(c));
        }
        let Some(record) = super::load_one::<CourseRecord>(&*self.engine, COURSE, id)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.remember(&record);
        Ok(Some(record))
    }

    /// Workers who answered, stopped or timed out of a course's quiz:
    /// their progress is looked at at the next check (the quiz may have
    /// ended). Returns the writes. Blocking.
    pub fn nudge(&self, answered: &[(u64, u32)], now: u64) -> Result<Batch> {
        let mut batch = Batch::new();
        for &(survey, contact) in answered {
            let Some(course) = self.quizzes.read().get(&survey).copied() else {
                continue;
            };
            let k = progress_key(course, contact);
            let Some(v) = self.engine.get(Cf::Workflows, &k)? else {
                continue;
            };
            let mut p: Progress = decode_value(&v).map_err(|m| bad(&k, m))?;
            if p.state != ProgressState::InQuiz || p.due_ms <= now {
                continue;
            }
            batch.delete(Cf::Workflows, due_key(p.due_ms, course, contact));
            p.due_ms = now;
            batch.put(Cf::Workflows, due_key(now, course, contact), Vec::new());
            batch.put(Cf::Workflows, k, encode(&p));
        }
        Ok(batch)
    }

    /// Progress of a course's workers after contact `after`, in contact
    /// order.
    pub fn progress(&self, course: u64, after: Option<u32>, limit: usize) -> Result<Vec<Progress>> {
        super::members(&*self.engine, PROGRESS, course, after, limit)
    }

    /// Steps due by `now`: lessons sent, quizzes begun, ended quizzes
    /// scored. Returns the writes and what to send. Blocking; only the
    /// inbound pipeline's task calls it.
    pub fn due(&self, now: u64) -> Result<(Batch, Due)> {
        let due = super::due_by(&*self.engine, DUE, now, DUE_PER_CHECK)?;
        let mut batch = Batch::new();
        let mut out = Due::default();
        let mut begins: BTreeMap<u64, Vec<(u32, Recipient)>> = BTreeMap::new();
        let mut tallies: BTreeMap<u64, Tally> = BTreeMap::new();
        for (at, id, contact) in due {
            batch.delete(Cf::Workflows, due_key(at, id, contact));
            let Some(course) = self.course(id)? else {
                continue;
            };
            let k = progress_key(id, contact);
            let Some(v) = self.engine.get(Cf::Workflows, &k)? else {
                continue;
            };
            let mut p: Progress = decode_value(&v).map_err(|m| bad(&k, m))?;
            if p.due_ms != at
                || matches!(p.state, ProgressState::Completed | ProgressState::Stopped)
            {
                continue;
            }
            let before = p.clone();
            p.updated_ms = now;
            let recipient = match self.directory.contact(contact)? {
                Some(c) if c.selectable() => Some(c.recipient()),
                _ => None,
            };
            match (p.state, &course.steps[p.step as usize], recipient) {
                (_, _, None) => p.state = ProgressState::Stopped,
                (ProgressState::Waiting, Step::Lesson { body, .. }, Some(r)) => {
                    out.lessons.push(Lesson {
                        course: id,
                        step: p.step,
                        text: body.for_language(r.language.as_deref()).0.to_string(),
                        recipient: r.clone(),
                    });
                    p.lessons_sent += 1;
                    self.next_step(&course, &mut p, r, now, &mut out);
                }
                (ProgressState::Waiting, Step::Quiz { survey, .. }, Some(r)) => {
                    begins.entry(*survey).or_default().push((contact, r));
                    p.state = ProgressState::InQuiz;
                    p.due_ms = now + QUIZ_CHECK_MS;
                }
                (
                    ProgressState::InQuiz,
                    Step::Quiz {
                        survey, answers, ..
                    },
                    Some(r),
                ) => match self.surveys.standing(*survey, contact, now)? {
                    Some((_, true)) => p.due_ms = now + QUIZ_CHECK_MS,
                    Some((s, false)) if s.state == SessionState::Stopped => {
                        p.state = ProgressState::Stopped;
                    }
                    standing => {
                        let quiz = self.surveys.get(*survey);
                        let right = match (&standing, &quiz) {
                            (Some((s, _)), Some(quiz)) => answers
                                .iter()
                                .filter(|(qi, want)| {
                                    s.answers.iter().any(|(k, a)| {
                                        k == qi
                                            && show(&quiz.parsed.questions[*qi as usize], a)
                                                .eq_ignore_ascii_case(want)
                                    })
                                })
                                .count(),
                            _ => 0,
                        };
                        p.scores.push((p.step, right as u32, answers.len() as u32));
                        self.next_step(&course, &mut p, r, now, &mut out);
                    }
                },
                // A state that does not go with the step: move on.
                (_, _, Some(r)) => self.next_step(&course, &mut p, r, now, &mut out),
            }
            if p.state == ProgressState::Waiting || p.state == ProgressState::InQuiz {
                batch.put(Cf::Workflows, due_key(p.due_ms, id, contact), Vec::new());
            }
            batch.put(Cf::Workflows, k, encode(&p));
            let tally = match tallies.entry(id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.tally(id)?),
            };
            tally.moved(Some(&before), &p);
        }
        for (id, tally) in &tallies {
            batch.put(Cf::Workflows, tally_key(*id), encode(tally));
        }
        for (survey, workers) in begins {
            let (b, questions) = self.surveys.begin(survey, workers, now)?;
            batch.append(b);
            out.questions.extend(questions);
        }
        Ok((batch, out))
    }

    /// The step after the current one, due after its delay; or the end.
    fn next_step(
        &self,
        course: &CourseRecord,
        p: &mut Progress,
        r: Recipient,
        now: u64,
        out: &mut Due,
    ) {
        let next = p.step + 1;
        match course.steps.get(next as usize) {
            Some(step) => {
                p.step = next;
                p.state = ProgressState::Waiting;
                p.due_ms = now + step.delay_ms();
            }
            None => {
                p.state = ProgressState::Completed;
                p.completed_ms = Some(now);
                if let Some(c) = &course.completion {
                    out.lessons.push(Lesson {
                        course: course.id,
                        step: next,
                        text: c.for_language(r.language.as_deref()).0.to_string(),
                        recipient: r,
                    });
                }
            }
        }
    }
}

/// A key's right answer as [`show`] writes a worker's: an option's code,
/// `yes`/`no`, a number.
fn normalise(q: &super::questionnaire::Question, right: &str) -> Option<String> {
    let t = right.trim();
    let answer = match q.kind {
        Kind::Boolean => match t.to_ascii_lowercase().as_str() {
            "yes" | "true" | "1" => Answer::Boolean(true),
            "no" | "false" | "2" => Answer::Boolean(false),
            _ => return None,
        },
        Kind::Choice => Answer::Choice(
            q.options
                .iter()
                .position(|o| o.code.eq_ignore_ascii_case(t))? as u32,
        ),
        Kind::Integer => Answer::Integer(t.parse().ok()?),
        Kind::Decimal => Answer::Decimal(t.parse().ok()?),
        Kind::String => Answer::String(t.to_string()),
        Kind::Date => Answer::Date(super::survey::date(t)?),
    };
    Some(show(q, &answer))
}

/// A course's tally from every worker's progress.
pub(super) fn tally_by_scan(engine: &dyn Engine, course: &CourseRecord) -> Result<Tally> {
    let mut tally = Tally::new(course.steps.len());
    let mut after = None;
    loop {
        let page: Vec<Progress> = super::members(engine, PROGRESS, course.id, after, 1000)?;
        let Some(last) = page.last().map(|p| p.contact) else {
            return Ok(tally);
        };
        for p in &page {
            tally.moved(None, p);
        }
        after = Some(last);
    }
}

pub(super) fn tally_key(course: u64) -> Vec<u8> {
    key(TALLY, course)
}

fn progress_key(course: u64, contact: u32) -> Vec<u8> {
    member_key(PROGRESS, course, contact)
}

fn due_key(at: u64, course: u64, contact: u32) -> Vec<u8> {
    super::due_key(DUE, at, course, contact)
}
