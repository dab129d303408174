/**
 * Shared command-line plumbing: the command description every subcommand exports, option parsing
 * on top of node:util parseArgs (strict) with its errors turned into one-line UsageErrors, value
 * parsers for the options the commands share, and help text rendering.
 */
import { parseArgs } from 'node:util';
import { UsageError, type ShortcutType } from '../index.js';

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Placeholder shown in help, e.g. "N" for `--depth N`. */
  value?: string;
  /** Default as shown in help (the command applies it). */
  default?: string;
  description: string;
}

export interface Command {
  name: string;
  /** One line for the top-level usage. */
  summary: string;
  /** Usage line(s) after "usage: ". */
  usage: string[];
  /** Extra paragraphs shown in the command's help, after the usage. */
  details?: string[];
  options: Record<string, OptionSpec>;
  positionals: { min: number; max: number };
  examples: string[];
  /** Returns the text for stdout (or a promise of it, for long-running commands); throws
   * ResnetError for anything the user got wrong. */
  run(args: ParsedArgs): string | Promise<string>;
}

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** The `--help` option every command accepts. */
export const HELP_OPTION: OptionSpec = { type: 'boolean', short: 'h', description: 'show this help and exit' };

/** True when argv asks for help (before any "--"), so `--help` wins over other mistakes. */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/** Parses argv for `cmd`; every parse problem is one UsageError line. */
export function parseCommandArgs(cmd: Command, argv: readonly string[]): ParsedArgs {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, o] of Object.entries(cmd.options)) {
    options[name] = o.short ? { type: o.type, short: o.short } : { type: o.type };
  }
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: true }) as typeof parsed;
  } catch (e) {
    throw new UsageError(parseArgsMessage(e, cmd));
  }
  const { positionals } = parsed;
  if (positionals.length < cmd.positionals.min) {
    throw new UsageError(`${cmd.name} needs an argument (usage: resnet ${cmd.usage[0]})`);
  }
  if (positionals.length > cmd.positionals.max) {
    const extra = positionals.slice(cmd.positionals.max).map((p) => JSON.stringify(p)).join(' ');
    throw new UsageError(`unexpected argument ${extra} (usage: resnet ${cmd.usage[0]})`);
  }
  return { values: parsed.values, positionals };
}

/** A one-line message for a parseArgs error (its own messages are long and mention "--"). */
function parseArgsMessage(e: unknown, cmd: Command): string {
  const err = e as { code?: string; message?: string };
  const msg = String(err.message ?? e);
  const quoted = /'([^']*)'/.exec(msg)?.[1];
  const known = Object.keys(cmd.options).map((n) => `--${n}`).join(', ');
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${quoted ?? ''} (${cmd.name} takes ${known})`.replace('  ', ' ');
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE': {
      // "Option '--input <value>' argument missing" or "Option '--tree' does not take an argument".
      const opt = quoted?.split(' ')[0] ?? '';
      // "... argument missing", or "... argument is ambiguous" when the next word starts with "-".
      if (/argument missing|ambiguous/.test(msg)) {
        const name = Object.entries(cmd.options).find(([n, o]) => `--${n}` === opt || (o.short !== undefined && `-${o.short}` === opt))?.[0];
        const spec = name === undefined ? undefined : cmd.options[name];
        const needs = `option ${opt} needs a value${spec?.value ? ` (${opt} ${spec.value})` : ''}`;
        // the next word starts with "-" (a negative number, say): parseArgs takes it for an option
        return /ambiguous/.test(msg) && name !== undefined ? `${needs}; for a value that starts with "-", write --${name}=VALUE` : needs;
      }
      if (/does not take an argument/.test(msg)) return `option ${opt} does not take a value`;
      return oneLine(msg);
    }
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${quoted !== undefined ? JSON.stringify(quoted) : ''} (usage: resnet ${cmd.usage[0]})`;
    default:
      return oneLine(msg);
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

// ---------------------------------------------------------------------------------------------
// Value parsers
// ---------------------------------------------------------------------------------------------

/** A string option's value, or undefined when absent. */
export function str(args: ParsedArgs, name: string): string | undefined {
  const v = args.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args.values[name] === true;
}

/** A required string option. */
export function required(args: ParsedArgs, cmd: string, name: string, placeholder: string): string {
  const v = str(args, name);
  if (v === undefined) throw new UsageError(`${cmd} needs --${name} ${placeholder}`);
  if (v === '') throw new UsageError(`--${name} must not be empty`);
  return v;
}

/** An integer option (>= min), or undefined when absent. */
export function intOption(args: ParsedArgs, name: string, min = 1): number | undefined {
  const v = str(args, name);
  if (v === undefined) return undefined;
  const t = v.trim();
  const n = /^\d+$/.test(t) ? Number(t) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    const what = min === 1 ? 'a positive integer' : `an integer >= ${min}`;
    throw new UsageError(`--${name} must be ${what}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** `--input C,H,W`: three positive integers ("3,224,224"; brackets, parentheses and spaces are allowed). */
export function parseInputSize(v: string, name = 'input'): [number, number, number] {
  const body = v.trim().replace(/^[[(]\s*(.*?)\s*[\])]$/, '$1');
  const parts = body.split(',').map((p) => p.trim());
  const bad = (why: string): never => {
    throw new UsageError(`--${name} must be C,H,W: three positive integers such as 3,224,224; got ${JSON.stringify(v)} (${why})`);
  };
  if (parts.length !== 3) bad(`${parts.length} value${parts.length === 1 ? '' : 's'}`);
  const dims = parts.map((p) => {
    if (!/^\d+$/.test(p)) bad(`${JSON.stringify(p)} is not an integer`);
    const n = Number(p);
    if (!Number.isSafeInteger(n) || n < 1) bad(`${p} is not positive`);
    return n;
  });
  return dims as [number, number, number];
}

/** `--shortcut A|B|C` (case-insensitive), or undefined when absent. */
export function shortcutOption(args: ParsedArgs): ShortcutType | undefined {
  const v = str(args, 'shortcut');
  if (v === undefined) return undefined;
  const u = v.trim().toUpperCase();
  if (u !== 'A' && u !== 'B' && u !== 'C') throw new UsageError(`--shortcut must be A, B or C, got ${JSON.stringify(v)}`);
  return u;
}

// ---------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------

/** The help text of one command: usage, description, options with defaults, examples. */
export function commandHelp(cmd: Command): string {
  const lines = cmd.usage.map((u, i) => `${i === 0 ? 'usage: ' : '       '}resnet ${u}`);
  lines.push('', cmd.summary);
  for (const d of cmd.details ?? []) lines.push('', d);
  const rows = Object.entries(cmd.options).map(([name, o]) => {
    const left = `${o.short ? `-${o.short}, ` : '    '}--${name}${o.value ? ` ${o.value}` : ''}`;
    const right = `${o.description}${o.default !== undefined ? ` (default: ${o.default})` : ''}`;
    return [left, right] as const;
  });
  const w = Math.max(...rows.map(([l]) => l.length));
  lines.push('', 'options:', ...rows.map(([l, r]) => `  ${l.padEnd(w)}  ${r}`));
  lines.push('', cmd.examples.length > 1 ? 'examples:' : 'example:', ...cmd.examples.map((e) => `  ${e}`));
  return lines.join('\n') + '\n';
}

/** Left-aligned text columns, right-aligned where `right[i]`; no trailing spaces. */
export function table(rows: readonly (readonly string[])[], right: readonly boolean[] = []): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) => r.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd())
    .join('\n') + '\n';
}
