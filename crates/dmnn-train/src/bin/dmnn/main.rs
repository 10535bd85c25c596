//! `dmnn`: train, evaluate and measure Dynamic Multi-path Neural Networks.
//!
//! Run through `cargo xtask <command>`, which builds this binary with the requested backend. The
//! binary parses and prints; the work is dmnn-train's library.

mod backend;
mod cli;
mod print;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use dmnn_core::gate::GateOptions;
use dmnn_core::DmnnConfig;
use dmnn_train::bench::{
    machine_description, machine_tag, main_job_speedup, run_bench, run_train_bench, warmup_steps, write_csv,
    write_train_csv, BenchConfig, TrainBench, TrainRow, TRAIN_CSV_HEADER,
};
use dmnn_train::config::TrainConfig;
use dmnn_train::eval::{eval_run, EvalRequest};
use dmnn_train::run::{load_run_model, RunDir};
use dmnn_train::train::{train_on, RunOptions};

use backend::{dispatch, dispatch_on, BackendJob, BackendKind};
use cli::{
    BenchArgs, Cli, Command, CostArgs, EvalArgs, ExportArgs, InitArgs, ReportArgs, SweepArgs, SynthArgs, TrainArgs,
};
use dmnn_train::report::{write_report, ReportRequest};
use dmnn_train::sweep::{check_same_run, run_state, Grid, RunState, SweepLock};

// Burn's CPU backend allocates a fresh buffer for every op; with glibc's default thresholds the
// large ones are mmap'd and unmapped each time (page faults, TLB shootdowns). mimalloc keeps them
// (docs/decisions.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches!(cli.command, Command::Train(_) | Command::TrainImagenet(_) | Command::Sweep(_)) {
        // a training step frees and allocates the same buffers every step: kept, they are not
        // faulted in and zeroed again by the kernel (docs/decisions.md)
        restart_without_purging();
    }
    let result = match cli.command {
        Command::Cost(args) => cost(args),
        Command::Train(args) | Command::TrainImagenet(args)
            if args.run.resume.is_some() && !flags_beside_resume(&matches).is_empty() =>
        {
            let flags = flags_beside_resume(&matches);
            Err(anyhow::anyhow!(
                "{} not with --resume: a resumed run goes on with the settings of its config.json; to train with \
                 other settings, start a new run from them (`dmnn train --config {}/config.json {} ... --out NEW_DIR`)",
                flags.join(", "),
                args.run.resume.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                flags[0]
            ))
        }
        Command::Train(args) => run_train(args, false),
        Command::TrainImagenet(args) => run_train(args, true),
        Command::InitFromTorchvision(args) => init_from_torchvision(args),
        Command::Export(args) => export(args),
        Command::SynthImagenet(args) => synth_imagenet(args),
        Command::Bench(args) => {
            if args.memory_case.is_none() && !args.pipeline {
                // the training cases of a fresh process (`--train-case`) run so too
                restart_without_purging();
            }
            let backend = args.backend.clone();
            dispatch(backend.backend, backend.device, BenchJob(args))
        }
        Command::Eval(args) => {
            let backend = args.backend.clone();
            dispatch(backend.backend, backend.device, EvalJob(args))
        }
        Command::Report(args) => {
            let backend = args.backend.clone();
            dispatch(backend.backend, backend.device, ReportJob(args))
        }
        Command::Sweep(args) => sweep(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The flags given on the command line of `train --resume` besides those a resume takes.
fn flags_beside_resume(matches: &clap::ArgMatches) -> Vec<String> {
    let Some((_, sub)) = matches.subcommand() else { return Vec::new() };
    sub.ids()
        .map(|id| id.as_str())
        // argument groups (the flattened structs) have ids too
        .filter(|id| id.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter(|id| !["resume", "plain", "backend", "device", "devices"].contains(id))
        .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect()
}

/// mimalloc's option that delays (in ms) returning freed memory to the system; -1 never does.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Training and bench timings run with mimalloc's purging off (docs/decisions.md): mimalloc reads
/// its options when the process starts, so the command re-executes itself with the variable set,
/// unless the caller set it.
fn restart_without_purging() {
    #[cfg(unix)]
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else { return };
        // `exec` only returns on failure
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(PURGE_DELAY_VAR, "-1").exec();
        eprintln!(
            "warning: could not restart with {PURGE_DELAY_VAR}=-1 ({err}); running with mimalloc's default purging"
        );
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
    if let Some(size) = args.image_size {
        config.image_size = size;
    }
    config.validate()?;
    print::cost(&config, config.image_size, args.json);
    Ok(())
}

fn run_train(args: TrainArgs, imagenet: bool) -> Result<()> {
    let devices = args.devices.len();
    let (mut config, resume, out) = match &args.run.resume {
        Some(dir) => (RunDir::new(dir).read_config()?, true, Some(dir.clone())),
        None => {
            let mut config = args.resolve(imagenet)?;
            // replicas are the CPU's cores (the main job: two); a GPU runs the whole batch, and
            // two replicas on one GPU would only interleave their kernels on its queue
            if args.backend.backend != BackendKind::Cpu && args.data.replicas.is_none() && args.run.config.is_none() {
                config.replicas = 1;
            }
            (config, false, args.run.out.clone())
        }
    };
    if devices > 1 {
        let listed: Vec<String> = args.devices.iter().map(ToString::to_string).collect();
        let listed = listed.join(",");
        if resume && config.replicas != devices {
            anyhow::bail!(
                "the run trained with replicas={} (its data split and noise follow them); --devices {listed} names {devices}: \
                 resume it on {} devices",
                config.replicas,
                config.replicas
            );
        }
        if let Some(r) = args.data.replicas.filter(|&r| r != devices) {
            anyhow::bail!("--replicas {r} and --devices {listed} ({devices} devices) disagree: one replica per device");
        }
        config.replicas = devices;
        config.validate()?;
    }
    let job = TrainJob { config, resume, out, plain: args.run.plain };
    dispatch_on(args.backend.backend, &args.devices, job)
}

struct TrainJob {
    config: TrainConfig,
    resume: bool,
    out: Option<PathBuf>,
    plain: bool,
}

impl BackendJob for TrainJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<()> {
        self.run_on::<B>(vec![device], name)
    }

    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>, name: &str) -> Result<()> {
        let device = devices[0].clone();
        let options = RunOptions { out: self.out, plain: self.plain, backend: name.to_string() };
        let (summary, dir) = train_on::<B>(self.config, devices, options, self.resume)?;
        print::train_summary(&summary, dir.root());
        // the report is the run's picture, not its result: a failure to draw it is said, and
        // the trained run stands
        let request = ReportRequest { runs: vec![dir.root().to_path_buf()], out: None, title: None };
        match write_report::<B::InnerBackend>(&request, &device, &|_| {}) {
            Ok(report) => println!("  report          {}", report.markdown.display()),
            Err(e) => eprintln!("warning: the run finished, but its report could not be written: {e}"),
        }
        Ok(())
    }
}

struct ReportJob(ReportArgs);

impl BackendJob for ReportJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _name: &str) -> Result<()> {
        let args = self.0;
        let request = ReportRequest { runs: args.runs, out: args.out, title: args.title };
        let report = write_report::<B::InnerBackend>(&request, &device, &|m| eprintln!("{m}"))?;
        println!(
            "report: {} ({} figures in {})",
            report.markdown.display(),
            report.figures.len(),
            report.dir.display()
        );
        Ok(())
    }
}

