/** Shared by everything that starts worker threads (the data loader, the inference worker). */

/**
 * The parent's Node options minus those that only make sense for a main script (-e/-p code and
 * --input-type, which a worker started from a file rejects).
 */
export function workerExecArgv(): string[] {
  const out: string[] = [];
  const a = process.execArgv;
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    if (v === '-e' || v === '--eval' || v === '-p' || v === '--print' || v === '--input-type') {
      i++; // and its value
      continue;
    }
    if (v.startsWith('--input-type=') || v.startsWith('--eval=') || v.startsWith('--print=')) continue;
    out.push(v);
  }
  return out;
}
