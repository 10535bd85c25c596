//! `dmnn report` and `dmnn sweep` through the real binary: the report of a tiny run (its files,
//! and its numbers against summary.json), a directory that is not a run, and a sweep that is
//! killed twice and restarted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const FIGURES: [&str; 6] = [
    "error_vs_gmacs.png",
    "easy_hard.png",
    "easy_hard_per_class.png",
    "open_rates.png",
    "gmacs_hist.png",
    "curves.png",
];

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn train_writes_a_report_whose_numbers_are_the_summary() {
    let tmp = TempDir::new("report");
    let dir = tmp.path().join("run");
    let out = run(dmnn().args(quick_fashion_args(&dir, 2)));
    assert!(out.status.success(), "{}", text(&out));
    let report = dir.join("report");
    assert!(text(&out).contains(&format!("report          {}", report.join("report.md").display())), "{}", text(&out));
    for f in FIGURES {
        let png = image::open(report.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(png.width() >= 400 && png.height() >= 200, "{f}: {}x{}", png.width(), png.height());
        // a figure, not a blank canvas: more than a handful of colours
        let rgb = png.to_rgb8();
        let mut colours: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 16, "{f} has {} colours", colours.len());
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for f in FIGURES {
        assert!(md.contains(&format!("]({f})")), "report.md does not embed {f}");
    }
    // the run's row: top-1, top-5, GMACs mean ± std, MACs ratio, params, as summary.json has them
    let s = summary(&dir);
    let num = |k: &str| s[k].as_f64().unwrap();
    let row = md.lines().find(|l| l.starts_with("| `run` |")).unwrap_or_else(|| panic!("no row of the run:\n{md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[5], format!("{:.2}", 100.0 * num("test_accuracy")), "{row}");
    assert_eq!(cells[6], format!("{:.2}", 100.0 * num("test_top5")), "{row}");
    assert_eq!(cells[7], format!("{:.5} ± {:.5}", num("gmacs_mean"), num("gmacs_std")), "{row}");
    assert_eq!(cells[8], format!("{:.3}", num("macs_ratio_mean")), "{row}");
    assert_eq!(cells[9], s["params"].to_string(), "{row}");
    // the report's own evaluation at the default threshold is the run's test pass
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("analysis.json")).unwrap()).unwrap();
    let sweep = analysis["sweep"].as_array().unwrap();
    let default = sweep.iter().find(|p| p["threshold"].as_f64() == Some(0.5)).unwrap();
    assert_eq!(default["top1"].as_f64().unwrap(), num("test_accuracy"));
    assert!((default["gmacs_mean"].as_f64().unwrap() - num("gmacs_mean")).abs() < 1e-12);
    let line = md.lines().find(|l| l.starts_with("| 0.5 |")).unwrap();
    assert!(line.starts_with(&format!("| 0.5 | {:.2} |", 100.0 * num("test_accuracy"))), "{line}");

    // a second report reads the cache: the same analysis, the figures drawn again
    let before = std::fs::metadata(report.join("analysis.json")).unwrap().modified().unwrap();
    let again = run(dmnn().args(["report", "--run"]).arg(&dir));
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::metadata(report.join("analysis.json")).unwrap().modified().unwrap(), before);
}

#[test]
fn report_of_a_directory_that_is_not_a_run_names_it() {
    let tmp = TempDir::new("report-bad");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (dir, why) in [(empty.clone(), "no config.json"), (tmp.path().join("missing"), "no such directory")] {
        let out = run(dmnn().args(["report", "--run"]).arg(&dir));
        assert!(!out.status.success());
        let msg = text(&out);
        assert!(msg.contains(&dir.display().to_string()) && msg.contains(why), "{msg}");
        assert!(!msg.contains("panicked"), "{msg}");
    }
    // a run that has not finished
    let dir = tmp.path().join("unfinished");
    let out = run(dmnn().args(quick_fashion_args(&dir, 1)));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    let out = run(dmnn().args(["report", "--run"]).arg(&dir));
    assert!(!out.status.success());
    assert!(text(&out).contains("has not finished"), "{}", text(&out));
}

