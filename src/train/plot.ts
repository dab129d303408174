/**
 * Training curves as a PNG: loss (train and validation) and accuracy side by side, drawn with
 * @napi-rs/canvas (a prebuilt Skia binding; no system libraries).
 */
import { createCanvas, type SKRSContext2D } from '@napi-rs/canvas';

export interface Series {
  label: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
}

interface Panel {
  title: string;
  yLabel: string;
  series: Series[];
  yRange?: [number, number];
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(6)));
  return out;
}

function drawPanel(g: SKRSContext2D, x0: number, y0: number, w: number, h: number, p: Panel): void {
  const pad = { l: 70, r: 16, t: 34, b: 44 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const all = p.series.flatMap((s) => s.points);
  const xs = all.map((q) => q[0]);
  const ys = all.map((q) => q[1]).filter(Number.isFinite);
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(1, ...xs);
  let [yMin, yMax] = p.yRange ?? [Math.min(...ys), Math.max(...ys)];
  if (!Number.isFinite(yMin) || !Number.isFinite(yMax)) [yMin, yMax] = [0, 1];
  if (yMax - yMin < 1e-9) [yMin, yMax] = [yMin - 0.5, yMax + 0.5];
  const margin = (yMax - yMin) * 0.05;
  if (!p.yRange) [yMin, yMax] = [yMin - margin, yMax + margin];
  const X = (v: number): number => x0 + pad.l + ((v - xMin) / (xMax - xMin)) * pw;
  const Y = (v: number): number => y0 + pad.t + ph - ((v - yMin) / (yMax - yMin)) * ph;

  g.fillStyle = '#222';
  g.font = 'bold 15px sans-serif';
  g.fillText(p.title, x0 + pad.l, y0 + 22);
  g.font = '12px sans-serif';
  g.strokeStyle = '#e3e3e3';
  g.lineWidth = 1;
  for (const t of niceTicks(yMin, yMax)) {
    g.beginPath();
    g.moveTo(X(xMin), Y(t));
    g.lineTo(X(xMax), Y(t));
    g.stroke();
    g.fillStyle = '#555';
    g.textAlign = 'right';
    g.fillText(String(t), x0 + pad.l - 6, Y(t) + 4);
    g.textAlign = 'left';
  }
  for (const t of niceTicks(xMin, xMax, 8).filter((v) => Number.isInteger(v))) {
    g.fillStyle = '#555';
    g.fillText(String(t), X(t) - 4, y0 + pad.t + ph + 18);
  }
  g.strokeStyle = '#888';
  g.strokeRect(x0 + pad.l, y0 + pad.t, pw, ph);
  g.fillStyle = '#333';
  g.fillText('epoch', x0 + pad.l + pw / 2 - 16, y0 + h - 8);
  g.save();
  g.translate(x0 + 12, y0 + pad.t + ph / 2 + 30);
  g.rotate(-Math.PI / 2);
  g.fillText(p.yLabel, 0, 0);
  g.restore();

  p.series.forEach((s, i) => {
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.setLineDash(s.dashed ? [6, 4] : []);
    g.beginPath();
    s.points.forEach(([a, b], j) => (j === 0 ? g.moveTo(X(a), Y(b)) : g.lineTo(X(a), Y(b))));
    g.stroke();
    g.setLineDash([]);
    for (const [a, b] of s.points) {
      g.fillStyle = s.color;
      g.beginPath();
      g.arc(X(a), Y(b), 2.5, 0, Math.PI * 2);
      g.fill();
    }
    const ly = y0 + pad.t + 14 + i * 16;
    g.fillStyle = s.color;
    g.fillRect(x0 + pad.l + pw - 150, ly - 8, 14, 3);
    g.fillStyle = '#333';
    g.fillText(s.label, x0 + pad.l + pw - 130, ly - 3);
  });
}

export interface CurvePoint {
  epoch: number;
  trainLoss: number;
  trainAcc: number;
  valLoss?: number | undefined;
  valAcc?: number | undefined;
}

/** The PNG bytes of a two-panel loss/accuracy chart. */
export function renderCurves(history: readonly CurvePoint[], title: string): Buffer {
  const W = 1100;
  const H = 440;
  const canvas = createCanvas(W, H);
  const g = canvas.getContext('2d');
  g.fillStyle = '#ffffff';
  g.fillRect(0, 0, W, H);
  g.fillStyle = '#111';
  g.font = 'bold 16px sans-serif';
  g.fillText(title, 16, 20);
  const pts = (f: (p: CurvePoint) => number | undefined): [number, number][] =>
    history.filter((p) => f(p) !== undefined && Number.isFinite(f(p)!)).map((p) => [p.epoch, f(p)!]);
  drawPanel(g, 0, 24, W / 2, H - 24, {
    title: 'Loss',
    yLabel: 'cross-entropy',
    series: [
      { label: 'train', color: '#1f77b4', points: pts((p) => p.trainLoss) },
      { label: 'validation', color: '#d62728', points: pts((p) => p.valLoss), dashed: true },
    ],
  });
  drawPanel(g, W / 2, 24, W / 2, H - 24, {
    title: 'Accuracy (%)',
    yLabel: 'top-1 accuracy',
    series: [
      { label: 'train', color: '#1f77b4', points: pts((p) => (p.trainAcc * 100)) },
      { label: 'validation', color: '#d62728', points: pts((p) => (p.valAcc === undefined ? undefined : p.valAcc * 100)), dashed: true },
    ],
  });
  return canvas.toBuffer('image/png');
}
