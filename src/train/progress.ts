/**
 * A one-line progress bar for stderr: redrawn in place on a terminal, printed as a few plain
 * lines otherwise (CI logs should not fill with carriage returns).
 */
export class ProgressBar {
  private readonly tty: boolean;
  private start = performance.now();
  private lastDraw = 0;
  private lastLogged = -1;

  constructor(private readonly label: string, private readonly total: number, private readonly stream: NodeJS.WriteStream = process.stderr) {
    this.tty = Boolean(stream.isTTY);
  }

  /** Updates to `done` of `total` with extra fields ("loss 0.41 acc 86.3%"). */
  update(done: number, fields: string, force = false): void {
    const now = performance.now();
    if (!force && this.tty && now - this.lastDraw < 100 && done < this.total) return;
    this.lastDraw = now;
    const elapsed = (now - this.start) / 1000;
    const rate = done / Math.max(elapsed, 1e-9);
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    const width = 24;
    const filled = Math.round((done / this.total) * width);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
    const line = `${this.label} ${bar} ${done}/${this.total} ${fields} ETA ${fmtTime(eta)}`;
    if (this.tty) {
      this.stream.write(`\r\x1b[2K${line}`);
    } else {
      // at most ~4 lines per bar in logs
      const bucket = Math.floor((done / this.total) * 4);
      if (bucket !== this.lastLogged || done === this.total) {
        this.lastLogged = bucket;
        this.stream.write(`${line}\n`);
      }
    }
  }

  /** Ends the bar with a final line. */
  finish(fields: string): void {
    const elapsed = (performance.now() - this.start) / 1000;
    const line = `${this.label} done in ${fmtTime(elapsed)} ${fields}`;
    this.stream.write(this.tty ? `\r\x1b[2K${line}\n` : `${line}\n`);
  }
}

export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  const sec = Math.floor(s % 60);
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}
