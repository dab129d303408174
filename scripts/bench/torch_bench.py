#!/usr/bin/env python3
"""PyTorch peer of `resnet bench`: times the same workloads as resnet-ts and prints one JSON object.

usage: torch_bench.py '<config JSON>'

The config (written by src/bench/peers.ts) holds:
  workloads  [{id, kind: "inference"|"train", arch, input: [C,H,W], batch, numClasses}, ...]
  threads    torch.set_num_threads(threads); inter-op threads 1
  warmup, runs, budgetMs   the timing plan (same rules as src/bench/timing.ts)
  mode       "time" (default) or "rss": run each workload twice and report the peak RSS only
  seed       for the random weights, inputs and targets

Inference runs in eval mode under torch.inference_mode(); a training step is zero_grad, forward in
train mode, F.cross_entropy, backward and torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4).
ImageNet ResNets are torchvision's; CIFAR ResNets (resnet20, ...) are defined here, as in resnet-ts
(3x3 stem, 16/32/64 planes, no max-pool, option-A zero-padding shortcut). Environment variables
(OPENBLAS_*, OMP_*, MKL_*, glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, which `resnet bench
--equal-allocator` sets) are left as they are and reported.
Output: {"torch", "torchvision", "threads", "interopThreads", "env", "results": {id: {...}},
"baselineRssMB", "peakRssMB"}; on a missing torch: {"error": "..."} and exit status 3.
"""
import json
import os
import resource
import statistics
import sys
import time


def _status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """VmHWM: the high-water mark of this process's own address space. ru_maxrss is not used on
    Linux: it survives execve, so it would include the spawning Node process's RSS."""
    kb = _status_kb("VmHWM")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else float("nan")


def env_report() -> dict:
    keys = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    return {k: os.environ.get(k) for k in keys}


USER_HZ = 100


def cpu_sample():
    """(wall s, machine busy ticks, this process's ticks incl. children) or None: see src/bench/cpu.ts."""
    try:
        with open("/proc/stat") as f:
            c = [int(v) for v in f.readline().split()[1:]]
        busy = c[0] + c[1] + c[2] + c[5] + c[6] + (c[7] if len(c) > 7 else 0)
        with open("/proc/self/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2 :].split()
        return time.perf_counter(), busy, sum(int(x) for x in fields[11:15])
    except (OSError, ValueError, IndexError):
        return None


def other_cores(a, b):
    """Average cores other processes kept busy between two samples."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / USER_HZ / (b[0] - a[0]))


class Timer:
    """The run-by-run plan of src/bench/timing.ts (kept in step with it)."""

    def __init__(self, warmup: int, runs: int, budget_ms: float):
        self.warmup, self.runs = warmup, runs
        self.budget = budget_ms if budget_ms and budget_ms > 0 else float("inf")
        self.budget_ms = budget_ms
        self.warm_done, self.samples = 0, []
        self.elapsed, self.last = 0.0, 0.0
        self.cold = self.finished = False

    def next(self) -> str:
        if self.finished:
            return "done"
        started = self.warm_done + len(self.samples) > 0
        affordable = (self.budget - self.elapsed) // max(self.last, 1e-6) if started else float("inf")
        if self.warm_done < self.warmup and not self.samples:
            if not started or affordable >= 1 + min(self.runs, 3):
                return "warmup"
        if len(self.samples) < self.runs and (not self.samples or affordable >= 1):
            return "timed"
        self.finished = True
        return "done"

    def record(self, kind: str, ms: float) -> None:
        self.elapsed += ms
        self.last = ms
        if kind == "timed":
            self.samples.append(ms)
            return
        self.warm_done += 1
        if self.warm_done == 1 and ms * 2 > self.budget:
            self.warm_done = 0
            self.samples.append(ms)
            self.cold = self.finished = True

    def result(self, batch: int, others=None) -> dict:
        ms = statistics.median(self.samples)
        budget = f"{round(self.budget_ms / 1000, 1):g} s time budget"
        limited = None
        if self.cold:
            limited = f"1 cold run (no warm-up): one run takes over half the {budget}"
        elif len(self.samples) < self.runs or self.warm_done < self.warmup:
            limited = f"{len(self.samples)} of {self.runs} runs, {self.warm_done} of {self.warmup} warm-up ({budget})"
        return {
            "msPerIter": ms,
            "imgPerSec": batch * 1000.0 / ms,
            "runs": len(self.samples),
            "warmup": self.warm_done,
            "samplesMs": [round(s, 3) for s in self.samples],
            "limited": limited,
            "otherCores": None if others is None else round(others, 2),
        }


def build_model(torch, torchvision, w):
    nn = torch.nn
    arch, c_in, classes = w["arch"], w["input"][0], w["numClasses"]
    if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        m = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
        if c_in != 3:
            m.conv1 = nn.Conv2d(c_in, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return m
    if arch.startswith("resnet") and (int(arch[6:]) - 2) % 6 == 0:
        return cifar_resnet(torch, int(arch[6:]), c_in, classes)
    raise ValueError(f"torch_bench.py has no model for {arch}")


def cifar_resnet(torch, depth: int, c_in: int, classes: int):
    """He et al. 2016 section 4.2, option-A shortcut: resnet-ts's createModel('resnet20') in PyTorch."""
    nn, F = torch.nn, torch.nn.functional
    from torchvision.models.resnet import BasicBlock

    class PadShortcut(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.front, self.back, self.stride = (cout - cin) // 2, cout - cin - (cout - cin) // 2, stride

        def forward(self, x):
            return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.front, self.back))

    n = (depth - 2) // 6
    layers, inplanes = [], 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for i in range(n):
            s = stride if i == 0 else 1
            down = PadShortcut(inplanes, planes, s) if (s != 1 or inplanes != planes) else None
            blocks.append(BasicBlock(inplanes, planes, s, down))
            inplanes = planes
        layers.append(nn.Sequential(*blocks))
    model = nn.Sequential(
        nn.Conv2d(c_in, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(64, classes),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def main() -> int:
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        import torch
        import torchvision
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        print(json.dumps({"error": f"cannot import torch/torchvision: {e}"}))
        return 3
    threads = int(cfg.get("threads", 2))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    seed = int(cfg.get("seed", 0))
    mode = cfg.get("mode", "time")
    baseline = current_rss_mb()
    out = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "interopThreads": torch.get_num_interop_threads(),
        "env": env_report(),
        "results": {},
    }
    for w in cfg.get("workloads", []):
        torch.manual_seed(seed)
        model = build_model(torch, torchvision, w)
        x = torch.randn(w["batch"], *w["input"])
        params = sum(p.numel() for p in model.parameters())
        if w["kind"] == "inference":
            model.eval()

            def step():
                with torch.inference_mode():
                    model(x)

        else:
            model.train()
            y = torch.randint(0, w["numClasses"], (w["batch"],))
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

        if mode == "rss":
            step()
            step()
            out["results"][w["id"]] = {"params": params}
            continue
        t = Timer(int(cfg.get("warmup", 2)), int(cfg.get("runs", 7)), float(cfg.get("budgetMs", 60000)))
        c0 = cpu_sample()
        k = t.next()
        while k != "done":
            t0 = time.perf_counter()
            step()
            t.record(k, (time.perf_counter() - t0) * 1000.0)
            k = t.next()
        out["results"][w["id"]] = {**t.result(w["batch"], other_cores(c0, cpu_sample())), "params": params}
    out["baselineRssMB"] = baseline
    out["peakRssMB"] = peak_rss_mb()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
