//! `dmnn`: train, evaluate and measure Dynamic Multi-path Neural Networks.
//!
//! Run through `cargo xtask <command>`, which builds this binary with the requested backend.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use dmnn_core::{DmnnConfig, ExecutionMode};
use dmnn_train::backend::{dispatch, BackendJob};
use dmnn_train::bench::{machine_description, machine_tag, run_bench, write_csv, BenchConfig, BenchRow};
use dmnn_train::cli::{BenchArgs, Cli, Command, CostArgs, EvalArgs, ExportArgs, InitArgs, TrainArgs};
use dmnn_train::config::DataConfig;
use dmnn_train::data::{EpochLoader, LoaderConfig, Split};
use burn::module::{AutodiffModule, Module};
use dmnn_train::train::{evaluate, initial_weights, load_run_model, load_split, read_run_config, recalibrate_bn, train, RunOptions};

// Burn's CPU backend allocates a fresh buffer for every op; with glibc's default thresholds the
// large ones are mmap'd and unmapped each time (page faults, TLB shootdowns). mimalloc keeps them:
// measured 15-25 % faster inference of dmnn_small at batch 256 on the 2-core CPU, with less jitter.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cost(args) => cost(args),
        Command::Train(args) => run_train(args, false),
        Command::TrainImagenet(args) => run_train(args, true),
        Command::InitFromTorchvision(args) => init_from_torchvision(args),
        Command::Export(args) => export(args),
        Command::Bench(args) => {
            if args.memory_case.is_none() && !args.pipeline {
                restart_without_purging();
            }
            let backend = args.backend.clone();
            dispatch(backend.backend, backend.device, BenchJob(args))
        }
        Command::Eval(args) => {
            let backend = args.backend.clone();
            dispatch(backend.backend, backend.device, EvalJob(args))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// mimalloc's option that delays (in ms) returning freed memory to the system; -1 never does.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Bench timings run with mimalloc's purging off: by default freed memory goes back to the system
/// after a delay (1 s in this build) and is faulted in again later, so a case's time depended on
/// what the cases before it allocated (dmnn50 at batch 16, sparse/full at rate 1.0: 1.045 in one
/// run on the 2-core CPU; with purging off, 0.998, and medians within 4 % of minimums).
/// mimalloc reads its options when the process starts, so the bench re-executes itself with the
/// variable set, unless the caller set it.
fn restart_without_purging() {
    #[cfg(unix)]
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else { return };
        // `exec` only returns on failure
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(PURGE_DELAY_VAR, "-1").exec();
        eprintln!("warning: could not restart with {PURGE_DELAY_VAR}=-1 ({err}); timing with mimalloc's default purging");
    }
}

fn cost(args: CostArgs) -> Result<()> {
    if args.model == "list" {
        for name in dmnn_core::presets::PRESETS {
            println!("{name}");
        }
        return Ok(());
    }
    let mut config = DmnnConfig::preset(&args.model)?;
    if let Some(k) = args.num_classes {
        config.num_classes = k;
    }
    let size = args.image_size.unwrap_or(config.image_size);
    let c = config.cost([size, size]);
    let g = |m: u64| m as f64 / 1e9;
    if args.json {
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
        return Ok(());
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
    Ok(())
}

fn run_train(args: TrainArgs, imagenet: bool) -> Result<()> {
    let (config, resume, out) = match &args.resume {
        Some(dir) => (read_run_config(dir)?, true, Some(dir.clone())),
        None => (args.resolve(imagenet)?, false, args.out.clone()),
    };
    let job = TrainJob { config, resume, out, plain: args.plain };
    dispatch(args.backend.backend, args.backend.device, job)
}

struct TrainJob {
    config: dmnn_train::config::TrainConfig,
    resume: bool,
    out: Option<PathBuf>,
    plain: bool,
}

impl BackendJob for TrainJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<()> {
        let options = RunOptions { out: self.out, plain: self.plain, backend: name.to_string() };
        let out_dir = options.out.clone();
        let s = train::<B>(self.config, device, options, self.resume)?;
        println!();
        println!("dmnn train finished: {} on the {} backend, {} epochs in {:.0} s", s.model, s.backend, s.epochs, s.wall_seconds);
        println!("  test accuracy   {:.2} % (top-5 {:.2} %), sparse execution", 100.0 * s.test_accuracy, 100.0 * s.test_top5);
        if let Some(r) = s.test_accuracy_recalibrated {
            println!("  after BN recalibration {:.2} %", 100.0 * r);
        }
        println!(
            "  GMACs per image {:.5} ± {:.5} of {:.5} with every path on (MACs ratio {:.3})",
            s.gmacs_mean, s.gmacs_std, s.gmacs_full, s.macs_ratio_mean
        );
        println!("  params          {:.3} M (+{:.3} M auxiliary heads, training only)", s.params as f64 / 1e6, s.params_aux as f64 / 1e6);
        if !s.skipped_images.is_empty() {
            println!("  skipped {} unreadable image(s), listed in summary.json", s.skipped_images.len());
        }
        let dir = out_dir.map(|d| d.display().to_string()).unwrap_or_else(|| "runs/ (newest directory)".into());
        println!("  run directory   {dir}");
        Ok(())
    }
}

