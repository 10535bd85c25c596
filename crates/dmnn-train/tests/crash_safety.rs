//! Nothing lost, nothing silently wrong: checkpoints verified on read with a fallback to the
//! previous good epoch, a full disk that ends the run with its path, runs that never report what
//! did not happen.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn flip_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    let end = (mid + 16).min(bytes.len());
    bytes[mid..end].iter_mut().for_each(|b| *b ^= 0xA5);
    std::fs::write(path, bytes).unwrap();
}

/// A finished run made to look as if it died after its last checkpoint.
fn unfinish(dir: &Path) {
    for f in ["model.mpk", "model.mpk.sha256", "summary.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("report"));
}

#[test]
fn a_damaged_last_checkpoint_falls_back_to_the_epoch_before_and_ends_bit_identical() {
    let tmp = TempDir::new("bitflip");
    let full = tmp.path().join("full");
    let out = run(dmnn().args(quick_fashion_args(&full, 3)));
    assert!(out.status.success(), "{}", text(&out));
    let reference = weights(&full);

    // each record type of the newest checkpoint, damaged in turn: bit flips in the model and the
    // optimiser, random bytes for the scheduler
    for (record, damage) in [("model", "flip"), ("optim", "flip"), ("scheduler", "random")] {
        let dir = tmp.path().join(format!("damaged-{record}"));
        let out = run(dmnn().args(quick_fashion_args(&dir, 3)));
        assert!(out.status.success(), "{}", text(&out));
        unfinish(&dir);
        let file = dir.join(format!("checkpoint/{record}-3.mpk"));
        match damage {
            "flip" => flip_middle(&file),
            _ => std::fs::write(&file, (0..124u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap(),
        }
        let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir));
        let msg = text(&out);
        assert!(out.status.success(), "{record}: {msg}");
        assert!(
            msg.contains("the checkpoint of epoch 3 cannot be used") && msg.contains(&format!("{record}-3.mpk")),
            "{msg}"
        );
        assert!(msg.contains("falling back to the checkpoint of epoch 2"), "{msg}");
        assert!(msg.contains("resuming from the checkpoint of epoch 2"), "{msg}");
        assert!(!msg.contains("panicked") && !msg.contains("format has changed"), "{msg}");
        let w = weights(&dir);
        assert_eq!(w.len(), reference.len());
        assert!(
            w.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{record}: weights differ from the uninterrupted run"
        );
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(
            csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect::<Vec<_>>(),
            ["1", "2", "3"],
            "{csv}"
        );
    }
}

#[test]
fn a_damaged_final_model_is_refused_by_eval_and_report() {
    let tmp = TempDir::new("bitflip-final");
    let dir = tmp.path().join("run");
    let out = run(dmnn().args(quick_fashion_args(&dir, 1)));
    assert!(out.status.success(), "{}", text(&out));
    flip_middle(&dir.join("model.mpk"));
    for args in [vec!["eval", "--checkpoint"], vec!["report", "--run"]] {
        let out = run(dmnn().args(&args).arg(&dir));
        assert!(!out.status.success(), "{args:?} used a damaged model.mpk");
        assert!(text(&out).contains("model.mpk") && text(&out).contains("damaged"), "{}", text(&out));
    }
}

#[test]
fn checkpoints_of_another_architecture_are_a_clean_error() {
    let tmp = TempDir::new("other-arch");
    let small = tmp.path().join("small");
    let other = tmp.path().join("other");
    let out = run(dmnn().args(quick_fashion_args(&small, 1)));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(dmnn().args(quick_fashion_args(&other, 1)).args(["--model", "resnet_small"]));
    assert!(out.status.success(), "{}", text(&out));
    // the dmnn_small run's directory with resnet_small's checkpoint files
    unfinish(&small);
    let _ = std::fs::remove_dir_all(small.join("checkpoint"));
    copy_dir(&other.join("checkpoint"), &small.join("checkpoint"));
    let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&small));
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("model-1.mpk was written for another architecture"), "{msg}");
    assert!(msg.contains("no checkpoint in") && msg.contains("can be used"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A tmpfs of `kib` KiB at `dir`, unmounted when dropped; `None` (with the reason printed) where
/// this machine does not let the test mount one.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: usize) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs here ({})", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Every file under `dir` with its size.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), e.metadata().unwrap().len()));
        }
    }
    out
}

