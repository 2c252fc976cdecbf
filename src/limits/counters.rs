//! The live limit counters: one cell per tenant and per key, kept by stable id (`tenant:<name>`,
//! `key:<digest prefix>`) across config snapshots. A reload builds new rules over the same
//! cells, so nothing is copied and no reservation can land in a stale copy.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::persist::{ScopeFile, StateFile};
use super::{Spend, Window};

/// Counts of one slot: a scope's own limits or one of its per-model limits.
#[derive(Debug, Default, Clone)]
pub struct SlotCounters {
    pub(super) requests: Window,
    pub(super) tokens: Window,
    pub(super) inflight: u64,
}

/// Everything counted for one tenant or key.
#[derive(Debug, Default)]
pub struct ScopeCounters {
    pub(super) base: SlotCounters,
    /// Per-model slots by glob pattern, in the order the config first named them.
    pub(super) models: Vec<(String, SlotCounters)>,
    pub(super) day: Spend,
    pub(super) month: Spend,
    /// Worst-case cost of admitted requests not yet settled.
    pub(super) reserved_usd: f64,
}

impl ScopeCounters {
    /// The slot for `pattern`, or the scope's own slot for `None`; created on first use.
    pub(super) fn slot_mut(&mut self, pattern: Option<&str>) -> &mut SlotCounters {
        let Some(p) = pattern else {
            return &mut self.base;
        };
        let i = match self.models.iter().position(|(g, _)| g == p) {
            Some(i) => i,
            None => {
                self.models.push((p.to_string(), SlotCounters::default()));
                self.models.len() - 1
            }
        };
        &mut self.models[i].1
    }
}

pub type Cell = Arc<Mutex<ScopeCounters>>;

/// The in-process counter store: every live cell by its stable id.
#[derive(Default)]
pub struct Counters {
    cells: Mutex<HashMap<String, Cell>>,
}

impl Counters {
    /// The cell for `id`, created empty the first time.
    pub fn cell(&self, id: &str) -> Cell {
        self.cells.lock().entry(id.to_string()).or_default().clone()
    }

    /// Drops the cells no config names any more, unless a running request still holds one.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.cells
            .lock()
            .retain(|id, c| live.contains(id) || Arc::strong_count(c) > 1);
    }

    /// Spend and windows of every cell, for persistence.
    pub fn export(&self) -> StateFile {
        let cells: Vec<(String, Cell)> = self
            .cells
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let scopes = cells
            .into_iter()
            .map(|(id, c)| (id, ScopeFile::from_counters(&c.lock())))
            .collect();
        StateFile { version: 1, scopes }
    }

    /// The existing cell for `id`: saved or merged counts of a tenant or key the config no
    /// longer names are not revived.
    fn existing(&self, id: &str) -> Option<Cell> {
        self.cells.lock().get(id).cloned()
    }

    /// Restores what [`Counters::export`] saved, for the scopes the config names.
    pub fn import(&self, file: &StateFile) {
        for (id, f) in &file.scopes {
            if let Some(c) = self.existing(id) {
                f.apply(&mut c.lock());
            }
        }
    }

    /// Adds what other writers of a shared file counted since `base` (the file as this process
    /// last read or wrote it) to the live cells: `file - base`, scope by scope.
    pub fn merge_since(&self, base: &StateFile, file: &StateFile) {
        let empty = ScopeFile::default();
        for (id, f) in &file.scopes {
            let b = base.scopes.get(id).unwrap_or(&empty);
            if let Some(c) = self.existing(id) {
                f.merge_delta(b, &mut c.lock());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_only_what_others_counted_since_the_base() {
        let c = Counters::default();
        let _held = c.cell("tenant:t");
        c.cell("tenant:t").lock().day = Spend {
            window: 5,
            usd: 3.0,
        };
        let base = c.export(); // the file as we wrote it: 3.0
        c.cell("tenant:t").lock().day.usd += 0.5; // ours since then
        let mut other = base.clone(); // another writer added 2.0 and wrote the file
        other.scopes.get_mut("tenant:t").unwrap().day.usd += 2.0;
        c.merge_since(&base, &other);
        let day = c.cell("tenant:t").lock().day;
        assert!((day.usd - 5.5).abs() < 1e-12, "{day:?}");
        c.merge_since(&other, &other);
        assert!(
            (c.cell("tenant:t").lock().day.usd - 5.5).abs() < 1e-12,
            "idempotent"
        );
    }

    #[test]
    fn a_new_window_in_the_file_starts_from_its_own_spend() {
        let mut cell = Spend {
            window: 4,
            usd: 9.0,
        };
        let base = Spend {
            window: 4,
            usd: 9.0,
        };
        cell.merge_delta(
            base,
            Spend {
                window: 5,
                usd: 1.0,
            },
        );
        assert_eq!(
            cell,
            Spend {
                window: 5,
                usd: 1.0
            }
        );
    }

    #[test]
    fn scopes_the_config_does_not_name_are_not_revived() {
        let c = Counters::default();
        let mut file = StateFile::default();
        file.scopes.insert("key:gone".into(), ScopeFile::default());
        c.import(&file);
        c.merge_since(&StateFile::default(), &file);
        assert!(c.export().scopes.is_empty());
    }

    #[test]
    fn unused_cells_go_and_held_ones_stay() {
        let c = Counters::default();
        let held = c.cell("key:a");
        c.cell("key:b");
        c.retain(&std::collections::HashSet::new());
        assert_eq!(c.export().scopes.len(), 1);
        drop(held);
        c.retain(&std::collections::HashSet::new());
        assert!(c.export().scopes.is_empty());
    }
}
