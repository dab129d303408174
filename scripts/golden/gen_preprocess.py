#!/usr/bin/python3
"""Reference data for image decoding and preprocessing (test/fixtures/images/).

Run with Debian's interpreter (torch 1.13 / torchvision 0.14 / Pillow 9.4 / numpy) and the photos
of Debian's python3-skimage (apt-get install -y python3-skimage):

    /usr/bin/python3 scripts/golden/gen_preprocess.py              # images + references
    /usr/bin/python3 scripts/golden/gen_preprocess.py --hub-data   # also src/data/imagenet_classes.ts

What it writes (deterministic: same inputs, byte-identical outputs):

* Small copies of four skimage photos (each < 60 KB), re-encoded once with Pillow: two PNGs that
  are smaller than 232 px on the short side (so the 256/232 presets *upsample* them), a JPEG
  larger than 256 (it *downsamples*, with PIL's antialiasing support) and one in between
  (240 px: upsampled by tv256, downsampled by tv232); tv96/hf80 downsample all four.
* noise.png (61 x 47 seeded noise) and PIL's Image.resize of it with every filter the resampler
  implements (bilinear, bicubic, lanczos, box, hamming) to sizes that shrink and enlarge each axis.
* Decoding special cases: an EXIF-rotated JPEG (orientation 6), a grayscale PNG, an RGBA PNG, a
  palette PNG, a CMYK JPEG, and a PNG whose header claims 100000 x 100000 pixels.
* preprocess_ref.safetensors + preprocess_ref.json: for every photo and every preset, the uint8
  image after resize + center crop (HWC, what torchvision's ImageClassification hands to
  pil_to_tensor), and, for a few cases, the final normalized float32 CHW tensor. The presets:
    tv256   torchvision ImageClassification(crop_size=224, resize_size=256)  (IMAGENET1K_V1)
    tv232   torchvision ImageClassification(crop_size=224, resize_size=232)  (IMAGENET1K_V2)
    tv96    torchvision ImageClassification(crop_size=80, resize_size=96)    (downsampling everywhere)
    hf224   transformers ConvNextImageProcessor with microsoft/resnet-50's preprocessor_config.json
    hf80    the same with size 80 (resize to int(80 / 0.875) = 91, bicubic, crop 80)
  and the decoded pixels (PIL, .convert('RGB'), EXIF-transposed where asked) of the special cases.
  The transformers processor is NOT installed here; hf_convnext() below re-implements its
  slow (PIL) path line by line: image_processing_convnext.py resize() + image_transforms.py
  (get_resize_output_image_size, resize via PIL, center_crop with floor division, rescale in
  float64 then float32, normalize in float32).

With --hub-data it also writes src/data/imagenet_classes.ts (torchvision's _IMAGENET_CATEGORIES)
and test/fixtures/images/torchvision_weights.json (the ResNet weight enums' URL, params, metrics
and transforms), which test/hub.test.ts compares with src/hub/weights.ts.
"""

import hashlib
import io
import json
import os
import struct
import sys
import zlib
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.models import resnet as tv_resnet
from torchvision.transforms._presets import ImageClassification

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "test", "fixtures", "images")
SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# microsoft/resnet-50's preprocessor_config.json (as published on the Hub).
RESNET50_PREPROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 3,
    "size": 224,
}


# ---------------------------------------------------------------------------------------------
# safetensors (U8 and F32 only; the repo's safetensors_io.py writes F32/I64)
# ---------------------------------------------------------------------------------------------


def write_safetensors(path, tensors):
    header = OrderedDict()
    chunks = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == np.uint8:
            tag = "U8"
        elif arr.dtype == np.float32:
            tag = "F32"
            arr = arr.astype("<f4", copy=False)
        else:
            raise TypeError(f"{name}: {arr.dtype}")
        data = arr.tobytes(order="C")
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Preprocessing references
# ---------------------------------------------------------------------------------------------


