//! Spend and limit windows on disk, behind a small store trait (a shared store such as Redis can
//! implement it without touching the request path).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Scope, Spend, Window};

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
    #[serde(default)]
    pub models: Vec<(Window, Window)>,
}

impl ScopeFile {
    pub(super) fn from_scope(s: &Scope) -> Self {
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
        }
    }

    pub(super) fn apply(&self, s: &mut Scope) {
        s.day = self.day;
        s.month = self.month;
        s.base.requests = self.requests;
        s.base.tokens = self.tokens;
        for ((_, m), (r, t)) in s.models.iter_mut().zip(&self.models) {
            m.requests = *r;
            m.tokens = *t;
        }
    }
}

/// Where counters live between runs.
pub trait CounterStore: Send + Sync {
    fn load(&self) -> Result<Option<StateFile>, String>;
    fn save(&self, state: &StateFile) -> Result<(), String>;
}

/// A JSON file, replaced atomically (write to a temporary file, fsync, rename).
pub struct FileStore {
    pub path: PathBuf,
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

    fn save(&self, state: &StateFile) -> Result<(), String> {
        // a name of its own per write: two writers (the shutdown save and the drain's, or the
        // old and new process of an upgrade) never share a half-written file
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .path
            .with_extension(format!("tmp.{}.{seq}", std::process::id()));
        let body = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
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
        store.save(&f).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.scopes["tenant:a"].day.usd, 1.5);
        assert!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count() == 1,
            "temporary file renamed away"
        );
    }
}
