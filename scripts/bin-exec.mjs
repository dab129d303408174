// Makes the package's bin scripts executable after tsc has written them (tsc creates files 0644).
// `npx resnet` runs dist/src/cli/main.js directly, so without the x bit it fails with
// "resnet: Permission denied" unless npm happened to link (and chmod) it first.
import { chmodSync, readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
for (const file of Object.values(pkg.bin ?? {})) chmodSync(new URL(`../${file}`, import.meta.url), 0o755);