#[test]
fn a_full_disk_ends_the_run_naming_the_path_and_leaves_no_partial_file() {
    let tmp = TempDir::new("full-disk");
    // the checkpoints on an 800 KiB disk (the first epoch's fit, the second's do not), then the
    // whole run directory on one of 1 MiB
    for (kib, whole) in [(800, false), (1024, true)] {
        let dir = tmp.path().join(format!("run-{kib}"));
        let mount_at = if whole { dir.clone() } else { dir.join("checkpoint") };
        let Some(_disk) = Tmpfs::mount(&mount_at, kib) else { return };
        let out = run(dmnn().args(quick_fashion_args(&dir, 4)));
        let msg = text(&out);
        assert!(!out.status.success(), "a run on a full disk exited 0:\n{msg}");
        assert!(msg.contains("no space left on device: "), "{msg}");
        assert!(msg.contains(&mount_at.display().to_string()), "the path is not named:\n{msg}");
        assert!(!msg.contains("dmnn train finished"), "{msg}");
        assert!(!dir.join("summary.json").exists(), "a summary of epochs that did not happen");
        for (path, size) in files(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "a temporary file was left: {}", path.display());
            if name.ends_with(".mpk") {
                assert!(size > 0, "an empty record under its final name: {}", path.display());
                let checked = dmnn_train::run::verify_file(&path);
                assert!(checked == Ok(true), "{}: {checked:?}", path.display());
            }
        }
    }
}

#[test]
fn a_diverged_run_reports_no_accuracy_and_nan_weights_do_not_evaluate() {
    let tmp = TempDir::new("diverged");
    let dir = tmp.path().join("run");
    // two steps at an absurd learning rate: the weights overflow on the last update, which no
    // loss of this run sees. With the GRU controller the second step's loss is still finite at
    // lr 1e30; without it (the main job's default) the second loss already overflows, and the run
    // stops on that loss before any weights are checked
    let mut args = quick_fashion_args(&dir, 1);
    let at = args.iter().position(|a| a == "--max-steps-per-epoch").unwrap();
    args[at + 1] = "2".into();
    let out = run(dmnn().args(args).args(["--lr", "1e30", "--prev-state", "gru"]));
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(!msg.contains("test accuracy"), "{msg}");
    assert!(msg.contains("not finite"), "{msg}");
    assert!(!dir.join("summary.json").exists());
    let out = run(dmnn().args(["eval", "--checkpoint"]).arg(&dir));
    assert!(!out.status.success(), "eval of NaN weights: {}", text(&out));
    assert!(text(&out).contains("not finite"), "{}", text(&out));
}

/// The kill/resume matrix: the process dies (aborts, as `kill -9` would leave it) at every stage
/// of every kind of write, or is stopped as the terminal UI stops it; the resumed run ends with
/// the uninterrupted run's weights, bit for bit, and its metrics rows exactly once.
#[test]
fn a_run_killed_at_any_write_resumes_to_the_same_weights() {
    let tmp = TempDir::new("crash-matrix");
    let reference_dir = tmp.path().join("reference");
    let out = run(dmnn().args(quick_fashion_args(&reference_dir, 3)));
    assert!(out.status.success(), "{}", text(&out));
    let reference = weights(&reference_dir);
    let faults = [
        "crash:renamed:model-1.mpk",
        "crash:writing:model-2.mpk",
        "crash:written:model-2.mpk",
        "crash:renamed:model-2.mpk",
        "crash:written:optim-2.mpk",
        "crash:written:scheduler-2.mpk.sha256",
        "crash:written:wall.json",
        "crash:written:model.mpk",
        "crash:renamed:model.mpk",
        "crash:written:summary.json",
        "stop-after-epoch:1",
    ];
    for (i, fault) in faults.iter().enumerate() {
        let dir = tmp.path().join(format!("run-{i}"));
        let out = run(dmnn().args(quick_fashion_args(&dir, 3)).env("DMNN_FAULT", fault));
        let msg = text(&out);
        assert!(!out.status.success(), "{fault}: the run did not stop:\n{msg}");
        assert!(!msg.contains("dmnn train finished"), "{fault}:\n{msg}");
        if fault.starts_with("stop") {
            assert!(msg.contains("training stopped after epoch 1 of 3: stopped in the terminal UI"), "{msg}");
            assert!(msg.contains("--resume"), "{msg}");
        }
        for (path, _) in files(&dir) {
            assert!(
                !path.to_string_lossy().ends_with("summary.json"),
                "{fault}: a summary of a run that did not finish"
            );
        }
        let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir));
        let msg = text(&out);
        assert!(out.status.success(), "{fault}: the resume failed:\n{msg}");
        let w = weights(&dir);
        assert!(
            w.len() == reference.len() && w.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{fault}: the resumed weights differ from the uninterrupted run's"
        );
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(epochs, ["1", "2", "3"], "{fault}:\n{csv}");
    }
}
