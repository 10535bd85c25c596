//! The recorder of every checkpoint and model file: Burn's named MessagePack format, written
//! atomically with a checksum beside it, verified when read, and read back from records of
//! older dmnn versions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use burn::record::{BurnRecord, FileRecorder, FullPrecisionSettings, Record, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use serde::{de::DeserializeOwned, Serialize};

use super::log::AtomicFiles;

/// Burn's named MessagePack recorder (the same bytes as `NamedMpkFileRecorder`), made atomic: the
/// record is written to `<name>.mpk.tmp`, synced, its size checked and renamed to `<name>.mpk`,
/// so a run killed mid-write never leaves a checkpoint that fails to load, and a write that
/// fails (a full disk: "no space left on device: PATH") is an error, never an empty file under
/// the final name. Beside it goes `<name>.mpk.sha256`: the SHA-256 and size of the record's
/// bytes, checked on every load, so a damaged file (a flipped bit) is an error naming it. Both
/// are written before either is renamed ([`AtomicFiles`]): a disk that fills on the checksum
/// leaves neither, never a record without its checksum. Records without that file (written by
/// dmnn before it had them) load unchecked.
///
/// Records written before dmnn's module layout changed are migrated on load
/// ([`migrate_record`]): they keep loading, bit for bit.
#[derive(Debug, Default, Clone)]
pub struct AtomicRecorder;

impl<B: Backend> FileRecorder<B> for AtomicRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

impl<B: Backend> Recorder<B> for AtomicRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let path = file.with_extension("mpk");
        let bytes = rmp_serde::to_vec_named(&item).map_err(|e| RecorderError::Unknown(e.to_string()))?;
        let failed = |p: &Path, e: std::io::Error| RecorderError::Unknown(crate::error::io_message(p, &e));
        let sum = checksum_file(&path);
        let mut files = AtomicFiles::default();
        files.stage(&path, &bytes).map_err(|e| failed(&path, e))?;
        files.stage(&sum, checksum_line(&bytes).as_bytes()).map_err(|e| failed(&sum, e))?;
        files.commit().map_err(|(p, e)| failed(&p, e))
    }

    /// Burn's `load` without its panic: turning the decoded item into tensors asserts on values
    /// a damaged file can hold (a parameter id that is not one), so that step runs guarded. Burn's
    /// "the format has changed since 0.14" hint is left out too: for a damaged file it misleads.
    fn load<R: Record<B>>(&self, mut file: PathBuf, device: &B::Device) -> Result<R, RecorderError> {
        let item: BurnRecord<R::Item<FullPrecisionSettings>, B> = Recorder::<B>::load_item(self, &mut file)?;
        quietly(|| R::from_item(item.item, device)).map_err(|()| {
            RecorderError::DeserializeError(format!(
                "{}: a value of the record is not what its type accepts (damaged file)",
                file.with_extension("mpk").display()
            ))
        })
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        let path = file.with_extension("mpk");
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RecorderError::FileNotFound(path.display().to_string()),
            _ => RecorderError::Unknown(format!("{}: {e}", path.display())),
        })?;
        verify(&path, &bytes).map_err(RecorderError::DeserializeError)?;
        let first = match decode::<I>(&bytes) {
            Ok(item) => return Ok(item),
            Err(e) => e,
        };
        // a record of an older layout decodes as a value, migrates, and decodes again
        let migrated = rmpv::decode::read_value(&mut bytes.as_slice()).ok().and_then(|mut value| {
            migrate_record(&mut value).then(|| {
                let mut out = Vec::with_capacity(bytes.len());
                rmpv::encode::write_value(&mut out, &value).ok().map(|_| out)
            })?
        });
        match migrated {
            Some(bytes) => decode::<I>(&bytes).map_err(RecorderError::DeserializeError),
            None => Err(RecorderError::DeserializeError(first)),
        }
    }
}