def torchvision_preset(img, resize_size, crop_size):
    """(uint8 HWC after resize+crop, float32 CHW) exactly as torchvision's preset computes them."""
    t = ImageClassification(crop_size=crop_size, resize_size=resize_size)
    F = torchvision.transforms.functional
    small = F.center_crop(F.resize(img, [resize_size], interpolation=t.interpolation), [crop_size])
    u8 = np.asarray(small, dtype=np.uint8).copy()
    x = t(img).numpy().astype(np.float32)
    # The float result must be exactly normalize(u8 / 255).
    again = F.normalize(F.convert_image_dtype(F.pil_to_tensor(small), torch.float), t.mean, t.std).numpy()
    assert np.array_equal(again, x)
    return u8, x


def hf_convnext(img, cfg):
    """transformers' ConvNextImageProcessor (slow path) on one RGB PIL image -> (uint8 HWC, float32 CHW)."""
    size = cfg.get("size", {"shortest_edge": 384})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    shortest_edge = size["shortest_edge"]
    crop_pct = cfg.get("crop_pct")
    crop_pct = 224 / 256 if crop_pct is None else crop_pct
    resample = cfg.get("resample", 3)
    mean = cfg.get("image_mean", [0.5, 0.5, 0.5])
    std = cfg.get("image_std", [0.5, 0.5, 0.5])
    rescale_factor = cfg.get("rescale_factor", 1 / 255)

    image = np.asarray(img, dtype=np.uint8)
    if shortest_edge < 384:
        resize_shortest_edge = int(shortest_edge / crop_pct)
        h, w = image.shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize_shortest_edge, int(resize_shortest_edge * long / short)
        oh, ow = (new_long, new_short) if w <= h else (new_short, new_long)
        image = np.array(Image.fromarray(image).resize((ow, oh), resample=resample))
        ch = cw = shortest_edge
        top = (oh - ch) // 2
        left = (ow - cw) // 2
        assert top >= 0 and left >= 0
        image = image[top : top + ch, left : left + cw]
    else:
        image = np.array(Image.fromarray(image).resize((shortest_edge, shortest_edge), resample=resample))
    u8 = np.ascontiguousarray(image)
    x = (image.astype(np.float64) * rescale_factor).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return u8, np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Fixture images
# ---------------------------------------------------------------------------------------------


