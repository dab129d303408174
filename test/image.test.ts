/**
 * Image decoding (sharp) and preprocessing (src/image/) against the references that
 * scripts/golden/gen_preprocess.py produced with PIL 9.4, torchvision 0.14 and a line-by-line
 * Python copy of transformers' ConvNextImageProcessor (test/fixtures/images/).
 *
 * Tolerances, as measured (docs/PRETRAINED.md): decoding is byte-identical to PIL for every JPEG
 * and PNG fixture; the uint8 image after resize + crop is byte-identical for every photo and
 * preset; the normalized float32 tensors are bit-identical (max abs difference 0); PIL's resize
 * of seeded noise is reproduced exactly with all five filters. The test enforces exactly that:
 * MAX_U8_DIFF, the largest allowed uint8 difference after resize, is 0.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FormatError } from '../src/errors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import {
  MAX_IMAGE_PIXELS,
  decodeImage,
  hfConvNextDefaults,
  hfPreprocessFromConfig,
  listImageFiles,
  preprocessImage,
  probeImage,
  resizeAndCrop,
  resizeU8,
  shorterSideSize,
  torchvisionPreset,
  type PreprocessSpec,
  type ResampleFilter,
  type RgbImage,
} from '../src/image/index.js';

const FIX = fileURLToPath(new URL('../../test/fixtures/images/', import.meta.url));
const manifest = JSON.parse(fs.readFileSync(path.join(FIX, 'preprocess_ref.json'), 'utf8')) as {
  photos: Record<string, { width: number; height: number }>;
  presets: Record<string, { kind: 'torchvision'; resize: number; crop: number } | { kind: 'hf'; config: Record<string, unknown> }>;
  float_cases: string[];
  sha256: Record<string, { u8: string; f32: string; shape: number[] }>;
  resize: { image: string; size: [number, number]; cases: string[] };
};
const refs = readSafetensors(path.join(FIX, 'preprocess_ref.safetensors')).tensors;

/** Largest allowed |ours - reference| of the uint8 image after resize + crop (measured: 0). */
const MAX_U8_DIFF = 0;

function specOf(name: string): PreprocessSpec {
  const p = manifest.presets[name]!;
  return p.kind === 'torchvision' ? torchvisionPreset({ resizeSize: p.resize, cropSize: p.crop }) : hfPreprocessFromConfig(p.config, name);
}

function ref(key: string): { data: Uint8Array | Float32Array; shape: number[] } {
  const t = refs.get(key);
  assert.ok(t, `reference ${key} missing from preprocess_ref.safetensors`);
  return { data: t.data as Uint8Array | Float32Array, shape: t.shape };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; count: number } {
  assert.equal(a.length, b.length);
  let max = 0;
  let count = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (d > 0) count++;
    if (d > max) max = d;
  }
  return { max, count };
}

const decoded = new Map<string, RgbImage>();
async function photo(name: string): Promise<RgbImage> {
  let img = decoded.get(name);
  if (!img) {
    img = await decodeImage(path.join(FIX, name));
    decoded.set(name, img);
  }
  return img;
}

test('fixture photos are small and decode to the size PIL reports', async () => {
  for (const [name, info] of Object.entries(manifest.photos)) {
    assert.ok(fs.statSync(path.join(FIX, name)).size < 60_000, `${name} is small`);
    const img = await photo(name);
    assert.deepEqual([img.width, img.height], [info.width, info.height], name);
    assert.equal(img.data.length, info.width * info.height * 3);
  }
});

for (const presetName of Object.keys(manifest.presets)) {
  test(`preprocessing parity: ${presetName} (uint8 after resize + crop; float32 where stored)`, async () => {
    const spec = specOf(presetName);
    for (const name of Object.keys(manifest.photos)) {
      const key = `${name}/${presetName}`;
      const img = await photo(name);
      const small = resizeAndCrop(img, spec);
      const x = preprocessImage(img, spec);
      const digest = manifest.sha256[key];
      if (digest) {
        assert.deepEqual([small.height, small.width, 3], digest.shape, `${key} shape`);
        assert.equal(crypto.createHash('sha256').update(small.data).digest('hex'), digest.u8, `${key}: uint8 image differs from the reference`);
        const f32 = Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength);
        assert.equal(crypto.createHash('sha256').update(f32).digest('hex'), digest.f32, `${key}: float32 tensor differs from the reference`);
        continue;
      }
      const u8 = ref(`u8/${key}`);
      assert.deepEqual([small.height, small.width, 3], u8.shape, `${key} shape`);
      const d = maxAbsDiff(small.data, u8.data);
      assert.ok(d.max <= MAX_U8_DIFF, `${key}: uint8 max |diff| ${d.max} (${d.count} values differ)`);
      if (manifest.float_cases.includes(key)) {
        const f = ref(`f32/${key}`);
        assert.deepEqual(x.shape, f.shape, `${key} float shape`);
        const df = maxAbsDiff(x.data, f.data);
        // Bit-identical: every step is float32-rounded as torch / numpy round it.
        assert.equal(df.max, 0, `${key}: float32 max |diff| ${df.max} (${df.count} values differ)`);
      }
    }
  });
}

