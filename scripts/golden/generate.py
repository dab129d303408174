#!/usr/bin/python3
"""Seeded, deterministic golden-fixture generator for resnet-ts.

Run with Debian's interpreter (torch 1.13 / torchvision 0.14):

    npm run golden        # == /usr/bin/python3 scripts/golden/generate.py

Writes everything under test/fixtures/golden/ (see scripts/golden/README.md for the schemas).
float32 everywhere; single-threaded CPU; deterministic algorithms.
"""

import contextlib
import copy
import hashlib
import io
import json
import os
import runpy
import shutil
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
import torchvision.models as tvm  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: E402

from models import CifarResNet, ResNet  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402
import torchsummary_151  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "test", "fixtures", "golden")


def setup_determinism():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    np.random.seed(0)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def write_json_list(path, items):
    """A JSON array with one compact object per line (diffable, small)."""
    with open(path, "w") as f:
        f.write("[\n")
        f.write(",\n".join(" " + json.dumps(it, separators=(", ", ": ")) for it in items))
        f.write("\n]\n")
    assert json.load(open(path)) == json.loads(json.dumps(items))


# =============================================================================================
# 0. our reference ResNet == torchvision with default options
# =============================================================================================
def check_reference_matches_torchvision():
    checks = [
        ("resnet18", tvm.resnet18, BasicBlock, [2, 2, 2, 2], {}),
        ("resnet50", tvm.resnet50, Bottleneck, [3, 4, 6, 3], {}),
        ("resnext50_32x4d", tvm.resnext50_32x4d, Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
        ("wide_resnet50_2", tvm.wide_resnet50_2, Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
        ("resnet50_dilated", tvm.resnet50, Bottleneck, [3, 4, 6, 3], {"replace_stride_with_dilation": [False, True, True]}),
        ("resnet18_zero_init", tvm.resnet18, BasicBlock, [2, 2, 2, 2], {"zero_init_residual": True, "num_classes": 10}),
    ]
    for name, ctor, block, layers, kw in checks:
        torch.manual_seed(123)
        tv = ctor(weights=None, **kw)
        torch.manual_seed(123)
        ours = ResNet(block, layers, **kw)
        sd_tv, sd_ours = tv.state_dict(), ours.state_dict()
        assert [(k, tuple(v.shape)) for k, v in sd_tv.items()] == [
            (k, tuple(v.shape)) for k, v in sd_ours.items()
        ], f"{name}: state_dict keys/shapes differ from torchvision"
        # same seed, same construction order -> identical initial weights
        for k in sd_tv:
            assert torch.equal(sd_tv[k], sd_ours[k]), f"{name}: init differs at {k}"
        # give both the same non-trivial state and compare the forward pass
        g = torch.Generator().manual_seed(7)
        randomize_bn(tv, g)
        ours.load_state_dict(tv.state_dict())
        tv.eval()
        ours.eval()
        x = torch.randn(2, 3, 64, 64, generator=g)
        with torch.no_grad():
            y_tv, y_ours = tv(x), ours(x)
        assert torch.equal(y_tv, y_ours), f"{name}: forward differs, max |d| = {(y_tv - y_ours).abs().max()}"
        print(f"  reference == torchvision: {name} ({len(sd_tv)} state_dict entries, outputs bit-identical)")

    # CIFAR ResNet-20 (option A, 3 input channels, 10 classes) has 269,722 parameters (0.27M in the paper)
    m = CifarResNet(20, num_classes=10, in_channels=3, shortcut="A")
    n = sum(p.numel() for p in m.parameters())
    assert n == 269722, n
    print(f"  cifar resnet20 (A) parameter count = {n:,}")


# =============================================================================================
# 1. torchvision architecture metadata
# =============================================================================================
TORCHVISION_ARCHS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def gen_torchvision_keys():
    out = OrderedDict()
    for name in TORCHVISION_ARCHS:
        torch.manual_seed(0)
        entry = OrderedDict()
        if hasattr(tvm, name):
            model = getattr(tvm, name)(weights=None)
        else:  # only resnext101_64x4d can be missing (added in torchvision 0.13)
            assert name == "resnext101_64x4d"
            model = tvm.ResNet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4)
            entry["note"] = "built as ResNet(Bottleneck, [3,4,23,3], groups=64, width_per_group=4)"
        entry["num_params"] = int(sum(p.numel() for p in model.parameters()))
        entry["state_dict"] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        out[name] = entry
        print(f"  {name}: {entry['num_params']:,} params, {len(entry['state_dict'])} state_dict entries")
        del model
    path = os.path.join(OUT, "torchvision_keys.json")
    with open(path, "w") as f:
        # one state_dict entry per line keeps the file diffable and small
        f.write("{\n")
        names = list(out)
        for i, name in enumerate(names):
            e = out[name]
            f.write(f" {json.dumps(name)}: {{\n")
            if "note" in e:
                f.write(f"  \"note\": {json.dumps(e['note'])},\n")
            f.write(f"  \"num_params\": {e['num_params']},\n")
            f.write("  \"state_dict\": [\n")
            rows = [f"   {json.dumps(r, separators=(',', ':'))}" for r in e["state_dict"]]
            f.write(",\n".join(rows))
            f.write("\n  ]\n")
            f.write(" }" + ("," if i < len(names) - 1 else "") + "\n")
        f.write("}\n")
    assert json.load(open(path)) == json.loads(json.dumps(out))


# =============================================================================================
# 2. torchsummary 1.5.1 tables
# =============================================================================================
SUMMARY_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def gen_summaries():
    d = os.path.join(OUT, "summary")
    os.makedirs(d, exist_ok=True)
    totals = OrderedDict()
    for name in SUMMARY_ARCHS:
        torch.manual_seed(0)
        model = getattr(tvm, name)(weights=None)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            torchsummary_151.summary(model, (3, 224, 224), device="cpu")
        text = buf.getvalue()
        with open(os.path.join(d, f"{name}_3x224x224.txt"), "w") as f:
            f.write(text)
        total_line = [l for l in text.splitlines() if l.startswith("Total params:")][0]
        n = sum(p.numel() for p in model.parameters())
        assert total_line == "Total params: {0:,}".format(n), (total_line, n)
        totals[name] = total_line
        print(f"  {name}: {total_line}")
        del model
    return totals


# =============================================================================================
# 3. model parity cases
# =============================================================================================
W8 = [8, 16, 32, 64]


def imagenet_case(name, block, layers, inp, mode="eval", grads=False, **opt):
    options = OrderedDict(
        [
            ("numClasses", 10),
            ("inChannels", 3),
            ("groups", 1),
            ("widthPerGroup", 64),
            ("widths", list(W8)),
            ("stemWidth", 8),
            ("replaceStrideWithDilation", [False, False, False]),
            ("zeroInitResidual", False),
            ("shortcut", "B"),
            ("plain", False),
        ]
    )
    for k, v in opt.items():
        assert k in options, k
        options[k] = v
    return OrderedDict(
        [
            ("name", name),
            ("kind", "imagenet"),
            ("block", block),
            ("layers", layers),
            ("options", options),
            ("input", inp),
            ("mode", mode),
            ("grads", grads),
        ]
    )


def cifar_case(name, depth, inp, mode="eval", grads=False, **opt):
    options = OrderedDict([("numClasses", 10), ("inChannels", 3), ("shortcut", "A"), ("plain", False)])
    for k, v in opt.items():
        assert k in options, k
        options[k] = v
    return OrderedDict(
        [
            ("name", name),
            ("kind", "cifar"),
            ("depth", depth),
            ("options", options),
            ("input", inp),
            ("mode", mode),
            ("grads", grads),
        ]
    )


W4 = [4, 8, 16, 32]

# Fixture size matters (they are committed): widths are reduced where the structure, not the width,
# is under test, and a "train" case shares the weights file of the eval case of the same network
# ("weightsFrom"), so each distinct network is stored once.
CASES = [
    imagenet_case("resnet18_w8", "basic", [2, 2, 2, 2], [2, 3, 32, 32]),
    imagenet_case("resnet18_w8_train", "basic", [2, 2, 2, 2], [4, 3, 64, 64], mode="train", grads=True),
    imagenet_case("resnet50_w4", "bottleneck", [3, 4, 6, 3], [2, 3, 32, 32], widths=W4, stemWidth=4),
    imagenet_case("resnext_w8", "bottleneck", [1, 2, 2, 1], [2, 3, 32, 32], groups=4, widthPerGroup=16),
    imagenet_case("wide_w4", "bottleneck", [1, 1, 2, 1], [1, 3, 40, 40], widthPerGroup=128, widths=W4, stemWidth=4),
    imagenet_case(
        "dilated_w4", "bottleneck", [1, 1, 1, 1], [1, 3, 48, 48], replaceStrideWithDilation=[False, True, True],
        widths=W4, stemWidth=4,
    ),
    cifar_case("resnet20_a", 20, [2, 1, 28, 28], inChannels=1, shortcut="A"),
    # 2x1x14x14 (maps 14, 7 and 4: the odd 7x7 map's option-A shortcut): 4x1x28x28 has ~630K ReLU
    # inputs, too many to keep them all RELU_MARGIN from zero
    cifar_case("resnet20_a_train", 20, [2, 1, 14, 14], mode="train", grads=True, inChannels=1, shortcut="A"),
    cifar_case("resnet8_b", 8, [2, 3, 16, 16], inChannels=3, shortcut="B"),
    cifar_case("resnet8_c", 8, [2, 3, 16, 16], inChannels=3, shortcut="C"),
    cifar_case("plain14", 14, [2, 1, 28, 28], inChannels=1, plain=True),
    imagenet_case("plain18_w4", "basic", [2, 2, 2, 2], [2, 3, 32, 32], plain=True, widths=W4, stemWidth=4),
    imagenet_case(
        "resnet18_w4_zeroinit_a", "basic", [2, 2, 2, 2], [1, 3, 32, 32], shortcut="A", zeroInitResidual=True,
        widths=W4, stemWidth=4,
    ),
]
# train cases reuse the eval case's weights (same architecture, same file)
for _c in CASES:
    if _c["name"].endswith("_train"):
        _c["weightsFrom"] = _c["name"][: -len("_train")]


def build_model(case):
    o = case["options"]
    if case["kind"] == "imagenet":
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[case["block"]]
        return ResNet(
            block,
            case["layers"],
            num_classes=o["numClasses"],
            zero_init_residual=o["zeroInitResidual"],
            groups=o["groups"],
            width_per_group=o["widthPerGroup"],
            replace_stride_with_dilation=o["replaceStrideWithDilation"],
            in_channels=o["inChannels"],
            widths=o["widths"],
            stem_width=o["stemWidth"],
            shortcut=o["shortcut"],
            plain=o["plain"],
        )
    assert case["kind"] == "cifar"
    return CifarResNet(
        case["depth"],
        num_classes=o["numClasses"],
        in_channels=o["inChannels"],
        shortcut=o["shortcut"],
        plain=o["plain"],
    )


def randomize_bn(model, g, keep_zero_weights=False):
    """weight ~ U(0.5,1.5), bias ~ N(0,0.1), running_mean ~ N(0,0.1), running_var ~ U(0.5,1.5),
    num_batches_tracked = 0.  With keep_zero_weights, BN weights that are all zero (zero-init
    residual) stay zero (the random draws are still made so the stream does not shift)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                w = torch.rand(c, generator=g) + 0.5
                b = torch.randn(c, generator=g) * 0.1
                rm = torch.randn(c, generator=g) * 0.1
                rv = torch.rand(c, generator=g) + 0.5
                if not (keep_zero_weights and bool((m.weight == 0).all())):
                    m.weight.copy_(w)
                m.bias.copy_(b)
                m.running_mean.copy_(rm)
                m.running_var.copy_(rv)
                m.num_batches_tracked.zero_()


# Gradient cases draw their input until no ReLU input of the float64 forward lies within RELU_MARGIN of
# zero. A ReLU's derivative jumps at zero: an input within float32 rounding of it (the direct
# convolutions' ~5e-7 of the output's scale, Winograd's ~3e-6) can fall on either side in an engine's
# float32 forward, and that one element of the mask changes the gradients of every earlier layer by
# up to a few per cent (resnet20_a_train at 4x1x28x28 had such an input: the AVX2 kernels' bits put
# it on the other side). With the margin every engine agrees on every mask, and the gradients test
# the network instead of the luck of its rounding.
RELU_MARGIN = 5e-5


def relu_margin(model, run):
    """The smallest |input| of any nn.ReLU of model while run() executes."""
    smallest = [float("inf")]

    def hook(_module, inputs):
        smallest[0] = min(smallest[0], inputs[0].detach().abs().min().item())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return smallest[0]


def draw_clear_input(model, shape, g, train):
    """torch.randn(shape) from g, redrawn until the float64 forward of (a copy of) model in the given
    mode keeps every ReLU input at least RELU_MARGIN from zero; returns (x, draws)."""
    probe = copy.deepcopy(model).double().train(train)
    for draws in range(1, 5001):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            if relu_margin(probe, lambda: probe(x.double())) >= RELU_MARGIN:
                return x, draws
        if train:  # the probe's running statistics moved: start each draw from the model's
            probe = copy.deepcopy(model).double().train(train)
    raise RuntimeError(f"no input of shape {shape} keeps its ReLU inputs {RELU_MARGIN} from zero")


def gen_cases():
    descs = []
    for idx, case in enumerate(CASES):
        name = case["name"]
        torch.manual_seed(1000 + idx)  # module init (kaiming_normal_, Linear default init)
        model = build_model(case)
        g = torch.Generator().manual_seed(2000 + idx)
        meta = {"case": json.dumps(case, separators=(",", ":"))}
        if "weightsFrom" in case:
            shared, _ = read_safetensors(os.path.join(OUT, f"{case['weightsFrom']}.weights.safetensors"))
            model.load_state_dict(shared, strict=True)
        else:
            randomize_bn(model, g, keep_zero_weights=case["options"].get("zeroInitResidual", False))
            weights = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
            write_safetensors(os.path.join(OUT, f"{name}.weights.safetensors"), weights, meta)

        if case["grads"]:
            x, draws = draw_clear_input(model, case["input"], g, case["mode"] == "train")
            print(f"  {name}: input drawn {draws} time(s) for a ReLU margin of {RELU_MARGIN}")
        else:
            x = torch.randn(*case["input"], generator=g)
        tensors = OrderedDict()
        tensors["input"] = x
        if case["mode"] == "eval":
            model.eval()
        else:
            model.train()
        if case["grads"]:
            # Gradient references are computed in float64 (then stored as float32): through
            # training-mode batch norm, float32 results of any engine differ from the exact
            # gradient by ~1e-5 relative, and the test should compare against the truth, not
            # against PyTorch's own float32 rounding.
            target = torch.randint(0, case["options"]["numClasses"], (case["input"][0],), generator=g)
            model = model.double()
            model.zero_grad(set_to_none=True)
            logits = model(x.double())
            loss = F.cross_entropy(logits, target)
            loss.backward()
            tensors["logits"] = logits.detach().float()
            tensors["target"] = target
            tensors["loss"] = loss.detach().reshape(1).float()
            for pn, p in model.named_parameters():
                assert p.grad is not None, pn
                tensors[f"grad.{pn}"] = p.grad.detach().float().clone()
        else:
            with torch.no_grad():
                logits = model(x)
            tensors["logits"] = logits
        if case["mode"] == "train":
            for mn, m in model.named_modules():
                if isinstance(m, nn.BatchNorm2d):
                    tensors[f"after.{mn}.running_mean"] = m.running_mean.detach().float().clone()
                    tensors[f"after.{mn}.running_var"] = m.running_var.detach().float().clone()
                    tensors[f"after.{mn}.num_batches_tracked"] = m.num_batches_tracked.detach().clone()
        write_safetensors(os.path.join(OUT, f"{name}.io.safetensors"), tensors, meta)

        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"  {name}: {n_params:,} params, logits {list(logits.shape)} "
            f"max|logit| {logits.detach().abs().max().item():.4g}"
            + (f", loss {tensors['loss'].item():.6f}" if case["grads"] else "")
        )
        descs.append(case)
    write_json_list(os.path.join(OUT, "cases.json"), descs)


# =============================================================================================
# 4. op-level fixtures
# =============================================================================================
def gen_ops():
    g = torch.Generator().manual_seed(3000)
    specs = []
    tensors = OrderedDict()

    def rn(*shape):
        return torch.randn(*shape, generator=g)

    def add(name, op, attrs, inputs, outputs):
        assert "." not in name, name  # keys are "<name>.<tensor>"
        for k, v in list(inputs.items()) + list(outputs.items()):
            assert v.dtype in (torch.float32, torch.int64), (name, k, v.dtype)
            tensors[f"{name}.{k}"] = v.detach().clone().contiguous()
        specs.append(
            OrderedDict(
                [
                    ("name", name),
                    ("op", op),
                    ("attrs", attrs),
                    ("inputs", list(inputs)),
                    ("outputs", list(outputs)),
                ]
            )
        )

    def leaf(t):
        return t.detach().clone().requires_grad_(True)

    # ---- conv2d ---------------------------------------------------------------------------
    conv_cases = [
        ("conv2d_a_s2_p1_bias", [2, 3, 9, 7], [4, 3, 3, 3], 2, 1, 1, 1, True),
        ("conv2d_b_groups2_p1", [1, 4, 8, 8], [6, 2, 3, 3], 1, 1, 1, 2, False),
        ("conv2d_c_dil2_p2", [2, 2, 10, 9], [3, 2, 3, 3], 1, 2, 2, 1, False),
        ("conv2d_d_stem7x7_s2_p3", [1, 3, 11, 11], [5, 3, 7, 7], 2, 3, 1, 1, False),
        ("conv2d_e_1x1_s2", [3, 5, 6, 6], [7, 5, 1, 1], 2, 0, 1, 1, False),
        ("conv2d_f_depthwise_p1_bias", [1, 4, 5, 5], [4, 1, 3, 3], 1, 1, 1, 4, True),
    ]
    for name, xs, ws, s, p, d, groups, bias in conv_cases:
        x, w = leaf(rn(*xs)), leaf(rn(*ws))
        b = leaf(rn(ws[0])) if bias else None
        y = F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=groups)
        gy = rn(*y.shape)
        y.backward(gy)
        ins = OrderedDict([("x", x), ("w", w)])
        outs = OrderedDict([("y", y), ("gx", x.grad), ("gw", w.grad)])
        if bias:
            ins["b"] = b
            outs["gb"] = b.grad
        ins["gy"] = gy
        attrs = OrderedDict(
            [("stride", [s, s]), ("padding", [p, p]), ("dilation", [d, d]), ("groups", groups), ("bias", bias)]
        )
        add(name, "conv2d", attrs, ins, outs)

    # ---- batch_norm -------------------------------------------------------------------------
    for training in (True, False):
        name = "batch_norm_train" if training else "batch_norm_eval"
        x = leaf(rn(4, 3, 5, 5))
        w = leaf(torch.rand(3, generator=g) + 0.5)
        b = leaf(rn(3) * 0.1)
        rm0 = rn(3) * 0.1
        rv0 = torch.rand(3, generator=g) + 0.5
        rm, rv = rm0.clone(), rv0.clone()
        y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)
        gy = rn(*y.shape)
        y.backward(gy)
        ins = OrderedDict([("x", x), ("w", w), ("b", b), ("running_mean", rm0), ("running_var", rv0), ("gy", gy)])
        outs = OrderedDict([("y", y)])
        if training:
            outs["running_mean_after"] = rm
            outs["running_var_after"] = rv
        else:
            assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
        outs.update([("gx", x.grad), ("gw", w.grad), ("gb", b.grad)])
        attrs = OrderedDict([("training", training), ("momentum", 0.1), ("eps", 1e-5)])
        add(name, "batch_norm", attrs, ins, outs)

    # ---- max_pool2d -------------------------------------------------------------------------
    for name, xs, k, s, p in [
        ("max_pool2d_k3_s2_p1", [2, 3, 9, 9], 3, 2, 1),
        ("max_pool2d_k2_s2_p0", [1, 2, 8, 7], 2, 2, 0),
    ]:
        x = leaf(rn(*xs))
        y = F.max_pool2d(x, kernel_size=k, stride=s, padding=p)
        gy = rn(*y.shape)
        y.backward(gy)
        attrs = OrderedDict(
            [("kernel", [k, k]), ("stride", [s, s]), ("padding", [p, p]), ("dilation", [1, 1]), ("ceilMode", False)]
        )
        add(name, "max_pool2d", attrs, OrderedDict([("x", x), ("gy", gy)]), OrderedDict([("y", y), ("gx", x.grad)]))

    # ---- adaptive_avg_pool2d ----------------------------------------------------------------
    for name, xs, os_ in [
        ("adaptive_avg_pool2d_1x1", [2, 3, 7, 7], [1, 1]),
        ("adaptive_avg_pool2d_3x2", [1, 2, 5, 7], [3, 2]),
    ]:
        x = leaf(rn(*xs))
        y = F.adaptive_avg_pool2d(x, os_)
        gy = rn(*y.shape)
        y.backward(gy)
        add(
            name,
            "adaptive_avg_pool2d",
            OrderedDict([("outputSize", os_)]),
            OrderedDict([("x", x), ("gy", gy)]),
            OrderedDict([("y", y), ("gx", x.grad)]),
        )

    # ---- linear -----------------------------------------------------------------------------
    x, w, b = leaf(rn(3, 5)), leaf(rn(4, 5)), leaf(rn(4))
    y = F.linear(x, w, b)
    gy = rn(*y.shape)
    y.backward(gy)
    add(
        "linear",
        "linear",
        OrderedDict([("bias", True)]),
        OrderedDict([("x", x), ("w", w), ("b", b), ("gy", gy)]),
        OrderedDict([("y", y), ("gx", x.grad), ("gw", w.grad), ("gb", b.grad)]),
    )

    # ---- log_softmax ------------------------------------------------------------------------
    x = leaf(rn(3, 7))
    y = F.log_softmax(x, dim=1)
    gy = rn(*y.shape)
    y.backward(gy)
    add(
        "log_softmax_dim1",
        "log_softmax",
        OrderedDict([("dim", 1)]),
        OrderedDict([("x", x), ("gy", gy)]),
        OrderedDict([("y", y), ("gx", x.grad)]),
    )

    # ---- cross_entropy ----------------------------------------------------------------------
    logits0 = rn(5, 7)
    target = torch.randint(0, 7, (5,), generator=g)
    for name, ls in [("cross_entropy_mean", 0.0), ("cross_entropy_ls0p1", 0.1)]:
        logits = leaf(logits0)
        loss = F.cross_entropy(logits, target, reduction="mean", label_smoothing=ls)
        loss.backward()  # upstream gradient = scalar 1
        add(
            name,
            "cross_entropy",
            OrderedDict([("reduction", "mean"), ("labelSmoothing", ls)]),
            OrderedDict([("logits", logits), ("target", target)]),
            OrderedDict([("loss", loss.reshape(1)), ("glogits", logits.grad)]),
        )

    # ---- relu -------------------------------------------------------------------------------
    x0 = rn(2, 3, 4)
    x0.view(-1)[::5] = 0.0  # exact zeros: PyTorch's relu gradient at 0 is 0
    x = leaf(x0)
    y = F.relu(x)
    gy = rn(*y.shape)
    y.backward(gy)
    assert torch.equal(x.grad, gy * (x0 > 0).float())
    add("relu", "relu", OrderedDict(), OrderedDict([("x", x), ("gy", gy)]), OrderedDict([("y", y), ("gx", x.grad)]))

    write_safetensors(os.path.join(OUT, "ops.safetensors"), tensors, {"generator": "scripts/golden/generate.py"})
    write_json_list(os.path.join(OUT, "ops.json"), specs)
    print(f"  {len(specs)} op cases, {len(tensors)} tensors")


# =============================================================================================
def self_check():
    """Read every safetensors file back with the independent reader and write a manifest."""
    files = []
    for root, _, names in os.walk(OUT):
        for n in sorted(names):
            if n == "manifest.json":
                continue
            files.append(os.path.relpath(os.path.join(root, n), OUT))
    files.sort()
    manifest = OrderedDict()
    manifest["generator"] = "scripts/golden/generate.py"
    manifest["versions"] = OrderedDict(
        [("torch", torch.__version__), ("torchvision", torchvision.__version__), ("numpy", np.__version__)]
    )
    entries = []
    total = 0
    for rel in files:
        p = os.path.join(OUT, rel)
        if rel.endswith(".safetensors"):
            tensors, _ = read_safetensors(p)
            for k, v in tensors.items():
                assert torch.isfinite(v.float()).all(), (rel, k)
        data = open(p, "rb").read()
        total += len(data)
        entries.append(OrderedDict([("file", rel), ("bytes", len(data)), ("sha256", hashlib.sha256(data).hexdigest())]))
    manifest["files"] = entries

    # every case must be reproducible from cases.json + its two files alone
    cases = json.load(open(os.path.join(OUT, "cases.json")))
    for case in cases:
        model = build_model(case)
        weights, meta = read_safetensors(os.path.join(OUT, f"{case.get('weightsFrom', case['name'])}.weights.safetensors"))
        if "weightsFrom" not in case:
            assert json.loads(meta["case"]) == case
        model.load_state_dict(weights, strict=True)
        assert list(weights) == list(model.state_dict())
        iot, _ = read_safetensors(os.path.join(OUT, f"{case['name']}.io.safetensors"))
        model.train(case["mode"] == "train")
        with torch.no_grad():
            y = model(iot["input"])
        if case["grads"]:  # references computed in float64
            assert torch.allclose(y, iot["logits"], rtol=1e-4, atol=1e-4 * iot["logits"].abs().max().item()), case["name"]
        else:
            assert torch.equal(y, iot["logits"]), case["name"]
    print(f"  {len(cases)} cases re-run from the files: logits bit-identical (float64-referenced grad cases: within 1e-4)")
    manifest["total_bytes"] = total
    write_json(os.path.join(OUT, "manifest.json"), manifest)
    print(f"  {len(files)} files, {total / 1e6:.2f} MB total")


def main():
    setup_determinism()
    if os.path.isdir(OUT):  # start clean: this directory is entirely generated
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__} -> {OUT}")
    print("[0] reference models vs torchvision")
    check_reference_matches_torchvision()
    print("[1] torchvision_keys.json")
    gen_torchvision_keys()
    print("[2] torchsummary 1.5.1 tables")
    gen_summaries()
    print("[3] model parity cases")
    gen_cases()
    print("[4] op fixtures")
    gen_ops()
    print("[5] self-check + manifest")
    self_check()
    # the optimizer and training-step references live in the same folder (written after the manifest,
    # which covers the files above): regenerated here so that the folder never loses them
    print("[6] optimizer and training-step references")
    runpy.run_path(os.path.join(HERE, "gen_optim.py"), run_name="__main__")
    runpy.run_path(os.path.join(HERE, "gen_train_steps.py"), run_name="__main__")


if __name__ == "__main__":
    main()
