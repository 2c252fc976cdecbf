//! The local copy of a Postgres store's keys and tenants (digests, never secrets), so a gateway
//! that starts while the store is unreachable serves the keys it last saw.

use std::io::Write;
use std::path::Path;

use crate::control::Records;

/// Writes `records` to `path` atomically (a temporary file renamed over it), readable by this
/// user only.
pub fn save(path: &Path, records: &Records) -> Result<(), String> {
    let text = serde_json::to_vec(records).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    // a leftover temporary file may have wider permissions: start from a new one
    let _absent = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The records saved at `path`, if there are any.
pub fn load(path: &Path) -> Result<Option<Records>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_records_load_back_and_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        assert_eq!(load(&path).unwrap(), None);
        let r = Records {
            revision: 7,
            ..Default::default()
        };
        save(&path, &r).unwrap();
        assert_eq!(load(&path).unwrap(), Some(r));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
