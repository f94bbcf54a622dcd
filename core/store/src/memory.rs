//! The in-memory engine: ordered maps behind one lock. For tests and for
//! trying the broker out; nothing survives the process. Dropping a
//! [`crate::Store`] and opening another on the same engine models a
//! crash and restart: committed data stays, in-memory queue state is lost.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::engine::{Batch, Cf, Engine, Op, Ticket, Visit};
use crate::error::Result;

type Space = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryEngine {
    spaces: RwLock<[Space; Cf::COUNT]>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Engine for MemoryEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.spaces.read()[cf as usize].get(key).cloned())
    }

    fn scan(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        if lower >= upper {
            return Ok(());
        }
        let spaces = self.spaces.read();
        visit_all(range(&spaces[cf as usize], lower, upper), visit)
    }

    fn scan_rev(&self, cf: Cf, lower: &[u8], upper: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        if lower >= upper {
            return Ok(());
        }
        let spaces = self.spaces.read();
        visit_all(range(&spaces[cf as usize], lower, upper).rev(), visit)
    }

    fn submit(&self, batch: Batch) -> Ticket {
        let mut spaces = self.spaces.write();
        for op in batch.ops {
            match op {
                Op::Put { cf, key, value } => {
                    spaces[cf as usize].insert(key, value);
                }
                Op::Delete { cf, key } => {
                    spaces[cf as usize].remove(&key);
                }
                Op::DeleteRange { cf, from, to } => {
                    if from < to {
                        let space = &mut spaces[cf as usize];
                        let mut tail = space.split_off(&from);
                        let mut rest = tail.split_off(&to);
                        space.append(&mut rest);
                    }
                }
            }
        }
        drop(spaces);
        for hook in batch.on_commit {
            (hook.0)();
        }
        Ticket::done(Ok(()))
    }
}

/// The entries of `space` with `lower <= key < upper`.
fn range<'a>(
    space: &'a Space,
    lower: &[u8],
    upper: &[u8],
) -> std::collections::btree_map::Range<'a, Vec<u8>, Vec<u8>> {
    space.range::<[u8], _>((Bound::Included(lower), Bound::Excluded(upper)))
}

/// Visits entries in the order given until `visit` returns `false`.
fn visit_all<'a>(
    entries: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>,
    visit: &mut Visit<'_>,
) -> Result<()> {
    for (key, value) in entries {
        if !visit(key, value)? {
            break;
        }
    }
    Ok(())
}