struct EvalJob(EvalArgs);

impl BackendJob for EvalJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _name: &str) -> Result<()> {
        let args = self.0;
        let (config, model) = load_run_model::<B::InnerBackend>(&args.checkpoint, &device)?;
        let model = match &args.initial_weights {
            Some(path) => {
                let (m, note) = initial_weights(model, path, false, &device)?;
                eprintln!("{note}");
                m
            }
            None => model,
        };
        let model = match args.threshold {
            Some(t) => model.with_threshold(t),
            None => model,
        };
        let mut data = config.data.clone();
        match &mut data {
            DataConfig::FashionMnist { dir, .. } | DataConfig::Cifar { dir } => {
                if let Some(p) = &args.data {
                    *dir = p.clone();
                }
            }
            DataConfig::ImageNet { dir, val_labels, val_synsets, .. } => {
                if let Some(p) = &args.data {
                    *dir = p.clone();
                }
                if args.val_labels.is_some() {
                    *val_labels = args.val_labels.clone();
                }
                if args.val_synsets.is_some() {
                    *val_synsets = args.val_synsets.clone();
                }
            }
        }
        let source = load_split(&data, Split::Test)?;
        if source.num_classes() != config.model.num_classes {
            anyhow::bail!(
                "data at {} has {} classes but the model has {}",
                data.path().display(),
                source.num_classes(),
                config.model.num_classes
            );
        }
        let mut loader_config = LoaderConfig::eval(args.batch_size);
        loader_config.max_batches = args.max_batches;
        let loader_device = device.clone();
        let loader = EpochLoader::<B::InnerBackend>::new(source.clone(), loader_config, device);
        let mode: ExecutionMode = args.mode.parse().map_err(anyhow::Error::msg)?;
        let s = evaluate(&model, &loader, mode);
        let recalibrated = if args.recalibrate_batches > 0 && config.model.is_dynamic() {
            let train_source = load_split(&data, Split::Train)?;
            let calib = EpochLoader::<B>::new(train_source, LoaderConfig::train(config.batch_size, config.seed), loader_device);
            let model = recalibrate_bn(model.clone().train::<B>(), &calib, args.recalibrate_batches).valid();
            Some(evaluate(&model, &loader, mode))
        } else {
            None
        };
        let [_, h, w] = source.image_shape();
        let cost = model.cost([h, w]);
        let (mean, std) = s.gmacs();
        if args.json {
            let json = serde_json::json!({
                "model": config.model.name, "images": s.samples,
                "top1_err": 100.0 * (1.0 - s.top1()), "top5_err": 100.0 * (1.0 - s.top5()),
                "params_m": cost.params() as f64 / 1e6, "gmacs_mean": mean, "gmacs_std": std,
                "gmacs_full": cost.macs_full() as f64 / 1e9, "block_open_rates": s.block_rates(),
                "skipped": loader.skipped().list().len(),
                "top1_err_recalibrated": recalibrated.as_ref().map(|r| 100.0 * (1.0 - r.top1())),
            });
            println!("{json}");
            return Ok(());
        }
        println!("{} on {} ({} images, {} execution; GMACs = multiply-accumulates, the paper's FLOPs)", config.model.name, source.describe(), s.samples, args.mode);
        println!("| model | top-1 err % | top-5 err % | params (M) | GMACs |");
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.4} ± {:.4} |",
            config.model.name,
            100.0 * (1.0 - s.top1()),
            100.0 * (1.0 - s.top5()),
            cost.params() as f64 / 1e6,
            mean,
            std
        );
        if let Some(r) = &recalibrated {
            let (mean, std) = r.gmacs();
            println!(
                "| {} (BN recalibrated, {} batches) | {:.2} | {:.2} | {:.2} | {:.4} ± {:.4} |",
                config.model.name,
                args.recalibrate_batches,
                100.0 * (1.0 - r.top1()),
                100.0 * (1.0 - r.top5()),
                cost.params() as f64 / 1e6,
                mean,
                std
            );
        }
        let rates = s.block_rates();
        if !rates.is_empty() {
            let line: Vec<String> = rates.iter().enumerate().map(|(l, r)| format!("{l}:{r:.2}")).collect();
            println!("open rate per block: {}", line.join(" "));
        }
        let skipped = loader.skipped().list();
        if !skipped.is_empty() {
            println!("skipped {} unreadable image(s)", skipped.len());
        }
        Ok(())
    }
}