/// The checkpoint records whose tensors are still being read to the host.
///
/// Burn's Learner hands each checkpoint's three records (the model's, the optimiser's, the
/// scheduler's) to a thread of their own and goes on training. Those threads read the records'
/// tensors, which are clones of the training thread's: on Burn 0.21's fused backends (WGPU,
/// CUDA) a read on one thread while another drops a clone can free the tensor before the read
/// happens ("Should have handle for tensor"). The optimiser's step drops the old parameters and
/// moments. So training waits, before its next step, until every record it handed over has been
/// read ([`CheckpointReads::wait`]). The files are then written while training goes on.
#[derive(Debug, Default)]
pub struct CheckpointReads {
    pending: Mutex<usize>,
    read: Condvar,
}

impl CheckpointReads {
    /// Records of one checkpoint: the model's, the optimiser's and the scheduler's.
    pub const PER_CHECKPOINT: usize = 3;

    /// `records` more records are on their way to the checkpointer's threads.
    pub fn expect(&self, records: usize) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += records;
    }

    /// Blocks until every record expected has been read.
    pub fn wait(&self) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.read.wait_while(pending, |n| *n > 0).unwrap_or_else(|e| e.into_inner()));
    }

    fn read_one(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.read.notify_all();
        }
    }
}

/// The recorder of Burn's checkpointer: [`AtomicRecorder`]'s files, byte for byte, and every
/// record's tensors read to the host counted in [`CheckpointReads`] (read or not: a record
/// whose read panicked counts too, so training never waits for it).
#[derive(Debug, Default, Clone)]
pub struct CheckpointRecorder {
    reads: Arc<CheckpointReads>,
}

impl CheckpointRecorder {
    /// A recorder that reports its reads to `reads`.
    pub fn new(reads: Arc<CheckpointReads>) -> Self {
        Self { reads }
    }
}

impl<B: Backend> FileRecorder<B> for CheckpointRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

impl<B: Backend> Recorder<B> for CheckpointRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn record<R: Record<B>>(&self, record: R, file: PathBuf) -> Result<(), RecorderError> {
        struct Read<'a>(&'a CheckpointReads);
        impl Drop for Read<'_> {
            fn drop(&mut self) {
                self.0.read_one();
            }
        }
        let item = {
            let _read = Read(&self.reads);
            record.into_item::<FullPrecisionSettings>()
        };
        // the same metadata as AtomicRecorder's records, so the files are the same bytes
        let item = BurnRecord::<_, B>::new::<AtomicRecorder>(item);
        Recorder::<B>::save_item(&AtomicRecorder, item, file)
    }

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        Recorder::<B>::save_item(&AtomicRecorder, item, file)
    }

    fn load<R: Record<B>>(&self, file: PathBuf, device: &B::Device) -> Result<R, RecorderError> {
        Recorder::<B>::load(&AtomicRecorder, file, device)
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&AtomicRecorder, file)
    }
}

/// The checksum file of the record at `path` (`model-2.mpk` → `model-2.mpk.sha256`).
pub fn checksum_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// `<sha256 hex> <size>`: what a checksum file holds.
fn checksum_line(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex} {}\n", bytes.len())
}

/// Checks `bytes`, read from `path`, against the checksum written with them. `Ok(true)`: they
/// match; `Ok(false)`: there is no checksum (a record of an older dmnn).
///
/// # Errors
/// Bytes that are not the ones written, or an unreadable checksum file, named.
pub fn verify(path: &Path, bytes: &[u8]) -> Result<bool, String> {
    let sum = checksum_file(path);
    let expected = match std::fs::read_to_string(&sum) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", sum.display())),
    };
    if expected.trim() == checksum_line(bytes).trim() {
        return Ok(true);
    }
    let size = expected.split_whitespace().nth(1).unwrap_or("?");
    Err(format!(
        "{} is damaged: its bytes ({} of them) are not the ones written with it ({size} bytes, SHA-256 in {})",
        path.display(),
        bytes.len(),
        sum.display()
    ))
}

/// Checks the record file at `path` against its checksum (see [`verify`]).
///
/// # Errors
/// A missing file, bytes that are not the ones written, named.
pub fn verify_file(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    verify(path, &bytes)
}

/// Decodes a MessagePack record. Some of Burn's `Deserialize` impls panic on a value they do not
/// accept (a parameter id that is not an id: "Invalid id."); a damaged file is an error here.
fn decode<I: DeserializeOwned>(bytes: &[u8]) -> Result<I, String> {
    match quietly(|| rmp_serde::from_slice::<I>(bytes)) {
        Ok(decoded) => decoded.map_err(|e| e.to_string()),
        Err(()) => Err("a value of the record is not what its type accepts (damaged file)".into()),
    }
}

