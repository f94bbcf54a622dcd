//! The RocksDB engine: one database, one column family per [`Cf`], and a
//! group-commit writer thread.
//!
//! Callers submit batches on a channel; the writer drains whatever is
//! waiting (up to `max_group_ops` writes, lingering up to `group_linger`
//! for more when the group is small), commits it as one `WriteBatch` with a
//! synced WAL (`durability = "sync"`) or without fsync (`"async"`), then
//! acknowledges every caller in the group. Throughput comes from the size of
//! the groups, not from a fast disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, ErrorKind, Options,
    ReadOptions, WriteBatch, WriteOptions,
};
use tokio::sync::oneshot;

use super::engine::{Batch, Cf, Engine, Op, Ticket, Visit};
use super::keys;
use crate::config::{Durability, StoreConfig};
use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

struct Request {
    batch: Batch,
    ack: oneshot::Sender<Result<()>>,
}

pub struct RocksEngine {
    db: Arc<DB>,
    path: PathBuf,
    tx: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl RocksEngine {
    /// Visits `lower <= key < upper` upwards (`forward`) or downwards
    /// until `visit` returns `false`.
    fn walk(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
        forward: bool,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        if lower >= upper {
            return Ok(());
        }
        let Some(handle) = self.cf(cf) else {
            return Ok(());
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        // Queue scans read each entry once; keep them out of the block cache.
        ro.fill_cache(!cf.is_queue());
        let mut it = self.db.raw_iterator_cf_opt(handle, ro);
        if forward {
            it.seek(lower);
        } else {
            // The last key below the upper bound.
            it.seek_to_last();
        }
        while it.valid() {
            let (Some(key), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            if !visit(key, value)? {
                return Ok(());
            }
            if forward {
                it.next();
            } else {
                it.prev();
            }
        }
        it.status().map_err(|e| read_error(&self.path, e))
    }

    /// Opens the store at `path`, creating it when the folder is absent or
    /// empty. Refuses folders that hold anything else.
    pub fn open(path: &Path, config: &StoreConfig, metrics: StoreMetrics) -> Result<Self> {
        let fresh = prepare_dir(path)?;
        let mut opts = db_options(config, fresh);
        if !fresh {
            let families = DB::list_cf(&opts, path).map_err(|e| open_error(path, e))?;
            let missing: Vec<&str> = Cf::ALL
                .iter()
                .map(|cf| cf.name())
                .filter(|name| !families.iter().any(|f| f == name))
                .collect();
            let older = missing
                .iter()
                .all(|m| Cf::ADDED_LATER.iter().any(|cf| cf.name() == *m));
            if !missing.is_empty() && !older {
                return Err(missing_families(path, &opts, &missing));
            }
            // A store from before a family was added gets it now.
            opts.create_missing_column_families(true);
        }
        let db =
            DB::open_cf_descriptors(&opts, path, families()).map_err(|e| open_error(path, e))?;
        let db = Arc::new(db);
        check_schema(&db, path, fresh)?;

        let (tx, rx) = crossbeam_channel::bounded(config.max_queued_writes);
        let writer = {
            let db = Arc::clone(&db);
            let path = path.to_owned();
            let group = GroupPolicy {
                max_ops: config.max_group_ops,
                linger: Duration::from_micros(config.group_linger_us),
                sync: config.durability == Durability::Sync,
            };
            std::thread::Builder::new()
                .name("mhero-store-writer".into())
                .spawn(move || writer_loop(&db, &path, &rx, &group, &metrics))
                .map_err(Error::Spawn)?
        };
        Ok(Self {
            db,
            path: path.to_owned(),
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Opens an existing store for reading only: no writer, no lock taken
    /// (a running broker may hold the store), nothing written, ever.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::ForeignStore {
                    path: path.to_owned(),
                    reason: "it is a file, not a folder".into(),
                });
            }
            Ok(_) => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if !path.join("CURRENT").exists() {
            let empty = std::fs::read_dir(path)
                .map_err(|source| Error::Io {
                    path: path.to_owned(),
                    source,
                })?
                .next()
                .is_none();
            return Err(if empty {
                Error::Open {
                    path: path.to_owned(),
                    message: "the folder is empty: no store here yet".into(),
                }
            } else {
                Error::ForeignStore {
                    path: path.to_owned(),
                    reason: "the folder holds other files and no database".into(),
                }
            });
        }
        let opts = Options::default();
        let families = DB::list_cf(&opts, path).map_err(|e| open_error(path, e))?;
        let missing: Vec<&str> = Cf::ALL
            .iter()
            .map(|cf| cf.name())
            .filter(|name| !families.iter().any(|f| f == name))
            .filter(|name| !Cf::ADDED_LATER.iter().any(|cf| cf.name() == *name))
            .collect();
        if !missing.is_empty() {
            return Err(missing_families(path, &opts, &missing));
        }
        let present = Cf::ALL
            .iter()
            .filter(|cf| families.iter().any(|f| f == cf.name()))
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf)));
        let db = DB::open_cf_descriptors_read_only(&opts, path, present, false)
            .map_err(|e| open_error(path, e))?;
        let db = Arc::new(db);
        check_schema(&db, path, false)?;
        Ok(Self {
            db,
            path: path.to_owned(),
            tx: None,
            writer: None,
        })
    }

    /// The family's handle; `None` only for a family added after this
    /// store was written, opened read-only (it is then empty).
    fn cf(&self, cf: Cf) -> Option<&rocksdb::ColumnFamily> {
        self.db.cf_handle(cf.name())
    }
}

