/** Number formatting that reproduces Python's, so tables match torchsummary to the character. */

/** Python's "{:,}" for an integer. */
export function commas(n: number): string {
  const s = Math.abs(Math.trunc(n)).toString();
  const grouped = s.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return n < 0 ? `-${grouped}` : grouped;
}

/**
 * Python's "%.{digits}f": correctly rounded from the exact binary value, ties to even.
 * (JavaScript's toFixed rounds exact ties up: 0.125 → "0.13" where Python prints "0.12"; the
 * sizes torchsummary prints are multiples of 2^-18 MB, so exact ties do occur.)
 */
export function pyFixed(x: number, digits = 2): string {
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : x < 0 ? '-inf' : 'nan';
  const neg = x < 0 || Object.is(x, -0);
  // toFixed(100) is the exact decimal expansion of any double below 1e21 with at most 100
  // fractional digits, which covers every value these tables print.
  const exact = Math.abs(x).toFixed(100);
  const [intPart, frac] = exact.split('.') as [string, string];
  const kept = frac.slice(0, digits);
  const rest = frac.slice(digits);
  let roundUp: boolean;
  if (rest[0]! > '5') roundUp = true;
  else if (rest[0]! < '5') roundUp = false;
  else if (/[1-9]/.test(rest.slice(1))) roundUp = true;
  else roundUp = Number((kept || intPart).slice(-1)) % 2 === 1; // exact tie: to even
  let digitsStr = intPart + kept;
  if (roundUp) digitsStr = (BigInt(digitsStr) + 1n).toString().padStart(digitsStr.length, '0');
  const i = digitsStr.length - digits;
  const out = digits > 0 ? `${digitsStr.slice(0, i) || '0'}.${digitsStr.slice(i)}` : digitsStr;
  return neg && /[1-9]/.test(out) ? `-${out}` : neg ? `-${out}` : out;
}

/** Python's str() of a list of ints: "[-1, 64, 112, 112]". */
export function pyList(xs: readonly number[]): string {
  return `[${xs.join(', ')}]`;
}
