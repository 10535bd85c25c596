//! What the `dmnn` commands print.

use dmnn_train::bench::BenchRow;
use dmnn_train::eval::EvalReport;
use dmnn_train::train::Summary;

/// The end of `dmnn train`.
pub fn train_summary(s: &Summary, dir: &std::path::Path) {
    println!();
    println!(
        "dmnn train finished: {} on the {} backend, {} epochs in {:.0} s",
        s.model, s.backend, s.epochs, s.wall_seconds
    );
    if s.wall_seconds_total > s.wall_seconds + 0.5 {
        println!(
            "  (this process; {:.0} s with the earlier processes of the run, up to their last epoch)",
            s.wall_seconds_total
        );
    }
    println!(
        "  test accuracy   {:.2} % (top-5 {:.2} %), sparse execution",
        100.0 * s.test_accuracy,
        100.0 * s.test_top5
    );
    if let Some(r) = s.test_accuracy_recalibrated {
        println!("  after BN recalibration {:.2} %", 100.0 * r);
    }
    println!(
        "  GMACs per image {:.5} ± {:.5} of {:.5} with every path on (MACs ratio {:.3})",
        s.gmacs_mean, s.gmacs_std, s.gmacs_full, s.macs_ratio_mean
    );
    println!(
        "  params          {:.3} M (+{:.3} M auxiliary heads, training only)",
        s.params as f64 / 1e6,
        s.params_aux as f64 / 1e6
    );
    if !s.skipped_images.is_empty() {
        println!("  skipped {} unreadable image(s), listed in summary.json", s.skipped_images.len());
    }
    println!("  run directory   {}", dir.display());
}

/// `dmnn eval --json`.
pub fn eval_json(r: &EvalReport) {
    let s = &r.summary;
    let (mean, std) = s.gmacs();
    let json = serde_json::json!({
        "model": r.model, "images": s.samples,
        "top1_err": 100.0 * (1.0 - s.top1()), "top5_err": 100.0 * (1.0 - s.top5()),
        "params_m": r.cost.params() as f64 / 1e6, "gmacs_mean": mean, "gmacs_std": std,
        "gmacs_full": r.cost.macs_full() as f64 / 1e9, "block_open_rates": s.block_rates(),
        "skipped": r.skipped,
        "top1_err_recalibrated": r.recalibrated.as_ref().map(|r| 100.0 * (1.0 - r.top1())),
    });
    println!("{json}");
}

/// `dmnn eval`: the paper's table row, and the per-block open rates.
pub fn eval_table(r: &EvalReport, mode: &str, recalibrate_batches: usize) {
    let s = &r.summary;
    println!(
        "{} on {} ({} images, {mode} execution; GMACs = multiply-accumulates, the paper's FLOPs)",
        r.model, r.data, s.samples
    );
    println!("| model | top-1 err % | top-5 err % | params (M) | GMACs |");
    println!("|---|---|---|---|---|");
    let row = |name: String, e: &dmnn_train::metrics::EvalSummary| {
        let (mean, std) = e.gmacs();
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {mean:.4} ± {std:.4} |",
            100.0 * (1.0 - e.top1()),
            100.0 * (1.0 - e.top5()),
            r.cost.params() as f64 / 1e6
        );
    };
    row(r.model.clone(), s);
    if let Some(rc) = &r.recalibrated {
        row(format!("{} (BN recalibrated, {recalibrate_batches} batches)", r.model), rc);
    }
    let rates = s.block_rates();
    if !rates.is_empty() {
        let line: Vec<String> = rates.iter().enumerate().map(|(l, r)| format!("{l}:{r:.2}")).collect();
        println!("open rate per block: {}", line.join(" "));
    }
    if r.skipped > 0 {
        println!("skipped {} unreadable image(s)", r.skipped);
    }
}

/// The header of the bench table.
pub fn bench_header() {
    println!(
        "{:<12} {:>4} {:>5} {:>5} {:<7} {:>10} {:>10} {:>7} {:>6}",
        "model", "size", "batch", "rate", "mode", "ms_median", "ms_min", "macs", "eff"
    );
}