struct BenchJob(BenchArgs);

fn print_row(r: &BenchRow) {
    let eff = r.efficiency.map(|e| format!("{e:.2}")).unwrap_or_default();
    let extra = match (r.mode.as_str(), r.ratio_to_full) {
        ("train", _) => format!("{:.1} img/s", r.batch as f64 / (r.ms_median / 1e3)),
        (_, Some(ratio)) => format!("{:.3} of full", ratio),
        _ => String::new(),
    };
    println!(
        "{:<12} {:>4} {:>5} {:>5.2} {:<7} {:>10.2} {:>10.2} {:>7.3} {:>6} {}",
        r.model, r.image_size, r.batch, r.rate, r.mode, r.ms_median, r.ms_min, r.macs_ratio, eff, extra
    );
}

impl BackendJob for BenchJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<()> {
        let args = self.0;
        if args.pipeline {
            let photos = [PathBuf::from("data/photos"), PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/photos"))]
                .into_iter()
                .find(|p| p.is_dir())
                .unwrap_or_else(|| PathBuf::from("data/photos"));
            let (files, n, secs, rate) = dmnn_train::bench::bench_pipeline(&photos, 600)?;
            println!(
                "ImageNet input pipeline (decode + RandomResizedCrop 224 + flip + normalise), one core, {files} JPEG photographs of 300-640 px: {n} images in {secs:.2} s = {rate:.0} images/s per core ({})",
                machine_description("cpu")
            );
            return Ok(());
        }
        let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
        if let Some(r) = args.reps {
            config.reps = r;
            config.min_seconds = 0.0;
        }
        if let Some(case) = &args.memory_case {
            dmnn_train::bench::run_memory_case::<B::InnerBackend>(case, config.seed, &device)?;
            let peak = dmnn_train::bench::peak_rss_mib().context("this system does not report the peak resident set (/proc/self/status)")?;
            println!("peak_rss_mib {peak:.1}");
            return Ok(());
        }
        let machine = machine_description(name);
        println!("dmnn bench on {machine}");
        println!(
            "(Sparse checked equal to Masked within 1e-4 before timing; times are medians of at least {} rounds after warm-up, \
             more for a fast case until {} s are spent; efficiency from the median ratio of each sparse run to the full run just before it)",
            config.reps, config.min_seconds
        );
        println!(
            "{:<12} {:>4} {:>5} {:>5} {:<7} {:>10} {:>10} {:>7} {:>6}",
            "model", "size", "batch", "rate", "mode", "ms_median", "ms_min", "macs", "eff"
        );
        let rows = run_bench::<B>(&config, &device, print_row)?;
        let out = args.out.unwrap_or_else(|| {
            let suffix = if args.quick { "-quick" } else { "" };
            PathBuf::from(format!("results/bench-{}{suffix}.csv", machine_tag(name)))
        });
        write_csv(&out, &rows, &machine)?;
        println!("wrote {}", out.display());
        if name.starts_with("cpu") {
            let memory = peak_memory(&rows)?;
            let memory_out = out.with_file_name(format!(
                "{}-memory.csv",
                out.file_stem().and_then(|s| s.to_str()).unwrap_or("bench")
            ));
            dmnn_train::bench::write_memory_csv(&memory_out, &memory, &machine)?;
            println!("wrote {}", memory_out.display());
        }
        if args.compare_pytorch {
            dmnn_train::bench::compare_pytorch(&rows)?;
        }
        Ok(())
    }
}

