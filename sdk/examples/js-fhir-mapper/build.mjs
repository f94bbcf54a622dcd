// Builds js-practitioner.wasm from mapper.js with componentize-js, against
// the contract in sdk/wit (world `fhir-mapper`). Run `npm ci` first, then
// `npm run build` (or `node build.mjs`).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = here('js-practitioner.wasm');

const { component } = await componentize({
  sourcePath: here('mapper.js'),
  // The whole WIT folder (it holds several worlds); the world picks one.
  witPath: here('../../wit'),
  worldName: 'fhir-mapper',
  // componentize-js's default features. The component then imports
  // wasi:http (for fetch()), which the broker links with every request
  // denied: a plugin makes no requests of its own. console.* goes to the
  // broker's debug log.
});
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
