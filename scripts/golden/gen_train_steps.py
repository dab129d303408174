"""Training-step references: a CIFAR ResNet-8 (1 input channel, option A) trained for 20 SGD steps
(momentum 0.9, weight decay 5e-4, lr 0.02, batch 8 of 12x12 images, training-mode batch norm) by
PyTorch in float64, from seeded weights and batches. Stored: the initial state dict, the batches,
the loss of every step, every parameter and buffer after step 1 and after step 20.
Writes test/fixtures/golden/train_steps.safetensors. Run: /usr/bin/python3 scripts/golden/gen_train_steps.py"""
import json
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from models import cifar_resnet  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402
from generate import randomize_bn, setup_determinism  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "golden", "train_steps.safetensors")
STEPS, BATCH, SIZE = 20, 8, 12
# lr 0.02, not the usual 0.1: at 0.1 the 20-step trajectory is chaotic enough that one ReLU input
# within float32 rounding of zero (a BN output of ~1e-7 on either side) flips a gradient element and
# the float32 runs separate from the float64 one by up to 1e-2 within a few steps, whichever float32
# implementation (PyTorch's included, depending on its luck); at 0.02 they all stay within ~1e-7.
LR = 0.02


def main():
    setup_determinism()
    torch.manual_seed(11)
    model = cifar_resnet(8, num_classes=10, in_channels=1, shortcut="A")
    g = torch.Generator().manual_seed(12)
    randomize_bn(model, g)
    tensors = OrderedDict()
    for k, v in model.state_dict().items():
        tensors[f"init.{k}"] = v.detach().clone()
    xs = torch.randn(STEPS, BATCH, 1, SIZE, SIZE, generator=g)
    ys = torch.randint(0, 10, (STEPS, BATCH), generator=g)
    tensors["inputs"] = xs
    tensors["targets"] = ys
    model = model.double().train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    losses = []
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xs[s].double()), ys[s])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if s == 0 or s == STEPS - 1:
            for k, v in model.state_dict().items():
                tensors[f"step{s + 1}.{k}"] = v.detach().clone() if v.dtype == torch.int64 else v.detach().float().clone()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = {"case": json.dumps({"depth": 8, "inChannels": 1, "numClasses": 10, "shortcut": "A", "lr": LR, "momentum": 0.9,
                                "weightDecay": 5e-4, "steps": STEPS, "batch": BATCH, "size": SIZE})}
    write_safetensors(OUT, tensors, meta)
    print("wrote", OUT, "losses", [round(x, 4) for x in losses[:3]], "...", round(losses[-1], 4))


if __name__ == "__main__":
    main()
