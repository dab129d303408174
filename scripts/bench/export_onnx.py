#!/usr/bin/env python3
"""Exports torchvision's ResNet-18/50 (random weights, eval mode) to ONNX for the ORT peer of `resnet bench`.

usage: export_onnx.py <out-dir> [arch ...]          (default arches: resnet18 resnet50)

Writes <out-dir>/<arch>.onnx with input "input" [N, 3, 224, 224] (batch is a dynamic axis) and output
"logits" [N, 1000], opset 13. Existing files are kept (the bench caches them), and each file is written
to a temporary name first and renamed, so an interrupted export never leaves a truncated model. Needs only
torch and torchvision (torch.onnx serialises the graph itself; the `onnx` Python package is not used).
Prints one JSON line: {"files": {arch: path}, "torch": version, "opset": 13}.
"""
import json
import os
import sys
import warnings

OPSET = 13


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    arches = sys.argv[2:] or ["resnet18", "resnet50"]
    import torch
    import torchvision

    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for arch in arches:
        path = os.path.join(out_dir, f"{arch}.onnx")
        files[arch] = path
        if os.path.exists(path) and os.path.getsize(path) > 0:
            continue
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        tmp = f"{path}.tmp{os.getpid()}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                x,
                tmp,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        os.replace(tmp, path)
    print(json.dumps({"files": files, "torch": torch.__version__, "opset": OPSET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
