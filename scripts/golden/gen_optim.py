"""Optimizer and LR-schedule references from PyTorch: learning-rate sequences of MultiStepLR,
CosineAnnealingLR, LinearLR, OneCycleLR and SequentialLR, and AdamW / SGD trajectories on a
small parameter with fixed gradients. Writes test/fixtures/golden/optim.json.
Run: /usr/bin/python3 scripts/golden/gen_optim.py"""
import json
import os
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "golden", "optim.json")


def lrs(make, steps, lr=0.1):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    sched = make(opt)
    seq = []
    for _ in range(steps):
        seq.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seq


def trajectory(make_opt, steps=6):
    g = torch.Generator().manual_seed(7)
    p = torch.nn.Parameter(torch.randn(20, generator=g))
    grads = [torch.randn(20, generator=g) for _ in range(steps)]
    opt = make_opt([p])
    out = {"init": p.detach().tolist(), "grads": [x.tolist() for x in grads], "after": []}
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
        out["after"].append(p.detach().tolist())
    return out


S = torch.optim.lr_scheduler
ref = {
    "multistep": lrs(lambda o: S.MultiStepLR(o, milestones=[3, 7], gamma=0.1), 10),
    "cosine": lrs(lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=0.001), 9),
    "linear": lrs(lambda o: S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=4), 7),
    "onecycle": lrs(lambda o: S.OneCycleLR(o, max_lr=0.4, total_steps=20), 20),
    "sequential": lrs(lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=3), S.CosineAnnealingLR(o, T_max=6)], milestones=[3]), 9),
    "adamw": trajectory(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)),
    "sgd_nesterov": trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
}
with open(OUT, "w") as f:
    json.dump(ref, f)
print("wrote", OUT)
