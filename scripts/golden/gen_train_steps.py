"""Training-step references: a CIFAR ResNet-8 (1 input channel, option A) trained for 20 SGD steps
(momentum 0.9, weight decay 5e-4, lr 0.02, batch 2 of 6x6 images, training-mode batch norm) by
PyTorch in float64, from seeded weights and batches. Stored: the initial state dict, the batches,
the loss of every step, every parameter and buffer after step 1 and after step 20.
Writes test/fixtures/golden/train_steps.safetensors. Run: /usr/bin/python3 scripts/golden/gen_train_steps.py
(generate.py runs it too)"""
import copy
import json
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from models import cifar_resnet  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402
from generate import RELU_MARGIN, randomize_bn, relu_margin, setup_determinism  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "golden", "train_steps.safetensors")
STEPS, BATCH, SIZE = 20, 2, 6
# The batches are drawn until no ReLU input of the float64 trajectory lies within generate.py's
# RELU_MARGIN of zero: one ReLU input within float32 rounding of zero (a batch-norm output of ~1e-7
# on either side) flips a gradient element, and a float32 run then separates from the float64 one by
# up to 1e-2 within a few steps, whichever float32 implementation (PyTorch's included, depending on
# its luck). With 8 images of 12x12 (~3M ReLU inputs over the 20 steps) no draw keeps them all clear,
# and the AVX2 kernels' bits met such an input; 2 images of 6x6 (maps 6, 3 and 2) have ~110K. lr 0.02,
# not the usual 0.1, keeps the float32 runs within ~1e-7 of the float64 one besides.
LR = 0.02


def trajectory(model, xs, ys):
    """Trains model (float64, in place) on the batches: the losses and the state dicts after step 1
    and the last step."""
    model.double().train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    losses, states = [], {}
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xs[s].double()), ys[s])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if s == 0 or s == STEPS - 1:
            states[s + 1] = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    return losses, states


def main():
    setup_determinism()
    torch.manual_seed(11)
    model = cifar_resnet(8, num_classes=10, in_channels=1, shortcut="A")
    g = torch.Generator().manual_seed(12)
    randomize_bn(model, g)
    tensors = OrderedDict()
    for k, v in model.state_dict().items():
        tensors[f"init.{k}"] = v.detach().clone()
    for draws in range(1, 5001):
        xs = torch.randn(STEPS, BATCH, 1, SIZE, SIZE, generator=g)
        ys = torch.randint(0, 10, (STEPS, BATCH), generator=g)
        probe = copy.deepcopy(model)
        margin = relu_margin(probe, lambda: trajectory(probe, xs, ys))
        if margin >= RELU_MARGIN:
            break
    else:
        raise RuntimeError("no draw keeps the trajectory's ReLU inputs clear of zero")
    print(f"batches drawn {draws} time(s) for a ReLU margin of {RELU_MARGIN} (smallest {margin:.3g})")
    tensors["inputs"] = xs
    tensors["targets"] = ys
    losses, states = trajectory(copy.deepcopy(model), xs, ys)
    for step, state in states.items():
        for k, v in state.items():
            tensors[f"step{step}.{k}"] = v if v.dtype == torch.int64 else v.float()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = {"case": json.dumps({"depth": 8, "inChannels": 1, "numClasses": 10, "shortcut": "A", "lr": LR, "momentum": 0.9,
                                "weightDecay": 5e-4, "steps": STEPS, "batch": BATCH, "size": SIZE})}
    write_safetensors(OUT, tensors, meta)
    print("wrote", OUT, "losses", [round(x, 4) for x in losses[:3]], "...", round(losses[-1], 4))


if __name__ == "__main__":
    main()