fn handle(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    // Every family is created or verified in `open`, so a missing handle is a
    // bug in this file, not bad input.
    db.cf_handle(cf.name())
        .expect("column family verified at open")
}

impl Drop for RocksEngine {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and stop.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(handle) = self.cf(cf) else {
            return Ok(None);
        };
        self.db
            .get_cf(handle, key)
            .map_err(|e| read_error(&self.path, e))
    }

    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let Some(handle) = self.cf(cf) else {
            return Ok(vec![None; keys.len()]);
        };
        // MultiGet reads a batch in key order (one pass through each
        // memtable and file); the answers go back in the caller's order.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
        let sorted = order.iter().map(|&i| &keys[i]);
        let mut out = vec![None; keys.len()];
        for (&i, got) in order
            .iter()
            .zip(self.db.batched_multi_get_cf(handle, sorted, true))
        {
            out[i] = got
                .map_err(|e| read_error(&self.path, e))?
                .map(|v| v.to_vec());
        }
        Ok(out)
    }

    fn scan(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        self.walk(cf, lower, upper, true, visit)
    }

    fn scan_rev(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        self.walk(cf, lower, upper, false, visit)
    }

    fn submit(&self, batch: Batch) -> Ticket {
        let (ack, rx) = oneshot::channel();
        match &self.tx {
            Some(tx) if tx.send(Request { batch, ack }).is_ok() => Ticket::pending(rx),
            Some(_) => Ticket::done(Err(Error::StoreClosed)),
            None => Ticket::done(Err(Error::ReadOnly {
                path: self.path.clone(),
            })),
        }
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

struct GroupPolicy {
    max_ops: usize,
    linger: Duration,
    sync: bool,
}

fn writer_loop(
    db: &DB,
    path: &Path,
    rx: &Receiver<Request>,
    policy: &GroupPolicy,
    metrics: &StoreMetrics,
) {
    let mut wo = WriteOptions::default();
    wo.set_sync(policy.sync);
    let mut group: Vec<Request> = Vec::new();
    // After a failed commit RocksDB may be read-only; every later write fails
    // with the first error so nothing is acknowledged that was not written.
    let mut failed: Option<rocksdb::Error> = None;
    while let Ok(first) = rx.recv() {
        let mut ops = first.batch.len();
        group.push(first);
        let started = Instant::now();
        while ops < policy.max_ops {
            let next = match rx.try_recv() {
                Ok(req) => req,
                Err(_) if policy.linger.is_zero() => break,
                Err(_) => {
                    let left = policy.linger.saturating_sub(started.elapsed());
                    match rx.recv_timeout(left) {
                        Ok(req) => req,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            ops += next.batch.len();
            group.push(next);
        }

        let result = match &failed {
            Some(message) => Err(message.clone()),
            None => commit(db, &wo, &mut group, ops, metrics),
        };
        if let Err(message) = &result
            && failed.is_none()
        {
            tracing::error!(path = %path.display(), error = %message, "Store write failed; the store refuses further writes.");
            failed = Some(message.clone());
        }
        for req in group.drain(..) {
            if result.is_ok() {
                for hook in req.batch.on_commit {
                    (hook.0)();
                }
            }
            let reply = result.clone().map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            });
            // A caller that stopped waiting is not an error.
            let _ = req.ack.send(reply);
        }
    }
}

fn commit(
    db: &DB,
    wo: &WriteOptions,
    group: &mut [Request],
    ops: usize,
    metrics: &StoreMetrics,
) -> std::result::Result<(), rocksdb::Error> {
    let started = Instant::now();
    let mut wb = WriteBatch::default();
    let mut bytes = 0usize;
    for req in group.iter_mut() {
        for op in req.batch.ops.drain(..) {
            match op {
                Op::Put { cf, key, value } => {
                    bytes += key.len() + value.len();
                    wb.put_cf(handle(db, cf), key, value);
                }
                Op::Delete { cf, key } => {
                    bytes += key.len();
                    wb.delete_cf(handle(db, cf), key);
                }
                Op::DeleteRange { cf, from, to } => {
                    bytes += from.len() + to.len();
                    wb.delete_range_cf(handle(db, cf), from, to);
                }
            }
        }
    }
    let result = if wb.is_empty() {
        Ok(())
    } else {
        db.write_opt(wb, wo)
    };
    metrics.observe_group(group.len(), ops, bytes, started.elapsed());
    result
}

/// A database without our column families is foreign, unless it carries
/// our schema marker: then it is an mHero store that lost them (corrupt).
fn missing_families(path: &Path, opts: &Options, missing: &[&str]) -> Error {
    match DB::open_for_read_only(opts, path, false) {
        Err(e) => open_error(path, e),
        Ok(db) => match db.get(keys::SCHEMA) {
            Ok(Some(_)) => Error::Corrupt {
                path: path.to_owned(),
                message: format!("the column families {} are missing", missing.join(", ")),
            },
            Ok(None) => Error::ForeignStore {
                path: path.to_owned(),
                reason: format!(
                    "it is a RocksDB database without the column families {}",
                    missing.join(", ")
                ),
            },
            Err(e) => read_error(path, e),
        },
    }
}

/// Creates the folder when absent; tells whether it holds no store yet.
fn prepare_dir(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(Error::ForeignStore {
            path: path.to_owned(),
            reason: "it is a file, not a folder".into(),
        }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            let empty = entries.next().is_none();
            if !empty && !path.join("CURRENT").exists() {
                return Err(Error::ForeignStore {
                    path: path.to_owned(),
                    reason: "the folder holds other files and no database".into(),
                });
            }
            Ok(empty)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            Ok(true)
        }
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn check_schema(db: &DB, path: &Path, fresh: bool) -> Result<()> {
    let meta = handle(db, Cf::Meta);
    let found = db
        .get_cf(meta, keys::SCHEMA)
        .map_err(|e| read_error(path, e))?;
    match found {
        Some(value) => keys::check_schema(&value).map_err(|reason| Error::ForeignStore {
            path: path.to_owned(),
            reason,
        }),
        None if fresh => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let mut wb = WriteBatch::default();
            wb.put_cf(meta, keys::SCHEMA, keys::schema_value());
            db.write_opt(wb, &wo).map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            })
        }
        None => Err(Error::ForeignStore {
            path: path.to_owned(),
            reason: "it is a RocksDB database without the mHero schema marker".into(),
        }),
    }
}

