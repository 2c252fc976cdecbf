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

impl SlotCounters {
    fn idle(&self, now_ms: u64) -> bool {
        self.inflight == 0 && self.requests.expired(now_ms) && self.tokens.expired(now_ms)
    }
}

impl ScopeCounters {
    /// Holds nothing that could still refuse a request: no request in flight or reserved, no
    /// count inside the rate window, no spend in the current day or month.
    fn idle(&self, now_ms: u64) -> bool {
        let spent = |s: &Spend, window: u64| s.window == window && s.usd > 0.0;
        self.base.idle(now_ms)
            && self.models.iter().all(|(_, m)| m.idle(now_ms))
            && self.reserved_usd <= 0.0
            && !spent(&self.day, crate::clock::day_id(now_ms))
            && !spent(&self.month, crate::clock::month_id(now_ms))
    }

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

    /// Drops the cells the config no longer names once they hold nothing (`now_ms`): a tenant
    /// or key removed and added back within its budget window keeps its spend, and the map
    /// does not grow with keys that are gone.
    pub fn retain(&self, live: &std::collections::HashSet<String>, now_ms: u64) {
        self.cells.lock().retain(|id, c| {
            live.contains(id)
                || Arc::strong_count(c) > 1
                || c.try_lock().is_none_or(|c| !c.idle(now_ms))
        });
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

    /// Restores what [`Counters::export`] saved (scopes the config does not name are kept until
    /// they hold nothing, in case a reload names them again).
    pub fn import(&self, file: &StateFile) {
        for (id, f) in &file.scopes {
            f.apply(&mut self.cell(id).lock());
        }
    }

    /// Adds what other writers of a shared file counted since `base` (the file as this process
    /// last read or wrote it) to the live cells: `file - base`, scope by scope.
    pub fn merge_since(&self, base: &StateFile, file: &StateFile) {
        let empty = ScopeFile::default();
        for (id, f) in &file.scopes {
            let b = base.scopes.get(id).unwrap_or(&empty);
            f.merge_delta(b, &mut self.cell(id).lock());
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
    fn cells_no_config_names_stay_while_they_hold_spend_or_a_request() {
        const T: u64 = 1_795_341_600_000; // 2026-11-22 10:00 UTC
        let c = Counters::default();
        let mut file = StateFile::default();
        let spent = ScopeFile {
            day: Spend {
                window: crate::clock::day_id(T),
                usd: 2.0,
            },
            ..ScopeFile::default()
        };
        file.scopes.insert("key:gone".into(), spent);
        file.scopes.insert("key:stale".into(), ScopeFile::default());
        c.import(&file);
        let held = c.cell("key:running");
        held.lock().base.inflight = 1;
        c.retain(&std::collections::HashSet::new(), T);
        let kept: Vec<String> = {
            let mut k: Vec<String> = c.export().scopes.into_keys().collect();
            k.sort();
            k
        };
        assert_eq!(
            kept,
            ["key:gone", "key:running"],
            "today's spend and a running request stay"
        );
        drop(held);
        c.cell("key:running").lock().base.inflight = 0;
        let next_day = T + 86_400_000;
        c.retain(&std::collections::HashSet::new(), next_day);
        assert!(
            c.export().scopes.is_empty(),
            "a day later nothing is left to keep"
        );
    }

    #[test]
    fn unused_cells_go_and_held_ones_stay() {
        let c = Counters::default();
        let held = c.cell("key:a");
        c.cell("key:b");
        c.retain(&std::collections::HashSet::new(), 0);
        assert_eq!(c.export().scopes.len(), 1);
        drop(held);
        c.retain(&std::collections::HashSet::new(), 0);
        assert!(c.export().scopes.is_empty());
    }
}