def make_photos():
    """Small re-encoded copies of skimage photos; returns {fixture name: PIL RGB image as decoded}."""
    specs = [
        # name, source, width, format, save options
        ("chelsea.png", "chelsea.png", 180, "PNG", {"optimize": True}),
        ("astronaut.png", "astronaut.png", 150, "PNG", {"optimize": True}),
        ("coffee.jpg", "coffee.png", 420, "JPEG", {"quality": 85}),
        ("rocket.jpg", "rocket.jpg", 360, "JPEG", {"quality": 85}),
    ]
    out = OrderedDict()
    for name, src, width, fmt, opts in specs:
        im = Image.open(os.path.join(SKIMAGE, src)).convert("RGB")
        h = round(im.height * width / im.width)
        im = im.resize((width, h), Image.LANCZOS)
        path = os.path.join(OUT, name)
        im.save(path, fmt, **opts)
        size = os.path.getsize(path)
        assert size < 60_000, f"{name}: {size} bytes"
        out[name] = Image.open(path).convert("RGB")
    return out


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def make_special(refs, manifest):
    base = Image.open(os.path.join(SKIMAGE, "coffee.png")).convert("RGB").resize((64, 43), Image.LANCZOS)

    # EXIF orientation 6 ("rotate 90 CW to display"): stored 64x43, displayed 43x64.
    exif = Image.Exif()
    exif[0x0112] = 6
    p = os.path.join(OUT, "exif_rot6.jpg")
    base.save(p, "JPEG", quality=90, exif=exif.tobytes())
    shown = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
    refs["decode/exif_rot6.jpg"] = np.asarray(shown, dtype=np.uint8).copy()

    p = os.path.join(OUT, "gray.png")
    base.convert("L").save(p, "PNG")
    refs["decode/gray.png"] = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).copy()

    p = os.path.join(OUT, "rgba.png")
    rgba = base.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (43, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(p, "PNG")
    refs["decode/rgba.png"] = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).copy()

    p = os.path.join(OUT, "palette.png")
    base.convert("P", palette=Image.ADAPTIVE, colors=16).save(p, "PNG")
    refs["decode/palette.png"] = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).copy()

    # CMYK JPEG (Adobe, inverted): colour conversions differ between libraries (PIL uses a naive
    # formula, libvips an ICC transform), so only the shape is compared; the PIL pixels are kept for
    # the record.
    p = os.path.join(OUT, "cmyk.jpg")
    base.convert("CMYK").save(p, "JPEG", quality=90)
    refs["decode/cmyk.jpg"] = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).copy()

    # A PNG whose header claims 100000 x 100000 RGB pixels (30 GB decoded), with a tiny IDAT.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b"")
    with open(os.path.join(OUT, "huge_header.png"), "wb") as f:
        f.write(png)

    manifest["decode"] = {
        "exif_rot6.jpg": {"stored": [43, 64], "shown": list(refs["decode/exif_rot6.jpg"].shape), "compare": "exact"},
        "gray.png": {"shape": list(refs["decode/gray.png"].shape), "compare": "exact"},
        "rgba.png": {"shape": list(refs["decode/rgba.png"].shape), "compare": "exact (alpha dropped as PIL convert('RGB'))"},
        "palette.png": {"shape": list(refs["decode/palette.png"].shape), "compare": "exact"},
        "cmyk.jpg": {"shape": list(refs["decode/cmyk.jpg"].shape), "compare": "shape only"},
        "huge_header.png": {"claims": [100_000, 100_000]},
    }


RESAMPLE_FILTERS = OrderedDict(bilinear=Image.BILINEAR, bicubic=Image.BICUBIC, lanczos=Image.LANCZOS, box=Image.BOX, hamming=Image.HAMMING)
RESAMPLE_SIZES = [(16, 12), (97, 30), (40, 150), (7, 5)]


def make_resample_cases(refs, manifest):
    """PIL's Image.resize of a seeded noise image (the hardest case for rounding) to sizes that
    shrink and enlarge each axis, with every filter the resampler implements."""
    rng = np.random.RandomState(1234)
    noise = rng.randint(0, 256, size=(47, 61, 3), dtype=np.uint8)
    p = os.path.join(OUT, "noise.png")
    Image.fromarray(noise).save(p, "PNG")
    im = Image.open(p).convert("RGB")
    assert np.array_equal(np.asarray(im), noise)
    cases = []
    for fname, f in RESAMPLE_FILTERS.items():
        for w, h in RESAMPLE_SIZES:
            refs[f"resize/{fname}/{w}x{h}"] = np.asarray(im.resize((w, h), f), dtype=np.uint8).copy()
            cases.append(f"{fname}/{w}x{h}")
    manifest["resize"] = {"image": "noise.png", "size": [61, 47], "cases": cases}


