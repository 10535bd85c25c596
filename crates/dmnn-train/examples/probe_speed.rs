use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use dmnn_core::{DmnnConfig, ExecutionMode, ForwardOptions, StemKind};
use std::time::Instant;
type AD = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).cloned().unwrap_or("dmnn_small".into());
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(256);
    let widths: Option<Vec<usize>> = args.get(3).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect());
    let stride: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(2);
    let mode: ExecutionMode = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(ExecutionMode::Masked);
    let device = Default::default();
    let mut config = DmnnConfig::preset(&name).unwrap();
    if let Some(w) = widths { config.stem_width = w[0]; config.stage_widths = w; }
    config.stem = StemKind::Conv3x3 { stride };
    let cost = config.cost([28, 28]);
    println!("{name} widths {:?} stride {stride}: {:.2} MMACs full, params {}", config.stage_widths, cost.macs_full() as f64 / 1e6, cost.params());
    let mut model = config.init::<AD>(&device);
    let mut optim = SgdConfig::new().init::<AD, dmnn_core::Dmnn<AD>>();
    let x = Tensor::<AD, 4>::random([batch, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<AD, 1, Int>::from_data(TensorData::new((0..batch as i64).map(|i| i % 10).collect(), [batch]), &device);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let mut times = vec![];
    for i in 0..6 {
        let t = Instant::now();
        let out = model.forward_with(x.clone(), ForwardOptions::mode(mode));
        let loss = ce.forward(out.logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
        let _ = model.fc.weight.val().sum().into_scalar();
        if i > 0 { times.push(t.elapsed().as_secs_f64()); }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("train step batch {batch}: median {:.3} s, min {:.3} s  -> {:.1} s/epoch(60k)", times[2], times[0], times[2] * 60000.0 / batch as f64);
    let m = model.valid();
    let xi = x.inner();
    let t = Instant::now();
    for _ in 0..3 { let o = m.forward_with(xi.clone(), ForwardOptions::mode(ExecutionMode::Sparse)); let _ = o.logits.into_data(); }
    println!("eval batch {batch}: {:.3} s", t.elapsed().as_secs_f64() / 3.0);
}
