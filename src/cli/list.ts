/** `resnet list`: every registered architecture with its size and cost at its default input. */
import { createModel, listModels, modelStats, withMetaTensors } from '../index.js';
import { commas, pyFixed } from '../summary/format.js';
import { HELP_OPTION, flag, table, type Command } from './args.js';

export interface ListEntry {
  name: string;
  family: string;
  block: string;
  layers: number[];
  params: number;
  /** Multiply-adds of one image at the default input (torchinfo's count). */
  multAdds: number;
  defaultInput: number[];
  description: string;
}

/** Stats for every architecture, from meta models (shapes only: no weights are allocated). */
export function listEntries(): ListEntry[] {
  return listModels().map((spec) => {
    const stats = withMetaTensors(() => modelStats(createModel(spec.name), spec.defaultInput, 1));
    return {
      name: spec.name,
      family: spec.family,
      block: spec.block,
      layers: [...spec.layers],
      params: stats.params,
      multAdds: stats.macs,
      defaultInput: [...spec.defaultInput],
      description: spec.description,
    };
  });
}

export const listCommand: Command = {
  name: 'list',
  summary: 'List the available architectures with parameters and mult-adds at their default input.',
  usage: ['list [--json]'],
  details: ['Mult-adds count one image (batch 1) at the default input, as torchinfo counts them.'],
  options: {
    json: { type: 'boolean', description: 'print a JSON array of objects instead of a table' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet list', 'resnet list --json'],
  run(args) {
    const entries = listEntries();
    if (flag(args, 'json')) return JSON.stringify(entries, null, 2) + '\n';
    const rows = [
      ['architecture', 'family', 'params', 'mult-adds (G)', 'input'],
      ...entries.map((e) => [e.name, e.family, commas(e.params), pyFixed(e.multAdds / 1e9), e.defaultInput.join('x')]),
    ];
    return table(rows, [false, false, true, true, false]);
  },
};
