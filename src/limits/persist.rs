//! Spend and limit windows on disk, behind a small store trait (a shared store such as Redis can
//! implement it without touching the request path).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::counters::ScopeCounters;
use super::{Spend, Window};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub scopes: HashMap<String, ScopeFile>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScopeFile {
    pub day: Spend,
    pub month: Spend,
    pub requests: Window,
    pub tokens: Window,
    /// Per-model windows (requests, tokens), in the order of `model_globs`.
    #[serde(default)]
    pub models: Vec<(Window, Window)>,
    /// The glob of each entry of `models` (files written before it was added match by position).
    #[serde(default)]
    pub model_globs: Vec<String>,
}

impl ScopeFile {
    pub(super) fn from_counters(s: &ScopeCounters) -> Self {
        Self {
            day: s.day,
            month: s.month,
            requests: s.base.requests,
            tokens: s.base.tokens,
            models: s
                .models
                .iter()
                .map(|(_, m)| (m.requests, m.tokens))
                .collect(),
            model_globs: s.models.iter().map(|(g, _)| g.clone()).collect(),
        }
    }

    /// The saved per-model windows, each with the slot it belongs to.
    fn model_slots<'a>(
        &'a self,
        s: &ScopeCounters,
    ) -> impl Iterator<Item = (String, (Window, Window))> + 'a {
        let names: Vec<String> = if self.model_globs.is_empty() {
            s.models.iter().map(|(g, _)| g.clone()).collect()
        } else {
            self.model_globs.clone()
        };
        names.into_iter().zip(self.models.iter().copied())
    }

    pub(super) fn apply(&self, s: &mut ScopeCounters) {
        s.day = self.day;
        s.month = self.month;
        s.base.requests = self.requests;
        s.base.tokens = self.tokens;
        let slots: Vec<_> = self.model_slots(s).collect();
        for (glob, (r, t)) in slots {
            let m = s.slot_mut(Some(&glob));
            m.requests = r;
            m.tokens = t;
        }
    }

    /// `s += self - base`: what another writer of the same file counted since `base`.
    pub(super) fn merge_delta(&self, base: &ScopeFile, s: &mut ScopeCounters) {
        s.day.merge_delta(base.day, self.day);
        s.month.merge_delta(base.month, self.month);
        s.base.requests.merge_delta(base.requests, self.requests);
        s.base.tokens.merge_delta(base.tokens, self.tokens);
        let before: HashMap<String, (Window, Window)> = base.model_slots(s).collect();
        let slots: Vec<_> = self.model_slots(s).collect();
        for (glob, (r, t)) in slots {
            let (br, bt) = before.get(&glob).copied().unwrap_or_default();
            let m = s.slot_mut(Some(&glob));
            m.requests.merge_delta(br, r);
            m.tokens.merge_delta(bt, t);
        }
    }
}

/// Where counters live between runs.
pub trait CounterStore: Send + Sync {
    fn load(&self) -> Result<Option<StateFile>, String>;
    /// Replaces the stored state by `next(stored)`, with no other writer in between (two
    /// processes share the file during an upgrade); returns what was written.
    fn update(
        &self,
        next: &mut dyn FnMut(Option<StateFile>) -> StateFile,
    ) -> Result<StateFile, String>;
}

/// A JSON file, replaced atomically (write to a temporary file, fsync, rename), with updates
/// serialised across processes by an exclusive lock on `<path>.lock`.
pub struct FileStore {
    pub path: PathBuf,
}

impl FileStore {
    fn write(&self, state: &StateFile) -> std::io::Result<()> {
        // a name of its own per write: two writers never share a half-written file
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .path
            .with_extension(format!("tmp.{}.{seq}", std::process::id()));
        let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    fn lock(&self) -> std::io::Result<std::fs::File> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(name))?;
        f.lock()?;
        Ok(f)
    }
}

impl CounterStore for FileStore {
    fn load(&self) -> Result<Option<StateFile>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    fn update(
        &self,
        next: &mut dyn FnMut(Option<StateFile>) -> StateFile,
    ) -> Result<StateFile, String> {
        let at = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let _held = self.lock().map_err(at)?; // released when the file closes
                                              // an unreadable file is not merged, but still replaced: the live counters are newer
        let stored = self.load().ok().flatten();
        let state = next(stored);
        self.write(&state).map_err(at)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trips_and_tolerates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore {
            path: dir.path().join("sub/state.json"),
        };
        assert!(store.load().unwrap().is_none());
        let mut f = StateFile {
            version: 1,
            ..StateFile::default()
        };
        f.scopes.insert(
            "tenant:a".into(),
            ScopeFile {
                day: Spend {
                    window: 3,
                    usd: 1.5,
                },
                ..ScopeFile::default()
            },
        );
        store
            .update(&mut |old| {
                assert!(old.is_none());
                f.clone()
            })
            .unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.scopes["tenant:a"].day.usd, 1.5);
        assert!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count() == 2,
            "temporary file renamed away; the lock file stays"
        );
    }
}
