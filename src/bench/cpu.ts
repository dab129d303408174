/**
 * How much CPU other processes used while the benchmark ran (Linux): the machine's busy time from
 * /proc/stat minus this process's own time and its finished children's (utime, stime, cutime,
 * cstime in /proc/self/stat), divided by the wall time. A value of 0.5 means other processes took
 * half a core on average, so the timings of that phase are pessimistic. The load average cannot
 * tell this: it counts the benchmark's own threads too.
 */
import * as fs from 'node:fs';

/** Clock ticks per second of /proc/stat and /proc/[pid]/stat (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

export interface CpuSample {
  wallMs: number;
  busyTicks: number;
  selfTicks: number;
}

export function cpuSample(): CpuSample | null {
  try {
    const cpu = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal ...
    const busy = cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]! + (cpu[7] ?? 0);
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    // after "pid (comm) ": state is f[0]; utime, stime, cutime, cstime are fields 14..17 of the line.
    const self = f[11]! + f[12]! + f[13]! + f[14]!;
    if (![busy, self].every(Number.isFinite)) return null;
    return { wallMs: performance.now(), busyTicks: busy, selfTicks: self };
  } catch {
    return null;
  }
}

/** Average number of cores other processes kept busy between two samples (null off Linux). */
export function otherCores(a: CpuSample | null, b: CpuSample | null): number | null {
  if (a === null || b === null || b.wallMs <= a.wallMs) return null;
  const others = b.busyTicks - a.busyTicks - (b.selfTicks - a.selfTicks);
  return Math.max(0, others / USER_HZ / ((b.wallMs - a.wallMs) / 1000));
}