test('decoding matches PIL: EXIF rotation, grayscale, RGBA (alpha dropped), palette; CMYK becomes RGB', async () => {
  for (const name of ['exif_rot6.jpg', 'gray.png', 'rgba.png', 'palette.png', 'cmyk.jpg']) {
    const img = await decodeImage(path.join(FIX, name));
    const r = ref(`decode/${name}`);
    assert.deepEqual([img.height, img.width, 3], r.shape, `${name} shape`);
    if (name === 'cmyk.jpg') continue; // colour conversion differs by design (ICC vs PIL's naive formula)
    const d = maxAbsDiff(img.data, r.data);
    assert.equal(d.max, 0, `${name}: max |diff| ${d.max} (${d.count} values differ)`);
  }
  // The EXIF-rotated JPEG is stored landscape and shown portrait.
  const rot = await decodeImage(path.join(FIX, 'exif_rot6.jpg'));
  assert.deepEqual([rot.width, rot.height], [43, 64]);
  // Grayscale expands to R = G = B.
  const g = await decodeImage(path.join(FIX, 'gray.png'));
  for (let i = 0; i < g.data.length; i += 3) assert.ok(g.data[i] === g.data[i + 1] && g.data[i] === g.data[i + 2]);
  // CMYK: a plausible RGB image (the coffee cup is not black, not white).
  const c = await decodeImage(path.join(FIX, 'cmyk.jpg'));
  const mean = c.data.reduce((s, v) => s + v, 0) / c.data.length;
  assert.ok(mean > 30 && mean < 230, `cmyk mean ${mean}`);
});

