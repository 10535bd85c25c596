#!/usr/bin/env python3
"""Fixtures for the torchvision parity tests of dmnn-core (crates/dmnn-core/tests/fixtures/).

Small ResNets built from torchvision's own `BasicBlock` and `Bottleneck` classes and its
`ResNet._make_layer` / `ResNet.forward` (only the widths are smaller than resnet18/50), with
seeded random weights *and* random batch-norm statistics, in eval mode. For each: the state dict
as a PyTorch zip checkpoint (`.pth`) and as `.safetensors`, and `<name>_io.json` with an input
batch and torchvision's logits for it.

    pip install torch torchvision safetensors
    python3 scripts/make_torchvision_fixtures.py
"""
import json
import os

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

WIDTHS = [4, 8, 16, 32]
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "dmnn-core", "tests", "fixtures")


class SmallResNet(ResNet):
    """torchvision's ResNet with stage widths `widths` and a `stem`-channel stem."""

    def __init__(self, block, layers, widths, stem, num_classes):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = stem
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)


def randomize(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2.0 / (m.weight[0].numel())) ** 0.5, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.num_batches_tracked.fill_(100)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.1, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)


def make(name, block, layers, seed):
    gen = torch.Generator().manual_seed(seed)
    model = SmallResNet(block, layers, widths=WIDTHS, stem=8, num_classes=10)
    randomize(model, gen)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        y = model(x)
    state = model.state_dict()
    torch.save(state, os.path.join(OUT, f"{name}.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(OUT, f"{name}.safetensors"))
    with open(os.path.join(OUT, f"{name}_io.json"), "w") as f:
        json.dump({
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "block": block.__name__, "layers": layers, "widths": WIDTHS, "stem": 8, "num_classes": 10,
            "input_shape": list(x.shape), "input": [round(v, 7) for v in x.flatten().tolist()],
            "logits_shape": list(y.shape), "logits": y.flatten().tolist(),
        }, f)
    print(name, sum(p.numel() for p in model.parameters()), "params", y.flatten()[:4].tolist())


def broken_variants(name):
    """State dicts with one defect each: a missing key, an extra key, a mis-shaped tensor."""
    state = torch.load(os.path.join(OUT, f"{name}.pth"))
    missing = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    extra = dict(state, **{"layer2.0.conv9.weight": torch.zeros(3, 3)})
    shaped = dict(state, **{"layer3.0.bn2.running_var": torch.ones(5)})
    for suffix, sd in [("missing", missing), ("extra", extra), ("shape", shaped)]:
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(OUT, f"{name}_{suffix}.safetensors"))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make("tv_basic", BasicBlock, [1, 1, 1, 1], seed=1)
    make("tv_bottleneck", Bottleneck, [1, 2, 1, 1], seed=2)
    broken_variants("tv_basic")
