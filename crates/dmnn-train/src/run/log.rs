//! Run logs and atomic file writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes a file atomically: to a temporary name in the same directory, flushed and synced,
/// its size checked, then renamed. A write that fails (a full disk) leaves nothing behind: no
/// temporary file, and the file under its final name as it was.
///
/// # Errors
/// Any I/O error of the write, the sync or the rename; a size on disk other than the bytes'.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut files = AtomicFiles::default();
    files.stage(path, bytes)?;
    files.commit().map_err(|(_, e)| e)
}

/// Files that belong together (a record and its checksum), written atomically as a group: every
/// file is written to its temporary name, synced and its size checked ([`stage`](Self::stage))
/// before any is renamed ([`commit`](Self::commit)). A write that fails (a full disk, on any of
/// them) leaves none of them behind — no temporary file, every final name as it was — so a
/// record is never found without the checksum written with it. Dropped uncommitted, the
/// temporary files are removed.
#[derive(Debug, Default)]
pub struct AtomicFiles {
    /// (temporary, final) names of the files written, not yet renamed.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl AtomicFiles {
    /// Writes `bytes` to `path`'s temporary name (`<path>.tmp`), synced, its size checked.
    ///
    /// # Errors
    /// Any I/O error of the write or the sync; a size on disk other than the bytes'. The
    /// temporary file is removed (the ones staged before are removed when `self` is dropped).
    pub fn stage(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension(format!(
            "{}.tmp",
            path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        fault::crash_point("writing", path);
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.flush()?;
            f.sync_all()?;
            let size = f.metadata()?.len();
            if size != bytes.len() as u64 {
                return Err(std::io::Error::other(format!("{size} bytes on disk, {} written", bytes.len())));
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        fault::crash_point("written", path);
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every staged file to its final name, in the order staged.
    ///
    /// # Errors
    /// The final name that could not be renamed to, and the error; the files not yet renamed
    /// are removed.
    pub fn commit(mut self) -> Result<(), (PathBuf, std::io::Error)> {
        while !self.staged.is_empty() {
            let (tmp, path) = self.staged.remove(0);
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err((path, e));
            }
            fault::crash_point("renamed", &path);
        }
        Ok(())
    }
}

impl Drop for AtomicFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Fault injection for the crash-safety tests: `DMNN_FAULT=crash:STAGE:FILE` aborts the process
/// (no destructor runs, nothing is flushed: as `kill -9` would) when [`AtomicFiles`] reaches
/// `STAGE` for the file named `FILE` — `writing` (nothing written yet), `written` (the temporary
/// file complete, not yet renamed), `renamed` (under its final name; for a record, its checksum
/// written but not yet renamed); `DMNN_FAULT=stop-after-epoch:K` stops training after epoch K through the Learner's
/// interrupter, as the terminal UI's stop does. Unset, nothing happens.
pub mod fault {
    use std::path::Path;
    use std::sync::OnceLock;

    /// The variable.
    pub const VAR: &str = "DMNN_FAULT";

    fn fault() -> Option<&'static str> {
        static FAULT: OnceLock<Option<String>> = OnceLock::new();
        FAULT.get_or_init(|| std::env::var(VAR).ok()).as_deref()
    }

    /// Aborts here if the fault names this stage and file.
    pub fn crash_point(stage: &str, path: &Path) {
        let Some(spec) = fault().and_then(|f| f.strip_prefix("crash:")) else { return };
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if spec.split_once(':').is_some_and(|(s, f)| s == stage && f == name) {
            eprintln!("{VAR}: crashing at {stage} {}", path.display());
            std::process::abort();
        }
    }

    /// The epoch after which training is to stop, if the fault asks.
    pub fn stop_after_epoch() -> Option<usize> {
        fault()?.strip_prefix("stop-after-epoch:")?.parse().ok()
    }
}

/// Seconds since the Unix epoch as `YYYYmmdd-HHMMSS` (UTC).
pub fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A line-oriented log shared by the renderer and the driver: to the terminal (stderr) and to
/// `train.log` in the run directory.
#[derive(Clone)]
pub struct RunLog {
    file: Arc<Mutex<Option<File>>>,
    quiet: bool,
}

impl RunLog {
    /// A log appending to `path`; `quiet` keeps it off the terminal (Burn's TUI owns it).
    ///
    /// # Errors
    /// If `path` cannot be opened for appending.
    pub fn open(path: &Path, quiet: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Arc::new(Mutex::new(Some(file))), quiet })
    }

    /// Writes one line.
    pub fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
        self.file_only(text);
    }

    /// Writes one line to the file only.
    pub fn file_only(&self, text: &str) {
        if let Some(f) = self.file.lock().expect("log file").as_mut() {
            let _ = writeln!(f, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_the_right_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = std::env::temp_dir().join(format!("dmnn-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("summary.json");
        write_atomic(&p, b"{\"a\":1}").unwrap();
        write_atomic(&p, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":2}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
