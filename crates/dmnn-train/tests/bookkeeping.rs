//! Run bookkeeping after restarts and misuse: metrics rows, wall time across resumes, the run
//! directory named and never silently reused, settings that train or evaluate nothing.

mod common;

use std::path::Path;

use common::*;

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn epochs_in_csv(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

fn forget_the_end(dir: &Path, epochs: &[usize]) {
    for f in ["model.mpk", "model.mpk.sha256", "summary.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    for e in epochs {
        for r in ["model", "optim", "scheduler"] {
            for ext in ["mpk", "mpk.sha256"] {
                let _ = std::fs::remove_file(dir.join(format!("checkpoint/{r}-{e}.{ext}")));
            }
        }
    }
}

#[test]
fn a_restart_without_a_checkpoint_rewrites_the_metrics_and_resumes_count_all_their_time() {
    let tmp = TempDir::new("bookkeeping");
    // killed before its first checkpoint (or checkpoint/ deleted): the restart starts over
    let dir = tmp.path().join("no-checkpoint");
    let out = run(dmnn().args(quick_fashion_args(&dir, 2)));
    assert!(out.status.success(), "{}", text(&out));
    forget_the_end(&dir, &[]);
    std::fs::remove_dir_all(dir.join("checkpoint")).unwrap();
    let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("starting from the beginning"), "{}", text(&out));
    assert_eq!(epochs_in_csv(&dir), ["1", "2"]);

    // resumed after epoch 1 of a run whose first process took 1000 s
    let dir = tmp.path().join("resumed");
    let out = run(dmnn().args(quick_fashion_args(&dir, 2)));
    assert!(out.status.success(), "{}", text(&out));
    forget_the_end(&dir, &[2]);
    std::fs::write(dir.join("wall.json"), r#"{"seconds": 1000.0}"#).unwrap();
    let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir));
    assert!(out.status.success(), "{}", text(&out));
    let s = summary(&dir);
    let (this, total) = (s["wall_seconds"].as_f64().unwrap(), s["wall_seconds_total"].as_f64().unwrap());
    assert!(this < 1000.0 && total >= 1000.0 + this - 0.01, "this process {this} s, in all {total} s");
    assert!(text(&out).contains("with the earlier processes of the run"), "{}", text(&out));
    assert_eq!(epochs_in_csv(&dir), ["1", "2"]);
}

#[test]
fn an_existing_run_directory_is_never_silently_reused() {
    let tmp = TempDir::new("reuse");
    let dir = tmp.path().join("run");
    let out = run(dmnn().args(quick_fashion_args(&dir, 1)));
    assert!(out.status.success(), "{}", text(&out));
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let csv = std::fs::read(dir.join("metrics.csv")).unwrap();
    let out = run(dmnn().args(quick_fashion_args(&dir, 2)).args(["--seed", "9"]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("holds a run: resume it with `--resume"), "{}", text(&out));
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config, "config.json was overwritten");
    assert_eq!(std::fs::read(dir.join("metrics.csv")).unwrap(), csv);
    // a flag that a resume cannot honour is refused, not ignored
    let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir).args(["--epochs", "9"]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--epochs not with --resume"), "{}", text(&out));
}

#[test]
fn runs_started_together_get_their_own_directories_and_name_them() {
    let tmp = TempDir::new("same-second");
    let mut args = quick_fashion_args(Path::new("unused"), 1);
    args.truncate(args.len() - 2); // no --out: the default directory under runs/
    let spawn = || {
        dmnn()
            .args(&args)
            .current_dir(tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut dirs = Vec::new();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let msg = text(&out);
        assert!(out.status.success(), "{msg}");
        let line = msg.lines().find(|l| l.trim_start().starts_with("run directory")).unwrap();
        let dir = line.trim_start().trim_start_matches("run directory").trim().to_string();
        assert!(dir.starts_with("runs/") && !dir.contains("newest"), "{line}");
        assert!(tmp.path().join(&dir).join("summary.json").is_file(), "{dir} is not the run's directory");
        dirs.push(dir);
    }
    assert_ne!(dirs[0], dirs[1], "two runs shared one directory");
}

#[test]
fn settings_that_train_or_evaluate_nothing_are_errors() {
    let tmp = TempDir::new("nothing");
    for (flag, expected) in [
        ("--max-steps-per-epoch", "max_steps_per_epoch=0 trains nothing"),
        ("--max-eval-batches", "max_eval_batches=0 evaluates nothing"),
    ] {
        let dir = tmp.path().join(flag.trim_start_matches('-'));
        let mut args = quick_fashion_args(&dir, 1);
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = "0".into();
        let out = run(dmnn().args(args));
        assert!(!out.status.success(), "{flag} 0: {}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
        assert!(!dir.exists(), "{flag} 0 left a run directory");
    }
}
