#!/usr/bin/env python3
"""torchvision ResNet-50 on this machine, in the columns of `dmnn bench`.

Inference at batch 1 and 16 (eval mode, no grad) and one SGD training step at batch 16, on the
CPU with 2 threads, median and minimum of several runs after warm-up. PyTorch is a tool for
comparison here, never a dependency of dmnn:

    pip install torch torchvision
    python3 scripts/bench_pytorch.py            # or: cargo xtask bench --compare-pytorch
"""
import platform
import statistics
import time

import torch
import torchvision

torch.set_num_threads(2)
REPS, WARMUP = 5, 2


def timed(fn, reps=REPS, warmup=WARMUP):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main():
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency")
    model = torchvision.models.resnet50()
    model.eval()
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            med, mn = timed(lambda: model(x))
        print(f"resnet50,224,{batch},1.0,full,{med:.3f},{mn:.3f},1.0000,")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 224, 224)
    y = torch.randint(0, 1000, (16,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    med, mn = timed(step, reps=3, warmup=1)
    print(f"resnet50,224,16,1.0,train,{med:.3f},{mn:.3f},1.0000,")


if __name__ == "__main__":
    main()