/// One bench row.
pub fn bench_row(r: &BenchRow) {
    let eff = r.efficiency.map(|e| format!("{e:.2}")).unwrap_or_default();
    let mut extra = r.ratio_to_full.map(|ratio| format!("{ratio:.3} of full")).unwrap_or_default();
    if let Some(k) = r.kernels {
        extra = format!("{extra} {k} kernels").trim().to_string();
    }
    println!(
        "{:<12} {:>4} {:>5} {:>5.2} {:<7} {:>10.2} {:>10.2} {:>7.3} {:>6} {}",
        r.model, r.image_size, r.batch, r.rate, r.mode, r.ms_median, r.ms_min, r.macs_ratio, eff, extra
    );
}

/// The header of the training rows.
pub fn train_header() {
    println!(
        "{:<12} {:>4} {:>5} {:>4} {:<13} {:>4} {:>10} {:>8} {:>5} {:>9} {:>9} {:>7}",
        "model",
        "size",
        "batch",
        "repl",
        "objective",
        "fast",
        "ms_median",
        "img/s",
        "cores",
        "fwd_ms",
        "bwd_ms",
        "opt_ms"
    );
}

/// One training row.
pub fn train_row(r: &dmnn_train::bench::TrainRow) {
    let c = &r.case;
    let cores = r.cpu_cores.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "{:<12} {:>4} {:>5} {:>4} {:<13} {:>4} {:>10.1} {:>8.1} {:>5} {:>9.1} {:>9.1} {:>7.1}",
        c.model,
        c.image_size,
        c.batch,
        c.replicas,
        r.objective,
        r.fast_paths,
        r.ms_median,
        r.images_per_s,
        cores,
        r.forward_ms,
        r.backward_ms,
        r.optimizer_ms
    );
}

/// `dmnn cost`.
pub fn cost(config: &dmnn_core::DmnnConfig, size: usize, json: bool) {
    let c = config.cost([size, size]);
    let g = |m: u64| m as f64 / 1e9;
    if json {
        let json = serde_json::json!({
            "model": c.model,
            "image_size": size,
            "num_classes": config.num_classes,
            "num_paths": config.num_paths,
            "params": c.params(),
            "params_backbone": c.params_backbone,
            "params_controllers": c.params_controllers,
            "params_aux": c.params_aux,
            "params_training": c.params_training(),
            "gmacs_full": g(c.macs_full()),
            "gmacs_ungated": g(c.ungated_macs()),
            "gmacs_controllers": g(c.controller_macs()),
            "gmacs_gated_full": g(c.gated_macs_full()),
            "blocks": c.blocks.iter().map(|b| serde_json::json!({
                "stage": b.stage, "num_paths": b.num_paths,
                "gmacs_per_path": g(b.path_macs), "gmacs_shortcut": g(b.shortcut_macs), "gmacs_controller": g(b.controller_macs),
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
        return;
    }
    println!("{} at {size}x{size} px, {} classes, {} path(s) per block", c.model, config.num_classes, config.num_paths);
    println!("  (MACs are multiply-accumulates of convolutions and linear layers; the paper calls them FLOPs)");
    println!("  params (inference)       {:>12}  ({:.3} M)", c.params(), c.params() as f64 / 1e6);
    println!("    backbone               {:>12}", c.params_backbone);
    println!("    controllers            {:>12}", c.params_controllers);
    println!("  params (aux heads)       {:>12}  (training only)", c.params_aux);
    println!("  GMACs, all paths on      {:>12.4}", g(c.macs_full()));
    println!("  GMACs, ungated           {:>12.4}  (stem, shortcuts, controllers, classifier)", g(c.ungated_macs()));
    if config.is_dynamic() {
        println!(
            "  GMACs, controllers       {:>12.6}  ({:.4} % of the full network)",
            g(c.controller_macs()),
            100.0 * c.controller_macs() as f64 / c.macs_full() as f64
        );
    }
}
