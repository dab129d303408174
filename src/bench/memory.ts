/**
 * Resident memory of this process, for the peak-memory measurement.
 *
 * The peak is the kernel's high-water mark of resident memory of this process's address space:
 * VmHWM in /proc/self/status on Linux. getrusage's maxrss (process.resourceUsage().maxRSS) is NOT
 * used on Linux: it is preserved across execve, so a child spawned by a big parent (fork, then
 * exec) reports at least the parent's RSS at the time of the fork.
 */
import * as fs from 'node:fs';

function statusKB(field: 'VmHWM' | 'VmRSS'): number | null {
  try {
    const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Peak resident memory of this process in MiB (VmHWM; getrusage maxrss where /proc is missing). */
export function peakRssMB(): number {
  return (statusKB('VmHWM') ?? process.resourceUsage().maxRSS) / 1024;
}

/** Current resident memory in MiB. */
export function currentRssMB(): number {
  return process.memoryUsage().rss / 2 ** 20;
}