/// Runs `f`, turning a panic into `Err(())` without printing it: for Burn's assertions on
/// damaged or mismatched records, whose messages ours replace.
fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|_| ())
}

/// Rewrites, in place, a record written before the layout changes of dmnn 0.1 (commit 65f1d8b
/// and earlier): a path became an enum of its kind (`{conv1, .., conv3: nil, bn3: nil}` →
/// `{"Basic": {conv1, bn1, conv2, bn2}}`, with `conv3` → `{"Bottleneck": {..}}`), and the
/// controller's `gru` / `lstm` options one `recurrent` option of an enum. Returns whether it
/// changed anything; a record of the current layout is left alone.
pub fn migrate_record(value: &mut rmpv::Value) -> bool {
    let mut changed = false;
    match value {
        rmpv::Value::Map(entries) => {
            if let Some(rmpv::Value::Array(paths)) =
                entries.iter_mut().find(|(k, _)| k.as_str() == Some("paths")).map(|(_, v)| v)
            {
                for path in paths.iter_mut() {
                    changed |= migrate_path(path);
                }
            }
            changed |= migrate_recurrent(entries);
            for (_, v) in entries.iter_mut() {
                changed |= migrate_record(v);
            }
        }
        rmpv::Value::Array(items) => {
            for v in items.iter_mut() {
                changed |= migrate_record(v);
            }
        }
        _ => {}
    }
    changed
}

fn key(name: &str) -> rmpv::Value {
    rmpv::Value::String(name.into())
}

fn take(entries: &mut Vec<(rmpv::Value, rmpv::Value)>, name: &str) -> Option<rmpv::Value> {
    let i = entries.iter().position(|(k, _)| k.as_str() == Some(name))?;
    Some(entries.remove(i).1)
}

/// An old path record (a map with `conv1`) becomes `{Kind: {fields}}`.
fn migrate_path(path: &mut rmpv::Value) -> bool {
    let rmpv::Value::Map(entries) = path else { return false };
    if !entries.iter().any(|(k, _)| k.as_str() == Some("conv1")) {
        return false;
    }
    let bottleneck = entries.iter().any(|(k, v)| k.as_str() == Some("conv3") && !v.is_nil());
    let mut fields = std::mem::take(entries);
    if !bottleneck {
        fields.retain(|(k, _)| !matches!(k.as_str(), Some("conv3" | "bn3")));
    }
    let kind = if bottleneck { "Bottleneck" } else { "Basic" };
    *path = rmpv::Value::Map(vec![(key(kind), rmpv::Value::Map(fields))]);
    true
}

/// An old controller record (`gru` and `lstm` options) gets one `recurrent` option.
fn migrate_recurrent(entries: &mut Vec<(rmpv::Value, rmpv::Value)>) -> bool {
    let has =
        |entries: &Vec<(rmpv::Value, rmpv::Value)>, name: &str| entries.iter().any(|(k, _)| k.as_str() == Some(name));
    if !(has(entries, "gru") && has(entries, "lstm") && has(entries, "blocks")) {
        return false;
    }
    let gru = take(entries, "gru").filter(|v| !v.is_nil());
    let lstm = take(entries, "lstm").filter(|v| !v.is_nil());
    let recurrent = match (gru, lstm) {
        (Some(cell), _) => rmpv::Value::Map(vec![(key("Gru"), cell)]),
        (None, Some(cell)) => rmpv::Value::Map(vec![(key("Lstm"), cell)]),
        (None, None) => rmpv::Value::Nil,
    };
    entries.push((key("recurrent"), recurrent));
    true
}

/// The shapes of a module's parameters, in visiting order.
struct ParamShapes(Vec<Vec<usize>>);

impl<B: Backend> burn::module::ModuleVisitor<B> for ParamShapes {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
        self.0.push(param.val().dims().to_vec());
    }
}

fn param_shapes<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<Vec<usize>> {
    let mut shapes = ParamShapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}