/// `dmnn sweep`: every run of the grid in turn, each through the same path as `dmnn train`.
fn sweep(args: SweepArgs) -> Result<()> {
    let grid = Grid::read(&args.config)?;
    let runs = grid.runs();
    let backend = format!("{:?}", args.backend.backend).to_lowercase();
    let parse = |argv: &[String]| -> Result<TrainArgs> {
        let mut full = vec!["dmnn".to_string()];
        full.extend(argv.iter().cloned());
        full.extend(["--backend".into(), backend.clone()]);
        if let Some(d) = args.backend.device {
            full.extend(["--device".into(), d.to_string()]);
        }
        match Cli::try_parse_from(&full).map_err(|e| anyhow::anyhow!("{e}"))?.command {
            Command::Train(t) => Ok(t),
            _ => unreachable!("a sweep run is a `train` command"),
        }
    };
    if args.dry_run {
        for (i, run) in runs.iter().enumerate() {
            println!("[{}/{}] {:?}: dmnn {}", i + 1, runs.len(), run_state(&run.dir), run.args.join(" "));
        }
        return Ok(());
    }
    let _lock = SweepLock::take(&grid.out)?;
    let log_path = grid.out.join("sweep.log");
    let log = |line: &str| {
        println!("{line}");
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
            let _ = writeln!(f, "{} {line}", dmnn_train::run::timestamp());
        }
    };
    for (i, run) in runs.iter().enumerate() {
        let at = format!("[{}/{}] {}", i + 1, runs.len(), run.name);
        let train_args = parse(&run.args).with_context(|| format!("{at}: the grid's arguments"))?;
        let expected = train_args.resolve(false).with_context(|| format!("{at}: the grid's arguments"))?;
        let state = run_state(&run.dir);
        if state != RunState::New && run.dir.join("config.json").is_file() {
            check_same_run(&run.dir, &expected)?;
        }
        match state {
            RunState::Finished => {
                log(&format!("{at}: finished before, skipped"));
                continue;
            }
            RunState::Resumable(k) => {
                log(&format!("{at}: resuming from the checkpoint of epoch {k}"));
                let resume = vec!["train".into(), "--plain".into(), "--resume".into(), run.dir.display().to_string()];
                run_train(parse(&resume)?, false).with_context(|| at.clone())?;
            }
            RunState::Started | RunState::New => {
                if state == RunState::Started {
                    let has_config = run.dir.join("config.json").is_file();
                    let empty = std::fs::read_dir(&run.dir).map(|mut d| d.next().is_none()).unwrap_or(false);
                    if !has_config && !empty {
                        anyhow::bail!("{at}: {} exists and is not a run of this grid; move it away", run.dir.display());
                    }
                    log(&format!("{at}: stopped before its first checkpoint; starting it again"));
                    std::fs::remove_dir_all(&run.dir).with_context(|| format!("removing {}", run.dir.display()))?;
                } else {
                    log(&format!("{at}: starting"));
                }
                run_train(train_args, false).with_context(|| at.clone())?;
            }
        }
        log(&format!("{at}: finished"));
    }
    let finished: Vec<PathBuf> = runs.iter().map(|r| r.dir.clone()).collect();
    let request = ReportRequest { runs: finished, out: Some(grid.out.join("report")), title: None };
    let job = ReportJob(ReportArgs {
        backend: args.backend.clone(),
        runs: request.runs,
        out: request.out,
        title: request.title,
    });
    dispatch(args.backend.backend, args.backend.device, job)
}

