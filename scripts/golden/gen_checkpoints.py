#!/usr/bin/python3
"""Checkpoint fixtures for resnet-ts's .pth / Hugging Face readers (test/pth.test.ts).

Run with Debian's interpreter (torch 1.13 / torchvision 0.14; no `transformers` needed):

    /usr/bin/python3 scripts/golden/gen_checkpoints.py

Rewrites test/fixtures/checkpoints/ (about 350 KB, asserted < 500 KB):

  cases.json                 one entry per model: block, layers, options (camelCase, as in
                             test/fixtures/golden/cases.json), input shape and file names
  <name>.pth                 torch.save(state_dict); for basic_tiny some entries are VIEWS with the
                             same values (a transposed fc.weight, a channels-last conv1.weight, a
                             bn1.bias at storage offset 3 of a larger storage) to exercise strides
  <name>_wrapped.pth         a training checkpoint dict holding the state dict under
                             "state_dict" (basic_tiny), "model" with DataParallel "module." keys
                             (bottleneck_tiny) or "model_state_dict" (grouped_tiny, pickle protocol 4)
                             next to ints, floats, strings, lists, None and bools
  <name>_hf/                 config.json + model.safetensors with transformers ResNet key names
                             (not for grouped_tiny: HF ResNet has no grouped convolutions)
  basic_tiny_hfbin/            config.json + pytorch_model.bin (torch.save of the HF-named dict)
  <name>.io.safetensors      `input` and eval-mode `logits`
  dtypes.pth + dtypes.json   tensors of every supported storage type, a 0-dim tensor, a permuted
                             view and an offset view, with their expected values
  legacy.pth                 the pre-1.6 (non-ZIP) torch.save format, to be refused
  malicious_system.pth       torch-like ZIP whose data.pkl calls os.system via GLOBAL + REDUCE
  malicious_eval.pth         same with builtins.eval via STACK_GLOBAL (pickle protocol 4)
                             (both are only ever written here, never loaded)

The HF copies are made by renaming keys (the mapping below), and checked by loading them with
strict=True into `HfResNetForImageClassification`, an independent re-implementation of the module
tree of transformers' modeling_resnet.py (same attribute names, same downsample rules): that
catches a wrong name or shape, and its logits must equal the torchvision model's.

Also writes a FULL-SIZE resnet18 to /tmp/resnet18_full.pth (+ /tmp/resnet18_full.io.safetensors)
for a manual check; it is not a fixture.
"""

import io
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: E402

from models import ResNet  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "test", "fixtures", "checkpoints")
MARKER = "/tmp/resnet-ts-pwned-marker"


# =============================================================================================
# HF <-> torchvision key mapping (same rules as src/io/hf.ts)
# =============================================================================================
def tv_to_hf(key):
    m = re.fullmatch(r"fc\.(weight|bias)", key)
    if m:
        return f"classifier.1.{m[1]}"
    if key == "conv1.weight":
        return "resnet.embedder.embedder.convolution.weight"
    m = re.fullmatch(r"bn1\.(\w+)", key)
    if m:
        return f"resnet.embedder.embedder.normalization.{m[1]}"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.conv(\d+)\.weight", key)
    if m:
        return f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.weight"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.bn(\d+)\.(\w+)", key)
    if m:
        return f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.downsample\.0\.weight", key)
    if m:
        return f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.weight"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.downsample\.1\.(\w+)", key)
    if m:
        return f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}"
    raise KeyError(key)


