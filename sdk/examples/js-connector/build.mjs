// Builds json-gateway.wasm from connector.js with componentize-js, against
// the contract in sdk/wit (world `connector`). Run `npm ci` first, then
// `npm run build` (or `node build.mjs`).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = here('json-gateway.wasm');

const { component } = await componentize({
  sourcePath: here('connector.js'),
  // The whole WIT folder (it holds several worlds); the world picks one.
  witPath: here('../../wit'),
  worldName: 'connector',
  // componentize-js's default features. The component then imports
  // wasi:http (for fetch()), which the broker links with every request
  // denied: a connector builds requests and the broker performs them.
  // console.* goes to the broker's debug log; crypto.subtle works.
});
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
