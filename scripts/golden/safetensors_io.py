"""Minimal, dependency-free safetensors writer/reader (no `safetensors` package).

File layout (https://github.com/huggingface/safetensors):
  8 bytes   little-endian u64 N = length of the JSON header
  N bytes   UTF-8 JSON header, right-padded with spaces to a multiple of 8:
            {"<name>": {"dtype": "F32"|"I64", "shape": [...], "data_offsets": [begin, end]},
             ...,
             "__metadata__": {"<key>": "<string value>", ...}}
            (offsets are relative to the start of the data section)
  data      raw little-endian tensor bytes, tensors in insertion order, no gaps.
"""

import json
import struct
from collections import OrderedDict

import numpy as np
import torch

_DTYPES = {
    torch.float32: ("F32", "<f4"),
    torch.int64: ("I64", "<i8"),
}
_NP_BY_NAME = {"F32": "<f4", "I64": "<i8"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered mapping name -> torch.Tensor (float32 or int64 only)."""
    header = OrderedDict()
    chunks = []
    offset = 0
    for name, t in tensors.items():
        if name == "__metadata__":
            raise ValueError("reserved tensor name")
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype} (only float32/int64)")
        tag, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        assert len(data) == t.numel() * np.dtype(np_dtype).itemsize
        header[name] = {
            "dtype": tag,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        md = OrderedDict()
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise TypeError("safetensors metadata values must be strings")
            md[k] = v
        header["__metadata__"] = md
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for c in chunks:
            f.write(c)


def read_safetensors(path):
    """Returns (OrderedDict name -> torch.Tensor, metadata dict). Used for self-checks."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    base = 8 + n
    metadata = header.pop("__metadata__", {})
    out = OrderedDict()
    expect = 0
    for name, info in header.items():
        b, e = info["data_offsets"]
        assert b == expect, f"{name}: non-contiguous data offsets"
        expect = e
        arr = np.frombuffer(raw[base + b : base + e], dtype=_NP_BY_NAME[info["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    assert base + expect == len(raw), "trailing bytes"
    return out, metadata