/// Peak resident memory of every inference case, each in a fresh process of this binary
/// (`dmnn bench --memory-case`), so that no case inherits another's heap.
fn peak_memory(rows: &[BenchRow]) -> Result<Vec<(dmnn_train::bench::MemoryCase, f64)>> {
    let exe = std::env::current_exe().context("locating the dmnn binary")?;
    println!("peak resident memory, each case in a fresh process:");
    let mut out = Vec::new();
    for case in dmnn_train::bench::memory_cases(rows) {
        // mimalloc returns freed memory at once, so the peak resident set follows the live heap
        // rather than what the allocator kept cached
        let output = std::process::Command::new(&exe)
            .args(["bench", "--memory-case", &case.to_string()])
            .env("MIMALLOC_PURGE_DELAY", "0")
            .output()
            .with_context(|| format!("running {} bench --memory-case {case}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let peak = stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss_mib ").and_then(|v| v.trim().parse::<f64>().ok()))
            .with_context(|| format!("memory case {case} failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr)))?;
        println!("  {case:<32} {peak:>8.1} MiB");
        out.push((case, peak));
    }
    Ok(out)
}

fn init_from_torchvision(args: InitArgs) -> Result<()> {
    use burn::backend::Flex;
    use burn::record::Recorder;
    let mut model_config = DmnnConfig::preset(&args.model)?;
    if let Some(k) = args.num_classes {
        model_config.num_classes = k;
    }
    let device = Default::default();
    let model = model_config.init::<Flex>(&device);
    let (model, note) = initial_weights(model, &args.weights, args.new_head, &device)?;
    println!("{note}");
    // how far the all-paths-on model starts from the ResNet: same random batch through both
    if model_config.is_dynamic() {
        let resnet = dmnn_core::weights::load_torchvision(model_config.source_resnet().init::<Flex>(&device), &args.weights, dmnn_core::weights::ImportOptions { allow_new_head: args.new_head })?;
        let size = model_config.image_size;
        let x = burn::tensor::Tensor::<Flex, 4>::random([4, model_config.in_channels, size, size], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let gates = (0..model.num_blocks()).map(|_| burn::tensor::Tensor::<Flex, 2>::ones([4, model_config.num_paths], &device)).collect();
        let a = model.forward_with(x.clone(), dmnn_core::ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates)).logits;
        let b = resnet.forward(x).logits;
        let rel = ((a.clone() - b.clone()).powi_scalar(2).sum().sqrt() / b.clone().powi_scalar(2).sum().sqrt()).into_scalar();
        let agree = a.argmax(1).equal(b.argmax(1)).int().sum().into_scalar();
        println!("all paths on vs the ResNet on 4 random {size}px images: relative logit difference {rel:.4}, same top-1 on {agree}/4");
    }
    let imagenet = model_config.in_channels == 3 && model_config.image_size >= 64;
    let mut config = if imagenet { dmnn_train::cli::imagenet_defaults(PathBuf::new()) } else { dmnn_train::cli::fashion_mnist_defaults() };
    config.model = model_config;
    config.initial_weights = Some(args.weights.clone());
    config.new_head = args.new_head;
    std::fs::create_dir_all(&args.out)?;
    dmnn_train::run::write_atomic(&args.out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Recorder::<Flex>::record(&dmnn_train::run::AtomicRecorder::default(), model.into_record(), args.out.join("model"))?;
    println!("wrote {} (config.json, model.mpk): `dmnn eval --checkpoint {} --data ...`", args.out.display(), args.out.display());
    Ok(())
}

fn export(args: ExportArgs) -> Result<()> {
    use burn::backend::Flex;
    let (_, model) = load_run_model::<Flex>(&args.checkpoint, &Default::default())?;
    dmnn_core::weights::save_torchvision(&model, &args.out)?;
    println!("wrote {} ({} with torchvision key names)", args.out.display(), model.config.name);
    Ok(())
}