# =============================================================================================
# An independent mirror of transformers' ResNet module tree (names and structure only)
# =============================================================================================
class HfConvLayer(nn.Module):
    def __init__(self, cin, cout, kernel_size=3, stride=1, act=True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.normalization = nn.BatchNorm2d(cout)
        self.activation = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.activation(self.normalization(self.convolution(x)))


class HfShortCut(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.normalization = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.normalization(self.convolution(x))


class HfBasicLayer(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        # transformers: a projection whenever the shape changes (in != out or stride != 1)
        self.shortcut = HfShortCut(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()
        self.layer = nn.Sequential(HfConvLayer(cin, cout, stride=stride), HfConvLayer(cout, cout, act=False))
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.layer(x) + self.shortcut(x))


class HfBottleNeckLayer(nn.Module):
    def __init__(self, cin, cout, stride=1, reduction=4, downsample_in_bottleneck=False):
        super().__init__()
        r = cout // reduction
        self.shortcut = HfShortCut(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()
        self.layer = nn.Sequential(
            HfConvLayer(cin, r, kernel_size=1, stride=stride if downsample_in_bottleneck else 1),
            HfConvLayer(r, r, stride=1 if downsample_in_bottleneck else stride),
            HfConvLayer(r, cout, kernel_size=1, act=False),
        )
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.layer(x) + self.shortcut(x))


class HfStage(nn.Module):
    def __init__(self, cfg, cin, cout, stride, depth):
        super().__init__()
        if cfg["layer_type"] == "bottleneck":
            first = HfBottleNeckLayer(cin, cout, stride, downsample_in_bottleneck=cfg["downsample_in_bottleneck"])
            rest = [HfBottleNeckLayer(cout, cout) for _ in range(depth - 1)]
        else:
            first = HfBasicLayer(cin, cout, stride)
            rest = [HfBasicLayer(cout, cout) for _ in range(depth - 1)]
        self.layers = nn.Sequential(first, *rest)

    def forward(self, x):
        return self.layers(x)


class HfEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedder = HfConvLayer(cfg["num_channels"], cfg["embedding_size"], kernel_size=7, stride=2)
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return self.pooler(self.embedder(x))


class HfEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hs, ds = cfg["hidden_sizes"], cfg["depths"]
        stages = [HfStage(cfg, cfg["embedding_size"], hs[0], 2 if cfg["downsample_in_first_stage"] else 1, ds[0])]
        for (cin, cout), d in zip(zip(hs, hs[1:]), ds[1:]):
            stages.append(HfStage(cfg, cin, cout, 2, d))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        for s in self.stages:
            x = s(x)
        return x


class HfResNetModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedder = HfEmbeddings(cfg)
        self.encoder = HfEncoder(cfg)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        return self.pooler(self.encoder(self.embedder(x)))


class HfResNetForImageClassification(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.resnet = HfResNetModel(cfg)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cfg["hidden_sizes"][-1], len(cfg["id2label"])))

    def forward(self, x):
        return self.classifier(self.resnet(x))


def hf_config(block, layers, widths, stem_width, in_channels, num_classes):
    """config.json as transformers' ResNetConfig.save_pretrained writes it."""
    expansion = 4 if block == "bottleneck" else 1
    id2label = {str(i): f"LABEL_{i}" for i in range(num_classes)}
    n = len(layers)
    return OrderedDict(
        [
            ("architectures", ["ResNetForImageClassification"]),
            ("depths", list(layers)),
            ("downsample_in_bottleneck", False),
            ("downsample_in_first_stage", False),
            ("embedding_size", stem_width),
            ("hidden_act", "relu"),
            ("hidden_sizes", [w * expansion for w in widths]),
            ("id2label", id2label),
            ("label2id", {v: int(k) for k, v in id2label.items()}),
            ("layer_type", block),
            ("model_type", "resnet"),
            ("num_channels", in_channels),
            ("out_features", [f"stage{n}"]),
            ("out_indices", [n]),
            ("stage_names", ["stem"] + [f"stage{i}" for i in range(1, n + 1)]),
            ("torch_dtype", "float32"),
            ("transformers_version", "4.40.0"),
        ]
    )


# =============================================================================================
# Cases
# =============================================================================================
CASES = [
    dict(name="basic_tiny", block="basic", layers=[1, 1, 1, 1], widths=[2, 4, 4, 8], stem_width=4, groups=1, width_per_group=64, hf=True),
    dict(name="bottleneck_tiny", block="bottleneck", layers=[1, 1, 1, 1], widths=[2, 2, 4, 4], stem_width=4, groups=1, width_per_group=64, hf=True),
    dict(name="grouped_tiny", block="bottleneck", layers=[1, 1, 1, 1], widths=[2, 2, 4, 4], stem_width=4, groups=2, width_per_group=32, hf=False),
]
NUM_CLASSES = 5
INPUT = [2, 3, 20, 20]


def randomize_bn(model, g):
    """As generate.py, but num_batches_tracked = 7 so the I64 value is visible."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def build(case, seed):
    torch.manual_seed(seed)
    block = BasicBlock if case["block"] == "basic" else Bottleneck
    m = ResNet(
        block,
        case["layers"],
        num_classes=NUM_CLASSES,
        groups=case["groups"],
        width_per_group=case["width_per_group"],
        widths=case["widths"],
        stem_width=case["stem_width"],
    )
    randomize_bn(m, torch.Generator().manual_seed(seed + 1))
    return m.eval()


def options_json(case):
    return OrderedDict(
        [
            ("numClasses", NUM_CLASSES),
            ("inChannels", 3),
            ("groups", case["groups"]),
            ("widthPerGroup", case["width_per_group"]),
            ("widths", case["widths"]),
            ("stemWidth", case["stem_width"]),
            ("replaceStrideWithDilation", [False, False, False]),
            ("zeroInitResidual", False),
            ("shortcut", "B"),
            ("plain", False),
        ]
    )


def with_views(sd):
    """Same values, but some entries are strided / offset views (torch saves the whole storage)."""
    v = OrderedDict(sd)
    v._metadata = sd._metadata
    w = sd["fc.weight"]
    v["fc.weight"] = w.t().contiguous().t()  # stride (1, out)
    c = sd["conv1.weight"]
    v["conv1.weight"] = c.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last
    b = sd["bn1.bias"]
    big = torch.cat([torch.full((3,), 99.0), b, torch.full((2,), -7.0)])
    v["bn1.bias"] = big[3 : 3 + b.numel()]  # storage offset 3 of 9 elements
    assert not v["fc.weight"].is_contiguous() and v["bn1.bias"].storage_offset() == 3
    for k in sd:
        assert torch.equal(v[k], sd[k])
    return v


def save(obj, path, **kw):
    torch.save(obj, path, **kw)
    back = torch.load(path)  # our own trusted files only
    return back


def check_hf(case, hf_sd, cfg, x, logits):
    mirror = HfResNetForImageClassification(cfg).eval()
    missing, unexpected = mirror.load_state_dict(hf_sd, strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        y = mirror(x)
    assert torch.allclose(y, logits, rtol=0, atol=1e-6), f"{case['name']}: HF mirror logits differ"
    # the mirror's own state_dict has exactly our keys; return them in its (transformers') order,
    # which differs from torchvision's: HF registers `shortcut` before `layer` in each block
    order = list(mirror.state_dict().keys())
    assert sorted(order) == sorted(hf_sd.keys()), f"{case['name']}: HF keys differ"
    return OrderedDict((k, hf_sd[k]) for k in order)


def gen_case(case, idx):
    name = case["name"]
    model = build(case, 1000 + idx)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(2000 + idx)
    x = torch.randn(*INPUT, generator=g)
    with torch.no_grad():
        logits = model(x)
    write_safetensors(os.path.join(OUT, f"{name}.io.safetensors"), OrderedDict([("input", x), ("logits", logits)]))

    files = OrderedDict([("pth", f"{name}.pth"), ("wrapped", f"{name}_wrapped.pth"), ("io", f"{name}.io.safetensors")])
    if name == "basic_tiny":
        save(with_views(sd), os.path.join(OUT, files["pth"]))
        wrapped = {
            "state_dict": sd,
            "epoch": 3,
            "arch": "x",
            "best_acc1": 0.75,
            "flags": [True, None, False],
            "big": 2**40,
            "neg": -5,
            "tup": (1, "a"),
        }
        save(wrapped, os.path.join(OUT, files["wrapped"]))
    elif name == "bottleneck_tiny":
        save(sd, os.path.join(OUT, files["pth"]))
        ddp = OrderedDict(("module." + k, v) for k, v in sd.items())
        opt = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1, 2]}]}
        save({"model": ddp, "epoch": 3, "arch": "x", "optimizer": opt}, os.path.join(OUT, files["wrapped"]))
    else:
        save(sd, os.path.join(OUT, files["pth"]))
        save({"model_state_dict": sd, "epoch": 3, "arch": "x"}, os.path.join(OUT, files["wrapped"]), pickle_protocol=4)

    # every .pth reloads to the same tensors
    for key in ("pth", "wrapped"):
        obj = torch.load(os.path.join(OUT, files[key]))
        inner = obj if key == "pth" else next(obj[k] for k in ("state_dict", "model", "model_state_dict") if k in obj)
        inner = OrderedDict((k[len("module.") :] if k.startswith("module.") else k, v) for k, v in inner.items())
        assert list(inner.keys()) == list(sd.keys())
        for k in sd:
            assert torch.equal(inner[k], sd[k]), (name, key, k)

    if case["hf"]:
        cfg = hf_config(case["block"], case["layers"], case["widths"], case["stem_width"], 3, NUM_CLASSES)
        hf_sd = OrderedDict((tv_to_hf(k), v) for k, v in sd.items())
        assert len(hf_sd) == len(sd)
        hf_sd = check_hf(case, hf_sd, cfg, x, logits)
        d = os.path.join(OUT, f"{name}_hf")
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(d, "model.safetensors"), hf_sd, {"format": "pt"})
        back, _ = read_safetensors(os.path.join(d, "model.safetensors"))
        assert list(back.keys()) == list(hf_sd.keys())
        files["hf"] = f"{name}_hf"
        if name == "basic_tiny":
            d2 = os.path.join(OUT, f"{name}_hfbin")
            os.makedirs(d2)
            shutil.copy(os.path.join(d, "config.json"), os.path.join(d2, "config.json"))
            save(hf_sd, os.path.join(d2, "pytorch_model.bin"))
            files["hfbin"] = f"{name}_hfbin"

    return OrderedDict(
        [
            ("name", name),
            ("kind", "imagenet"),
            ("block", case["block"]),
            ("layers", case["layers"]),
            ("options", options_json(case)),
            ("input", INPUT),
            ("mode", "eval"),
            ("views", name == "basic_tiny"),
            ("files", files),
        ]
    )


# =============================================================================================
# dtypes, legacy and malicious files
# =============================================================================================
def gen_dtypes():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(2, 3, generator=g)
    t = OrderedDict()
    t["f32"] = base.clone()
    t["f16"] = base.to(torch.float16)
    t["bf16"] = base.to(torch.bfloat16)
    t["f64"] = base.to(torch.float64)
    t["i64"] = torch.tensor([[-(2**40), -1, 0], [1, 2**40, 7]], dtype=torch.int64)
    t["i32"] = torch.tensor([[-(2**31), -1, 0], [1, 2**31 - 1, 7]], dtype=torch.int32)
    t["u8"] = torch.tensor([[0, 1, 2], [127, 128, 255]], dtype=torch.uint8)
    t["bool"] = torch.tensor([[True, False, True], [False, False, True]])
    t["scalar"] = torch.tensor(3.5)
    t["empty"] = torch.zeros(0, 4)
    p = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    t["permuted"] = p.permute(2, 0, 1)  # shape [4, 2, 3], strides (1, 12, 4)
    t["offset"] = p.reshape(-1)[5:11].reshape(2, 3)  # shares p's storage, offset 5
    t["param"] = nn.Parameter(torch.tensor([1.0, -2.0]))
    save(t, os.path.join(OUT, "dtypes.pth"))
    expected = OrderedDict()
    for k, v in t.items():
        v = v.detach()
        dt = {
            torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
        }[v.dtype]
        if v.dtype in (torch.float16, torch.bfloat16):
            vals = v.float().reshape(-1).tolist()
        elif v.dtype == torch.int64:
            vals = [str(i) for i in v.reshape(-1).tolist()]  # exact beyond 2^53
        elif v.dtype == torch.bool:
            vals = [int(b) for b in v.reshape(-1).tolist()]
        else:
            vals = v.reshape(-1).tolist()
        expected[k] = OrderedDict([("dtype", dt), ("shape", list(v.shape)), ("values", vals)])
    with open(os.path.join(OUT, "dtypes.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def gen_legacy():
    # No tensors: the legacy format keys storages by memory address, which would make the file
    # differ on every run; the reader refuses the format from its first bytes anyway.
    torch.save({"epoch": 1}, os.path.join(OUT, "legacy.pth"), _use_new_zipfile_serialization=False)


def torch_like_zip(path, pkl):
    """A ZIP laid out like torch.save's (stored entries under archive/)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in (("archive/data.pkl", pkl), ("archive/version", b"3\n")):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # reproducible bytes


class _System:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _Eval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARKER}')",))


def gen_malicious():
    # pickle.dumps only calls __reduce__ to describe the object; nothing is executed, and these
    # files are never loaded here.
    system_pkl = pickle.dumps({"state_dict": _System()}, protocol=2)
    assert b"\nsystem\n" in system_pkl  # GLOBAL 'posix system' (os.system's real module)
    torch_like_zip(os.path.join(OUT, "malicious_system.pth"), system_pkl)
    eval_pkl = pickle.dumps(_Eval(), protocol=4)
    assert b"\x93" in eval_pkl and b"builtins" in eval_pkl  # STACK_GLOBAL builtins eval
    torch_like_zip(os.path.join(OUT, "malicious_eval.pth"), eval_pkl)


def gen_full_resnet18():
    import torchvision.models as tvm

    torch.manual_seed(18)
    m = tvm.resnet18(weights=None)
    randomize_bn(m, torch.Generator().manual_seed(19))
    m.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(20))
    with torch.no_grad():
        y = m(x)
    torch.save(m.state_dict(), "/tmp/resnet18_full.pth")
    write_safetensors("/tmp/resnet18_full.io.safetensors", OrderedDict([("input", x), ("logits", y)]))
    print(f"wrote /tmp/resnet18_full.pth ({os.path.getsize('/tmp/resnet18_full.pth')} bytes)")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cases = [gen_case(c, i) for i, c in enumerate(CASES)]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        f.write("[\n" + ",\n".join(" " + json.dumps(c) for c in cases) + "\n]\n")
    gen_dtypes()
    gen_legacy()
    gen_malicious()
    total = 0
    for dirpath, _, names in os.walk(OUT):
        for n in names:
            total += os.path.getsize(os.path.join(dirpath, n))
    print(f"wrote {OUT} ({total} bytes)")
    assert total < 500_000, "fixtures must stay under 500 KB"
    if "--no-full" not in sys.argv:
        gen_full_resnet18()


if __name__ == "__main__":
    main()
