#!/usr/bin/env node
/**
 * The `resnet` command line.
 *
 * Exit codes: 0 success; 2 usage errors (bad command, option or argument: UsageError); 1 other
 * user-caused errors (unreadable or malformed files, shape mismatches: any other ResnetError);
 * 70 internal errors (anything else is a bug, printed with its stack).
 *
 * Output goes through process.stdout.write and the exit code through process.exitCode, so that a
 * large table is fully flushed (also when piped) before the process ends.
 */
import * as fs from 'node:fs';
import { ResnetError, UsageError } from '../index.js';
import { HELP_OPTION, commandHelp, parseCommandArgs, wantsHelp, type Command } from './args.js';
import { listCommand } from './list.js';
import { runCommand } from './run.js';
import { summaryCommand } from './summary.js';
import { benchCommand } from './bench.js';
import { evalCommand, trainCommand } from './train.js';
import { classifyCommand } from './classify.js';
import { embedCommand } from './embed.js';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERNAL = 70;

const helpCommand: Command = {
  name: 'help',
  summary: 'Show the usage of resnet, or of one command.',
  usage: ['help [command]'],
  options: { help: HELP_OPTION },
  positionals: { min: 0, max: 1 },
  examples: ['resnet help summary'],
  run(args) {
    const name = args.positionals[0];
    return name === undefined ? mainHelp() : commandHelp(findCommand(name));
  },
};

const COMMANDS: Command[] = [listCommand, summaryCommand, runCommand, trainCommand, evalCommand, classifyCommand, embedCommand, benchCommand, helpCommand];

function findCommand(name: string): Command {
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) throw new UsageError(`unknown command ${JSON.stringify(name)} (commands: ${COMMANDS.map((c) => c.name).join(', ')})`);
  return cmd;
}

export function version(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
  return pkg.version ?? 'unknown';
}

function mainHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'usage: resnet <command> [options]',
    '',
    'ResNet models in TypeScript: build and summarise every ResNet, train and evaluate, classify images with pretrained weights, benchmark.',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'options:',
    '  -h, --help     show this help (or `resnet <command> --help` for a command)',
    '  -V, --version  print the version',
    '',
    "Run 'resnet <command> --help' for a command's options and an example.",
    '',
  ].join('\n');
}

/** Runs the CLI on `argv` (without node and the script); returns stdout text and the exit code. */
export async function main(argv: readonly string[]): Promise<{ out: string; err: string; code: number }> {
  let cmdName: string | undefined;
  try {
    const first = argv[0];
    if (first === undefined || first === '--help' || first === '-h') return { out: mainHelp(), err: '', code: EXIT_OK };
    if (first === '--version' || first === '-V') return { out: `${version()}\n`, err: '', code: EXIT_OK };
    if (first.startsWith('-')) {
      throw new UsageError(`unknown option ${JSON.stringify(first)} (expected a command: ${COMMANDS.map((c) => c.name).join(', ')})`);
    }
    const cmd = findCommand(first);
    cmdName = cmd.name;
    const rest = argv.slice(1);
    if (wantsHelp(rest)) return { out: commandHelp(cmd), err: '', code: EXIT_OK };
    return { out: await cmd.run(parseCommandArgs(cmd, rest)), err: '', code: EXIT_OK };
  } catch (e) {
    if (e instanceof ResnetError) {
      const msg = oneLine(e.message);
      if (e instanceof UsageError) {
        const hint = cmdName && cmdName !== 'help' ? `run 'resnet ${cmdName} --help' for usage` : "run 'resnet --help' for usage";
        return { out: '', err: `resnet: error: ${msg}\n${hint}\n`, code: EXIT_USAGE };
      }
      return { out: '', err: `resnet: error: ${msg}\n`, code: EXIT_ERROR };
    }
    const err = e instanceof Error ? e : new Error(String(e));
    return { out: '', err: `resnet: internal error: ${oneLine(err.message)}\n${err.stack ?? ''}\n`, code: EXIT_INTERNAL };
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

// Output closed early (`resnet list | head`): stop quietly instead of crashing on EPIPE.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE') throw e;
});

const { out, err, code } = await main(process.argv.slice(2));
if (out) process.stdout.write(out);
if (err) process.stderr.write(err);
process.exitCode = code;
