//! The storage engine boundary: a few ordered key spaces, atomic batches,
//! bounded scans. The queue logic in [`super::queue`] is written once against
//! this trait and runs on both engines.

use std::future::IntoFuture;
use std::pin::Pin;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The key spaces (RocksDB column families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Cf {
    /// Schema marker, channel names, queue heads, counters.
    Meta = 0,
    /// Campaign bodies, one per campaign.
    Campaigns = 1,
    /// Ready and leased deliveries: `channel | lane | campaign | qseq`.
    Ready = 2,
    /// Deliveries waiting for a retry: `due_ms | channel | lane | delivery`.
    Delayed = 3,
    /// Dead letters: `delivery`.
    Dead = 4,
    /// The status record of every delivery that left the queue: `delivery`.
    Status = 5,
    /// Receipt index: `channel | external id` → delivery.
    External = 6,
    /// Explicit campaign audiences: `campaign | index` → recipient.
    Audience = 7,
    /// Inbound messages as webhooks brought them: `seq`, the
    /// de-duplication index `channel | external id` → seq, and what the
    /// inbound pipeline made of each (`seq` → result, its position, the
    /// recent-text index, subscribers' positions).
    Inbound = 8,
    /// The directory's contacts: `number` (u32, dense) → contact record.
    Contacts = 9,
    /// The directory's indexes and sources: posting lists, locations,
    /// groups, look-ups by source id and by address, sync marks.
    Directory = 10,
    /// Audiences frozen at submit: `campaign` → the selected contact
    /// numbers (a serialized bitmap).
    Frozen = 11,
    /// What was last handed over to each address on each channel:
    /// `channel | address` → delivery, so a reply finds what it answers.
    LastSent = 12,
    /// Two-way workflows: flash surveys, their sessions (one per worker),
    /// aggregates and timeouts.
    Workflows = 13,
}

impl Cf {
    pub const ALL: [Cf; 14] = [
        Cf::Meta,
        Cf::Campaigns,
        Cf::Ready,
        Cf::Delayed,
        Cf::Dead,
        Cf::Status,
        Cf::External,
        Cf::Audience,
        Cf::Inbound,
        Cf::Contacts,
        Cf::Directory,
        Cf::Frozen,
        Cf::LastSent,
        Cf::Workflows,
    ];
    /// Families added after the first release: a store without them is
    /// older, not foreign; they are created when it opens.
    pub const ADDED_LATER: [Cf; 6] = [
        Cf::Inbound,
        Cf::Contacts,
        Cf::Directory,
        Cf::Frozen,
        Cf::LastSent,
        Cf::Workflows,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub const fn name(self) -> &'static str {
        match self {
            Cf::Meta => "default",
            Cf::Campaigns => "campaigns",
            Cf::Ready => "ready",
            Cf::Delayed => "delayed",
            Cf::Dead => "dead",
            Cf::Status => "status",
            Cf::External => "external",
            Cf::Audience => "audience",
            Cf::Inbound => "inbound",
            Cf::Contacts => "contacts",
            Cf::Directory => "directory",
            Cf::Frozen => "frozen",
            Cf::LastSent => "last_sent",
            Cf::Workflows => "workflows",
        }
    }

    /// Key spaces where consumed ranges are deleted and tombstones pile up.
    pub const fn is_queue(self) -> bool {
        matches!(self, Cf::Ready | Cf::Delayed | Cf::Dead)
    }
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes every key in `[from, to)`.
    DeleteRange {
        cf: Cf,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// Writes applied atomically: all or none, even across a crash.
#[derive(Debug, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// Run by the engine once the batch is committed, in commit order;
    /// never when it fails.
    pub on_commit: Vec<OnCommit>,
}

/// Work that may happen only once a batch is durable (in-memory views of
/// what is committed).
pub struct OnCommit(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for OnCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCommit")
    }
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { cf, key, value });
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(Op::Delete { cf, key });
    }

    pub fn delete_range(&mut self, cf: Cf, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(Op::DeleteRange { cf, from, to });
    }

    /// Runs `f` once the batch is committed.
    pub fn on_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_commit.push(OnCommit(Box::new(f)));
    }

    /// Adds `other`'s writes (and commit hooks) after these.
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.on_commit.extend(other.on_commit);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// The callback of [`Engine::scan`]: gets each key and value, returns
/// whether to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A storage engine.
///
/// Writes are *submitted* in order and *committed* later, in the same order;
/// a reader sees a batch only once it is committed, and a committed batch
/// implies every batch submitted before it is committed too. Callers that
/// need their own earlier writes visible wait for the [`Ticket`] first.
pub trait Engine: Send + Sync + 'static {
    /// The value under `key`, if committed.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values under `keys`, in their order: one batched read where the
    /// engine has one (receipts look up a whole webhook's worth at once).
    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }

    /// Visits committed entries with `lower <= key < upper` in key order
    /// until `visit` returns `false`.
    fn scan(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()>;

    /// [`Engine::scan`] from the highest key down: what "the newest n"
    /// reads when keys grow with time.
    fn scan_rev(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()>;

    /// Queues `batch` for commit behind every batch submitted before it.
    fn submit(&self, batch: Batch) -> Ticket;

    /// Submits and waits for the commit.
    fn write(&self, batch: Batch) -> Result<()> {
        self.submit(batch).wait()
    }

    /// Waits until everything submitted so far is committed.
    fn barrier(&self) -> Result<()> {
        self.write(Batch::new())
    }

    /// Where the data lives, for error messages; `None` for memory.
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
}

/// The acknowledgement of one submitted batch: resolves once it is
/// committed (durably, under `durability = "sync"`).
#[must_use = "a write is acknowledged only when its ticket is waited on"]
pub struct Ticket(TicketInner);

enum TicketInner {
    Done(Result<()>),
    Pending(oneshot::Receiver<Result<()>>),
}

impl Ticket {
    pub fn done(result: Result<()>) -> Self {
        Ticket(TicketInner::Done(result))
    }

    pub fn pending(rx: oneshot::Receiver<Result<()>>) -> Self {
        Ticket(TicketInner::Pending(rx))
    }

    /// Blocks the calling thread until the commit. In async code `.await`
    /// the ticket instead; blocking is allowed there too (it parks only this
    /// thread, for one commit) for the rare synchronous paths.
    pub fn wait(self) -> Result<()> {
        match self.0 {
            TicketInner::Done(result) => result,
            TicketInner::Pending(rx) => block_on(rx).unwrap_or(Err(Error::StoreClosed)),
        }
    }
}

/// Parks the thread until `fut` resolves. (tokio's `blocking_recv` refuses
/// to run on a runtime thread; a commit wait is short enough to allow.)
fn block_on<F: Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

impl IntoFuture for Ticket {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.0 {
                TicketInner::Done(result) => result,
                TicketInner::Pending(rx) => rx.await.unwrap_or(Err(Error::StoreClosed)),
            }
        })
    }
}

/// A value whose writes are submitted but maybe not yet committed. Use the
/// value only after [`Pending::wait`] (or `.await`) succeeds.
#[must_use = "a write is acknowledged only when it is waited on"]
pub struct Pending<T> {
    value: T,
    ticket: Ticket,
}

impl<T: Send + 'static> Pending<T> {
    pub fn new(value: T, ticket: Ticket) -> Self {
        Self { value, ticket }
    }

    pub fn ready(value: T) -> Self {
        Self {
            value,
            ticket: Ticket::done(Ok(())),
        }
    }

    pub fn wait(self) -> Result<T> {
        self.ticket.wait().map(|()| self.value)
    }

    /// The value now and the commit ticket, for a caller that submits
    /// more behind it and waits only for the last: a later commit implies
    /// this one (and a failed one fails every later write).
    pub fn split(self) -> (T, Ticket) {
        (self.value, self.ticket)
    }

    /// The commit ticket alone, for callers that keep the value elsewhere.
    pub fn into_ticket(self) -> Ticket {
        self.ticket
    }
}

impl<T: Send + 'static> IntoFuture for Pending<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.ticket.await.map(|()| self.value) })
    }
}