/// Loads `record` (read from `file`) into `module`, refusing a record written for another
/// architecture with an error naming the file. Burn panics when a record's lists (blocks, paths)
/// have other lengths than the module's and takes tensors of other shapes without a word; here
/// the first is caught and the second compared parameter by parameter.
///
/// # Errors
/// A record of another architecture.
pub fn load_record_checked<B: Backend, M: burn::module::Module<B>>(
    module: M,
    record: M::Record,
    file: &std::path::Path,
) -> crate::error::Result<M> {
    let another = |why: String| {
        crate::error::TrainError::Other(format!(
            "{} was written for another architecture than this model's: {why}",
            file.with_extension("mpk").display()
        ))
    };
    let expected = param_shapes(&module);
    // Burn's length check is an assertion; its message would only repeat ours
    let loaded = quietly(|| module.load_record(record))
        .map_err(|()| another("it holds other numbers of blocks, paths or layers".into()))?;
    let found = param_shapes(&loaded);
    if let Some(i) = (0..expected.len().max(found.len())).find(|&i| expected.get(i) != found.get(i)) {
        return Err(another(format!(
            "parameter {i} has shape {:?} there, {:?} here",
            found.get(i).cloned().unwrap_or_default(),
            expected.get(i).cloned().unwrap_or_default()
        )));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (key(k), v.clone())).collect())
    }

    #[test]
    fn old_paths_and_cells_are_rewritten_once() {
        let tensor = Value::Integer(1.into());
        let basic = map(&[
            ("conv1", tensor.clone()),
            ("bn1", tensor.clone()),
            ("conv2", tensor.clone()),
            ("bn2", tensor.clone()),
            ("conv3", Value::Nil),
            ("bn3", Value::Nil),
        ]);
        let bottleneck = map(&[("conv1", tensor.clone()), ("conv3", tensor.clone()), ("bn3", tensor.clone())]);
        let controller = map(&[
            ("blocks", Value::Array(vec![])),
            ("gru", Value::Nil),
            ("lstm", tensor.clone()),
            ("num_paths", Value::Nil),
        ]);
        let mut record = map(&[
            (
                "layers",
                Value::Array(vec![Value::Array(vec![map(&[("paths", Value::Array(vec![basic, bottleneck]))])])]),
            ),
            ("controller", controller),
        ]);
        assert!(migrate_record(&mut record));
        let text = format!("{record}");
        assert!(text.contains(r#"{"Basic": {"conv1": 1, "bn1": 1, "conv2": 1, "bn2": 1}}"#), "{text}");
        assert!(text.contains(r#"{"Bottleneck": {"conv1": 1, "conv3": 1, "bn3": 1}}"#), "{text}");
        assert!(text.contains(r#""recurrent": {"Lstm": 1}"#) && !text.contains("gru"), "{text}");
        assert!(!migrate_record(&mut record), "a migrated record is left alone");
    }

    /// A disk with room for a record but not for its checksum: the save is an error naming the
    /// checksum file, and neither file is left (no record that would load unchecked).
    #[test]
    fn a_disk_full_on_the_checksum_leaves_no_record() {
        use burn::backend::Flex;
        let dir = std::env::temp_dir().join(format!("dmnn-checksum-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 64 KiB of tmpfs: 16 pages, which a record of 65,536 bytes fills
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here");
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        // a MessagePack str16: 3 bytes of header, then the characters
        let fills = "a".repeat(65_536 - 3);
        let fits = "a".repeat(1_000);
        let saved = |item: &str, name: &str| Recorder::<Flex>::save_item(&AtomicRecorder, item, dir.join(name));
        let full = saved(&fills, "full.mpk");
        let fitted = saved(&fits, "small.mpk");
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let small = verify_file(&dir.join("small.mpk"));
        let _ = std::process::Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir(&dir);

        let message = full.expect_err("a record and its checksum on a disk with room for the record only").to_string();
        assert!(message.contains("no space left on device: "), "{message}");
        assert!(message.contains("full.mpk.sha256"), "the checksum file is not named: {message}");
        assert!(fitted.is_ok(), "{fitted:?}");
        assert_eq!(small, Ok(true), "the record that fits is saved with its checksum");
        let mut left = left;
        left.sort();
        assert_eq!(left, ["small.mpk", "small.mpk.sha256"], "only the record that fits and its checksum");
    }
}