/// The options the engine opens a new database with, and one column family
/// per [`Cf`] with its own options: what a raw-RocksDB baseline of the
/// store's writes (`loadgen store`'s limit) must run on to do the same work.
pub fn raw_options(config: &StoreConfig) -> (Options, Vec<ColumnFamilyDescriptor>) {
    (db_options(config, true), families())
}

fn families() -> Vec<ColumnFamilyDescriptor> {
    Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf)))
        .collect()
}

fn db_options(config: &StoreConfig, fresh: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(fresh);
    opts.create_missing_column_families(fresh);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(config.max_wal_mb << 20);
    opts.increase_parallelism(2);
    opts
}

fn cf_options(cf: Cf) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    if cf.is_queue() {
        // Consumed queue ranges become tombstones; files dense with them get
        // compacted away instead of slowing every later scan.
        opts.add_compact_on_deletion_collector_factory(128, 64, 0.5);
        opts.set_write_buffer_size(64 << 20);
    } else {
        // Point reads (a receipt's gateway id, then its status record; a
        // contact; a campaign) mostly ask for keys written moments ago:
        // whole-key Bloom filters in each table file let a read skip every
        // file that cannot hold its key instead of searching (and
        // decompressing a block of) each one. Not in the memtable: that
        // filter is updated on every write and cost the queue's writes
        // about 15 % (`loadgen store`).
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
    }
    opts
}

fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let message = e.clone().into_string();
    if message.contains("lock")
        && (message.contains("LOCK") || message.contains("Resource temporarily unavailable"))
    {
        return Error::Locked {
            path: path.to_owned(),
        };
    }
    match e.kind() {
        ErrorKind::Corruption => Error::Corrupt {
            path: path.to_owned(),
            message,
        },
        _ => Error::Open {
            path: path.to_owned(),
            message,
        },
    }
}

fn read_error(path: &Path, e: rocksdb::Error) -> Error {
    let message = e.clone().into_string();
    match e.kind() {
        ErrorKind::Corruption => Error::Corrupt {
            path: path.to_owned(),
            message,
        },
        _ => Error::Read {
            path: path.to_owned(),
            source: e,
        },
    }
}