struct EvalJob(EvalArgs);

impl BackendJob for EvalJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _name: &str) -> Result<()> {
        let args = self.0;
        let mut gate = GateOptions::default();
        if let Some(t) = args.threshold {
            gate = gate.with_threshold(t).context("--threshold")?;
        }
        let request = EvalRequest {
            run: args.checkpoint.clone(),
            data: args.data.clone(),
            val_labels: args.val_labels.clone(),
            val_synsets: args.val_synsets.clone(),
            mode: args.mode.into(),
            gate,
            batch_size: args.batch_size,
            max_batches: args.max_batches,
            recalibrate_batches: args.recalibrate_batches,
            initial_weights: args.initial_weights.clone(),
        };
        let report = eval_run::<B>(&request, device)?;
        if let Some(note) = &report.weights_note {
            eprintln!("{note}");
        }
        if args.json {
            print::eval_json(&report);
        } else {
            print::eval_table(&report, &request.mode.to_string(), args.recalibrate_batches);
        }
        Ok(())
    }
}

struct BenchJob(BenchArgs);

impl BackendJob for BenchJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<()> {
        let args = self.0;
        if args.pipeline {
            let photos = [
                PathBuf::from("data/photos"),
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/photos")),
            ]
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
        let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::full() }.with_cases(
            &args.cases,
            &args.references,
            &args.rates,
        )?;
        let counted = !name.starts_with("cpu") && dmnn_train::bench::install_kernel_counter();
        if let Some(r) = args.reps {
            config.reps = r;
            config.min_seconds = 0.0;
        }
        if let Some(case) = &args.memory_case {
            dmnn_train::bench::run_memory_case::<B::InnerBackend>(case, config.seed, &device)?;
            let peak = dmnn_train::bench::peak_rss_mib()
                .context("this system does not report the peak resident set (/proc/self/status)")?;
            println!("peak_rss_mib {peak:.1}");
            return Ok(());
        }
        if let Some(case) = &args.train_case {
            let steps = args.reps.unwrap_or(10);
            let row = dmnn_train::bench::run_train_case::<B>(case, warmup_steps(case), steps, &device)?;
            println!("{TRAIN_CSV_HEADER}\n{}", row.csv());
            return Ok(());
        }
        let fast_paths = dmnn_core::FastPaths::probe::<B::InnerBackend>(&device);
        let training_paths = dmnn_core::FastPaths::probe::<B>(&device);
        let machine = format!(
            "{}; fast paths: {}; training fast paths: {}",
            machine_description(name),
            fast_paths.describe(),
            training_paths.describe()
        );
        println!("dmnn bench on {machine}");
        if counted {
            println!("(kernels: launches of one warm pass, counted from CubeCL's launch spans)");
        }
        let exe = std::env::current_exe().context("locating the dmnn binary")?;
        let suffix = if args.quick { "-quick" } else { "" };
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("results/bench-{}{suffix}.csv", machine_tag(name))));
        if args.train {
            let train_rows = train_bench::<B>(&device, &exe, args.reps, &out, &machine)?;
            if args.compare_pytorch {
                dmnn_train::bench::compare_pytorch(&[], &train_rows)?;
            }
            return Ok(());
        }
        if fast_paths == dmnn_core::FastPaths::NONE {
            println!(
                "(every backend fast path is off: Burn's own operations throughout; {}=off or a backend without them)",
                dmnn_core::backend::FAST_PATHS_ENV
            );
        }
        println!(
            "(Sparse checked equal to Masked within 1e-4 before timing; times are medians of at least {} rounds after warm-up, \
             more for a fast case until {} s are spent; efficiency from the median ratio of each sparse run to the full run just before it)",
            config.reps, config.min_seconds
        );
        print::bench_header();
        let rows = run_bench::<B>(&config, &device, print::bench_row)?;
        write_csv(&out, &rows, &machine)?;
        println!("wrote {}", out.display());
        if name.starts_with("cpu") {
            println!("peak resident memory, each case in a fresh process:");
            let memory = dmnn_train::bench::measure_peak_memory(&exe, &rows, |case, peak| {
                println!("  {case:<32} {peak:>8.1} MiB")
            })?;
            let memory_out = out
                .with_file_name(format!("{}-memory.csv", out.file_stem().and_then(|s| s.to_str()).unwrap_or("bench")));
            dmnn_train::bench::write_memory_csv(&memory_out, &memory, &machine)?;
            println!("wrote {}", memory_out.display());
        }
        let train_rows = if args.quick || args.no_train {
            Vec::new()
        } else {
            let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
            train_bench::<B>(&device, &exe, args.reps, &out.with_file_name(format!("{stem}-train.csv")), &machine)?
        };
        if args.compare_pytorch {
            dmnn_train::bench::compare_pytorch(&rows, &train_rows)?;
        }
        Ok(())
    }
}

