/** Classification metrics: top-k accuracy counts, confusion matrix, per-class accuracy. */

/** Number of rows of logits [n, c] whose target is among the k largest logits. */
export function topkCorrect(logits: Float32Array, targets: ArrayLike<number>, n: number, c: number, k: number): number {
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const t = targets[i]!;
    const tv = logits[i * c + t]!;
    // rank of the target = number of logits strictly greater (ties count in the target's favour)
    let greater = 0;
    for (let j = 0; j < c; j++) if (logits[i * c + j]! > tv) greater++;
    if (greater < k) correct++;
  }
  return correct;
}

export function argmaxRows(logits: Float32Array, n: number, c: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < c; j++) if (logits[i * c + j]! > logits[i * c + best]!) best = j;
    out[i] = best;
  }
  return out;
}

export class ConfusionMatrix {
  readonly counts: Int32Array;

  constructor(readonly numClasses: number) {
    this.counts = new Int32Array(numClasses * numClasses);
  }

  /** Adds predictions (row = true class, column = predicted class). */
  add(targets: ArrayLike<number>, predictions: ArrayLike<number>): void {
    for (let i = 0; i < targets.length; i++) this.counts[targets[i]! * this.numClasses + predictions[i]!]!++;
  }

  total(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  accuracy(): number {
    let diag = 0;
    for (let i = 0; i < this.numClasses; i++) diag += this.counts[i * this.numClasses + i]!;
    return this.total() === 0 ? 0 : diag / this.total();
  }

  perClassAccuracy(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.numClasses; i++) {
      let row = 0;
      for (let j = 0; j < this.numClasses; j++) row += this.counts[i * this.numClasses + j]!;
      out.push(row === 0 ? NaN : this.counts[i * this.numClasses + i]! / row);
    }
    return out;
  }

  /** An aligned text table with class names. */
  format(classes: string[]): string {
    const names = classes.map((c, i) => (c.length > 12 ? `${c.slice(0, 11)}…` : c) || String(i));
    const w = Math.max(6, ...Array.from(this.counts, (v) => String(v).length + 1));
    const head = `${'true \\ pred'.padEnd(14)}${names.map((_, j) => String(j).padStart(w)).join('')}`;
    const rows = names.map((n, i) => `${`${i} ${n}`.padEnd(14).slice(0, 14)}${Array.from(this.counts.subarray(i * this.numClasses, (i + 1) * this.numClasses), (v) => String(v).padStart(w)).join('')}`);
    return [head, ...rows].join('\n');
  }
}