/// Waits until `ready` holds, for at most two minutes.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "{what} never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_sweep_killed_twice_finishes_its_grid_with_every_run_once() {
    let tmp = TempDir::new("sweep");
    let out = tmp.path().join("grid");
    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "out = {:?}\nseeds = [3]\nepochs = [3]\n\
             args = [\"--width-mult\", \"0.5\", \"--batch-size\", \"32\", \"--max-steps-per-epoch\", \"6\", \
             \"--max-eval-batches\", \"2\", \"--eval-batch-size\", \"64\", \"--workers\", \"2\"]\n\
             [[group]]\nmodels = [\"dmnn_small\"]\ntarget_rates = [0.6]\n\
             [[group]]\nmodels = [\"resnet_small\"]\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let (a, b) = (out.join("dmnn_small-t0.6-both-e3-s3"), out.join("resnet_small-e3-s3"));
    let sweep = || {
        let mut cmd = dmnn();
        cmd.args(["sweep", "--config"]).arg(&grid);
        cmd
    };
    let kill_when = |ready: &dyn Fn() -> bool, what: &str| {
        let mut child =
            sweep().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        wait_for(what, ready);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    };
    // 1: killed in the middle of the first run, once its first checkpoint is on disk
    // (three checkpointer threads write the three records, in any order)
    let epoch_1 = || {
        ["model", "optim", "scheduler"].iter().all(|r| {
            a.join(format!("checkpoint/{r}-1.mpk")).is_file()
                && a.join(format!("checkpoint/{r}-1.mpk.sha256")).is_file()
        })
    };
    kill_when(&epoch_1, "the first run's checkpoint of epoch 1");
    assert!(!a.join("summary.json").exists(), "the kill came too late for this test");
    // 2: the restart resumes it; killed again as soon as the second run has begun
    kill_when(&|| b.join("config.json").is_file(), "the second run's start");
    assert!(a.join("summary.json").is_file());
    let a_done = modified(&a.join("summary.json"));
    // 3: the restart finishes the grid and its report
    let done = run(&mut sweep());
    assert!(done.status.success(), "{}", text(&done));
    let log = std::fs::read_to_string(out.join("sweep.log")).unwrap();
    let count = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    let (na, nb) = ("dmnn_small-t0.6-both-e3-s3", "resnet_small-e3-s3");
    assert_eq!(count(&format!("{na}: resuming from the checkpoint of epoch")), 1, "{log}");
    assert_eq!(count(&format!("{na}: finished")), 2, "finished once, then 'finished before, skipped':\n{log}");
    assert_eq!(count(&format!("{na}: finished before, skipped")), 1, "{log}");
    assert_eq!(count(&format!("{nb}: finished")), 1, "{log}");
    for dir in [&a, &b] {
        let s = summary(dir);
        assert_eq!(s["epochs"], 3);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(epochs, ["1", "2", "3"], "{}:\n{csv}", dir.display());
    }
    assert_eq!(modified(&a.join("summary.json")), a_done, "the finished run was trained again");
    let report = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(report.contains(na) && report.contains(nb), "{report}");
    // 4: once more: nothing to do, nothing trained again
    let b_done = modified(&b.join("summary.json"));
    let again = run(&mut sweep());
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains(&format!("{nb}: finished before, skipped")), "{}", text(&again));
    assert_eq!(modified(&b.join("summary.json")), b_done);
}

#[test]
fn a_second_sweep_on_a_running_grid_is_refused() {
    let tmp = TempDir::new("sweep-lock");
    let out = tmp.path().join("grid");
    std::fs::create_dir_all(&out).unwrap();
    // this test process stands in for the running sweep
    std::fs::write(out.join("sweep.lock"), std::process::id().to_string()).unwrap();
    let grid = tmp.path().join("grid.json");
    std::fs::write(
        &grid,
        format!(
            r#"{{"out": {:?}, "seeds": [1], "epochs": [1], "group": [{{"models": ["resnet_small"]}}]}}"#,
            out.display().to_string()
        ),
    )
    .unwrap();
    let out = run(dmnn().args(["sweep", "--config"]).arg(&grid));
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("another sweep (process {})", std::process::id())), "{}", text(&out));
}