/// The training benchmark: its rows as they come, the main job's speed-up, the CSV at `out`.
fn train_bench<B: AutodiffBackend>(
    device: &B::Device,
    exe: &std::path::Path,
    reps: Option<usize>,
    out: &std::path::Path,
    machine: &str,
) -> Result<Vec<TrainRow>> {
    println!(
        "training steps as the trainer runs them (each replica's share on its own thread, gradients summed, SGD); \
         medians after warm-up; old path: {}=off in a fresh process",
        dmnn_core::backend::FAST_PATHS_ENV
    );
    print::train_header();
    let rows = run_train_bench::<B>(&TrainBench::full(), device, Some(exe), reps, print::train_row)?;
    for model in ["dmnn_small", "resnet_small"] {
        if let Some(speedup) = main_job_speedup(&rows, model) {
            println!(
                "main job's step, {model}: {speedup:.2}x the images/s of the old path (one replica, fast paths off)"
            );
        }
    }
    write_train_csv(out, &rows, machine)?;
    println!("wrote {}", out.display());
    Ok(rows)
}

fn synth_imagenet(args: SynthArgs) -> Result<()> {
    let spec = dmnn_train::data::SyntheticImagenet {
        classes: args.classes,
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        seed: args.seed,
        ..Default::default()
    };
    let files = spec.write(&args.out)?;
    println!("wrote {files} JPEG files under {} ({} classes)", args.out.display(), args.classes);
    Ok(())
}

fn init_from_torchvision(args: InitArgs) -> Result<()> {
    let done = dmnn_train::init::init_from_torchvision(
        &args.weights,
        &args.model,
        args.num_classes,
        args.new_head,
        &args.out,
    )?;
    println!("{}", done.note);
    if let Some((rel, agree)) = done.parity {
        println!("all paths on vs the ResNet on 4 random images: relative logit difference {rel:.4}, same top-1 on {agree}/4");
    }
    println!(
        "wrote {} (config.json, model.mpk): `dmnn eval --checkpoint {} --data ...`",
        done.out.display(),
        done.out.display()
    );
    Ok(())
}

fn export(args: ExportArgs) -> Result<()> {
    use burn::backend::Flex;
    let (_, model) = load_run_model::<Flex>(&args.checkpoint, &Default::default())?;
    dmnn_core::weights::save_torchvision(&model, &args.out)?;
    println!("wrote {} ({} with torchvision key names)", args.out.display(), model.config.name);
    Ok(())
}