test('non-images, empty files, folders and huge headers are one-line FormatErrors', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-image-'));
  try {
    const txt = path.join(dir, 'notes.txt');
    fs.writeFileSync(txt, 'this is not an image\n');
    const empty = path.join(dir, 'empty.jpg');
    fs.writeFileSync(empty, '');
    const fake = path.join(dir, 'fake.png');
    fs.writeFileSync(fake, Buffer.from('\x89PNG\r\n\x1a\n garbage garbage', 'latin1'));
    const truncated = path.join(dir, 'truncated.jpg');
    fs.writeFileSync(truncated, fs.readFileSync(path.join(FIX, 'rocket.jpg')).subarray(0, 5000));
    const cases: [string | Uint8Array, RegExp][] = [
      [txt, /notes\.txt: not an image/],
      [empty, /empty/],
      [fake, /fake\.png: /],
      [truncated, /truncated\.jpg: cannot decode the JPEG image \(.*premature end/],
      [dir, /is a directory/],
      [path.join(dir, 'missing.jpg'), /file not found/],
      [new TextEncoder().encode('plain text'), /image buffer: not an image/],
    ];
    for (const [input, re] of cases) {
      await assert.rejects(decodeImage(input), (e: unknown) => {
        assert.ok(e instanceof FormatError, `FormatError for ${String(input)}: ${String(e)}`);
        assert.match(e.message, re);
        assert.ok(!e.message.includes('\n'), 'one line');
        return true;
      });
    }
    const t0 = performance.now();
    await assert.rejects(decodeImage(path.join(FIX, 'huge_header.png')), (e: unknown) => {
      assert.ok(e instanceof FormatError);
      assert.match(e.message, /100000x100000 pixels .* too large; the limit is 100 megapixels/);
      return true;
    });
    assert.ok(performance.now() - t0 < 2000, 'refused from the header, without decoding');
    // The limit is configurable (and the header is read without decoding).
    const info = await probeImage(path.join(FIX, 'chelsea.png'));
    assert.deepEqual(info, { format: 'PNG', width: 180, height: 120 });
    await assert.rejects(decodeImage(path.join(FIX, 'chelsea.png'), { maxPixels: 1000 }), /too large/);
    assert.equal(MAX_IMAGE_PIXELS, 100_000_000);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('buffers decode like files; WebP decodes', async () => {
  const file = path.join(FIX, 'coffee.jpg');
  const a = await decodeImage(file);
  const b = await decodeImage(new Uint8Array(fs.readFileSync(file)));
  assert.deepEqual([b.width, b.height], [a.width, a.height]);
  assert.equal(maxAbsDiff(a.data, b.data).max, 0);
  // A lossless WebP made by sharp from the PNG decodes to the same pixels.
  const sharp = (await import('sharp')).default;
  const png = path.join(FIX, 'chelsea.png');
  const webp = await sharp(png).webp({ lossless: true }).toBuffer();
  const w = await decodeImage(new Uint8Array(webp), { name: 'chelsea.webp' });
  const p = await photo('chelsea.png');
  assert.equal(maxAbsDiff(w.data, p.data).max, 0);
});

test("resize of seeded noise equals PIL's Image.resize for every filter, shrinking and enlarging", async () => {
  const img = await decodeImage(path.join(FIX, manifest.resize.image));
  assert.deepEqual([img.width, img.height], manifest.resize.size);
  for (const c of manifest.resize.cases) {
    const [filter, size] = c.split('/') as [ResampleFilter, string];
    const [w, h] = size.split('x').map(Number) as [number, number];
    const out = resizeU8(img.data, img.width, img.height, 3, w, h, filter);
    const r = ref(`resize/${c}`);
    assert.deepEqual([h, w, 3], r.shape);
    const d = maxAbsDiff(out, r.data);
    assert.equal(d.max, 0, `${c}: max |diff| ${d.max} (${d.count} values differ)`);
  }
});

test('resize: output size rule, identity, and exact sums for a constant image', () => {
  assert.deepEqual(shorterSideSize(451, 300, 256), { width: 384, height: 256 });
  assert.deepEqual(shorterSideSize(300, 451, 256), { width: 256, height: 384 });
  assert.deepEqual(shorterSideSize(500, 500, 232), { width: 232, height: 232 });
  const src = new Uint8Array(7 * 5 * 3).fill(77);
  for (const f of ['bilinear', 'bicubic', 'lanczos', 'box', 'hamming'] as const) {
    for (const [w, h] of [[3, 2], [7, 5], [20, 13]] as const) {
      const out = resizeU8(src, 7, 5, 3, w, h, f);
      assert.equal(out.length, w * h * 3);
      assert.ok(out.every((v) => v === 77), `${f} ${w}x${h} keeps a constant image constant`);
    }
  }
  const same = resizeU8(src, 7, 5, 3, 7, 5, 'bilinear');
  assert.notEqual(same, src);
  assert.deepEqual(same, src);
});

test('HF preprocessor configs: defaults, microsoft/resnet-50 style, and refusals', () => {
  const d = hfPreprocessFromConfig({});
  assert.deepEqual(d, hfConvNextDefaults());
  assert.equal(d.shortestEdge, 384);
  assert.equal(d.resample, 'bicubic');
  assert.deepEqual(d.mean, [0.5, 0.5, 0.5]);
  const r50 = hfPreprocessFromConfig({ crop_pct: 0.875, do_normalize: true, do_resize: true, feature_extractor_type: 'ConvNextFeatureExtractor', image_mean: [0.485, 0.456, 0.406], image_std: [0.229, 0.224, 0.225], resample: 3, size: 224 });
  assert.equal(r50.shortestEdge, 224);
  assert.equal(Math.trunc(r50.shortestEdge / r50.cropPct), 256);
  assert.equal(hfPreprocessFromConfig({ size: { shortest_edge: 200 }, crop_pct: null }).cropPct, 224 / 256);
  for (const [cfg, re] of [
    [{ image_processor_type: 'ViTImageProcessor' }, /unsupported image processor "ViTImageProcessor"/],
    [{ size: { height: 224, width: 224 } }, /"size" must be/],
    [{ resample: 0 }, /NEAREST/],
    [{ resample: 9 }, /PIL filter code/],
    [{ image_mean: [0.5, 0.5] }, /image_mean/],
    [{ image_std: [0, 1, 1] }, /must not contain 0/],
    [[], /JSON object/],
  ] as const) {
    assert.throws(() => hfPreprocessFromConfig(cfg, 'cfg.json'), (e: unknown) => e instanceof FormatError && re.test(e.message) && e.message.startsWith('cfg.json: '));
  }
  // Small images are padded with zeros by the crop, not refused.
  const tiny: RgbImage = { width: 4, height: 3, data: new Uint8Array(36).fill(200) };
  const x = preprocessImage(tiny, torchvisionPreset({ resizeSize: 4, cropSize: 6 }));
  assert.deepEqual(x.shape, [3, 6, 6]);
});

test('folders expand to their images, sorted, recursively; hidden and non-image files are skipped', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-list-'));
  try {
    fs.mkdirSync(path.join(dir, 'b'));
    fs.mkdirSync(path.join(dir, '.hidden'));
    for (const f of ['z.png', 'a.JPG', 'readme.txt', 'b/c.webp', '.hidden/x.png', '.dot.png']) fs.writeFileSync(path.join(dir, f), 'x');
    assert.deepEqual(
      listImageFiles([dir]).map((p) => path.relative(dir, p)),
      ['a.JPG', path.join('b', 'c.webp'), 'z.png'],
    );
    assert.throws(() => listImageFiles([path.join(dir, 'nope')]), /file not found/);
    fs.mkdirSync(path.join(dir, 'empty'));
    assert.throws(() => listImageFiles([path.join(dir, 'empty')]), /has no images/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
