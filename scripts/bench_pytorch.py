#!/usr/bin/env python3
"""torchvision ResNet-50 and a network of resnet_small's shape on this machine, in the columns of
`dmnn bench`.

ResNet-50: inference at batch 1 and 16 (eval mode, no grad) and one SGD training step at batch 16.
resnet_small (dmnn's main-job backbone: 3x3/2 stem to 16 channels, basic blocks [2, 2, 2] at
widths 16/32/64, 28 px grey images, 10 classes): one SGD training step at batch 128. On the CPU
with 2 threads, median and minimum of several runs after warm-up. PyTorch is a tool for
comparison here, never a dependency of dmnn:

    pip install torch torchvision
    python3 scripts/bench_pytorch.py            # or: cargo xtask bench --compare-pytorch
    python3 scripts/bench_pytorch.py --train-only
"""
import platform
import statistics
import sys
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


def resnet_small():
    """dmnn's `resnet_small` preset in torchvision's parts (same layers, same shapes)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    def stage(c_in, c_out, stride):
        down = None
        if stride != 1 or c_in != c_out:
            down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        return nn.Sequential(BasicBlock(c_in, c_out, stride, down), BasicBlock(c_out, c_out))

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        stage(16, 16, 1), stage(16, 32, 2), stage(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def train_step(model, x, y):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def main():
    train_only = "--train-only" in sys.argv[1:]
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency")
    model = torchvision.models.resnet50()
    if not train_only:
        model.eval()
        for batch in (1, 16):
            x = torch.randn(batch, 3, 224, 224)
            with torch.no_grad():
                med, mn = timed(lambda: model(x))
            print(f"resnet50,224,{batch},1.0,full,{med:.3f},{mn:.3f},1.0000,", flush=True)
    step = train_step(model, torch.randn(16, 3, 224, 224), torch.randint(0, 1000, (16,)))
    med, mn = timed(step, reps=5, warmup=1)
    print(f"resnet50,224,16,1.0,train,{med:.3f},{mn:.3f},1.0000,", flush=True)
    step = train_step(resnet_small(), torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    med, mn = timed(step, reps=20, warmup=3)
    print(f"resnet_small,28,128,1.0,train,{med:.3f},{mn:.3f},1.0000,", flush=True)


if __name__ == "__main__":
    main()