def main():
    if not os.path.isdir(SKIMAGE):
        sys.exit(f"{SKIMAGE} not found: apt-get install -y python3-skimage")
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    photos = make_photos()
    refs = OrderedDict()
    manifest = OrderedDict(
        generator="scripts/golden/gen_preprocess.py",
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        pillow=Image.__version__ if hasattr(Image, "__version__") else __import__("PIL").__version__,
        photos=OrderedDict(),
        presets=OrderedDict(
            tv256={"kind": "torchvision", "resize": 256, "crop": 224},
            tv232={"kind": "torchvision", "resize": 232, "crop": 224},
            tv96={"kind": "torchvision", "resize": 96, "crop": 80},
            hf224={"kind": "hf", "config": RESNET50_PREPROCESSOR},
            hf80={"kind": "hf", "config": dict(RESNET50_PREPROCESSOR, size=80)},
            hfdefault={"kind": "hf", "config": {}},
        ),
        # float32 CHW tensors stored in full (all other cases store the uint8 crop only)
        float_cases=["chelsea.png/tv256", "coffee.jpg/hf224"],
        sha256=OrderedDict(),
    )
    for name, img in photos.items():
        manifest["photos"][name] = {"width": img.width, "height": img.height, "bytes": os.path.getsize(os.path.join(OUT, name))}
        for preset, spec in manifest["presets"].items():
            if spec["kind"] == "torchvision":
                u8, x = torchvision_preset(img, spec["resize"], spec["crop"])
            else:
                u8, x = hf_convnext(img, spec["config"])
            key = f"{name}/{preset}"
            if preset == "hfdefault":
                # 384x384 (warped, no crop): stored as digests only, to keep the fixtures small
                manifest["sha256"][key] = {"u8": hashlib.sha256(u8.tobytes()).hexdigest(), "f32": hashlib.sha256(x.astype("<f4").tobytes()).hexdigest(), "shape": list(u8.shape)}
                continue
            refs[f"u8/{key}"] = u8
            if key in manifest["float_cases"]:
                refs[f"f32/{key}"] = x
    make_special(refs, manifest)
    make_resample_cases(refs, manifest)
    write_safetensors(os.path.join(OUT, "preprocess_ref.safetensors"), refs)
    write_json(os.path.join(OUT, "preprocess_ref.json"), manifest)
    print(f"wrote {len(refs)} tensors to {OUT}")
    if "--hub-data" in sys.argv[1:]:
        write_hub_data()


# ---------------------------------------------------------------------------------------------
# --hub-data
# ---------------------------------------------------------------------------------------------

WEIGHT_ENUMS = [
    ("resnet18", "ResNet18_Weights"),
    ("resnet34", "ResNet34_Weights"),
    ("resnet50", "ResNet50_Weights"),
    ("resnet101", "ResNet101_Weights"),
    ("resnet152", "ResNet152_Weights"),
    ("resnext50_32x4d", "ResNeXt50_32X4D_Weights"),
    ("resnext101_32x8d", "ResNeXt101_32X8D_Weights"),
    ("resnext101_64x4d", "ResNeXt101_64X4D_Weights"),
    ("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
    ("wide_resnet101_2", "Wide_ResNet101_2_Weights"),
]


def write_hub_data():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert len(_IMAGENET_CATEGORIES) == 1000
    lines = [
        "/**",
        " * The 1000 ImageNet-1k class names in index order, as torchvision 0.14 ships them",
        " * (torchvision/models/_meta.py, _IMAGENET_CATEGORIES). Generated by",
        " * `scripts/golden/gen_preprocess.py --hub-data`; do not edit.",
        " */",
        "export const IMAGENET_CLASSES: readonly string[] = Object.freeze([",
    ]
    lines += [f"  {json.dumps(c)}," for c in _IMAGENET_CATEGORIES]
    lines.append("]);")
    path = os.path.join(ROOT, "src", "data", "imagenet_classes.ts")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")

    weights = OrderedDict()
    for arch, enum_name in WEIGHT_ENUMS:
        enum = getattr(tv_resnet, enum_name)
        entries = OrderedDict()
        for w in enum:
            t = w.transforms()
            entries[w.name] = OrderedDict(
                url=w.url,
                num_params=w.meta["num_params"],
                acc1=w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                acc5=w.meta["_metrics"]["ImageNet-1K"]["acc@5"],
                resize=t.resize_size[0],
                crop=t.crop_size[0],
                interpolation=t.interpolation.value,
                mean=t.mean,
                std=t.std,
                categories=len(w.meta["categories"]),
            )
        weights[arch] = OrderedDict(enum=enum_name, default=enum.DEFAULT.name, weights=entries)
    write_json(os.path.join(OUT, "torchvision_weights.json"), weights)
    print(f"wrote {path} and torchvision_weights.json")


if __name__ == "__main__":
    main()
