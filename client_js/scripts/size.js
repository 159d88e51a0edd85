#!/usr/bin/env node
// `npm run size`: what each element costs a page, bundled with what it imports (the client,
// the session), minified (esbuild) and gzipped (level 9). <credit-balance> is the baseline:
// the ratio column is each bundle over it, and "added" is what the element costs a page that
// already has <credit-balance> (everything they share is counted once).
//
//   node scripts/size.js [--json]

import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../src/', import.meta.url));

export const ENTRIES = [
  ['<credit-balance>', 'element.js'],
  ['<credit-purchase>', 'purchase.js'],
  ['<credit-ledger>', 'ledger.js'],
  ['<credit-usage>', 'usage.js'],
  ['<credit-gate> (with its purchase)', 'gate.js'],
  ['all five elements', 'elements.js'],
  ['core (BalanceClient, CreditSession, feeds)', 'index.js'],
  ['React hooks and components (React not counted)', 'react.js'],
];

/** Minified and gzipped bytes of `files` bundled together as one page's modules. */
export async function measure(files) {
  const contents = files.map((f) => `export * from ${JSON.stringify(SRC + f)};`).join('\n');
  const out = await build({
    stdin: { contents, resolveDir: SRC, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2022',
    write: false,
    // React is the app's; react.js loads the elements lazily, a separate download counted
    // in their own rows.
    external: ['react', './elements.js'],
    logLevel: 'silent',
  });
  const code = out.outputFiles[0].contents;
  return { min: code.length, gzip: gzipSync(code, { level: 9 }).length };
}

async function main() {
  const json = process.argv.includes('--json');
  const base = await measure(['element.js']);
  const rows = [];
  for (const [name, file] of ENTRIES) {
    const alone = await measure([file]);
    const withBase = file === 'element.js' ? base : await measure(['element.js', file]);
    rows.push({ name, file, min: alone.min, gzip: alone.gzip, ratio: alone.gzip / base.gzip, added: withBase.gzip - base.gzip });
  }
  if (json) {
    console.log(JSON.stringify(rows, null, 2));
    return;
  }
  const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
  console.log('| entry | file | min | min+gzip | × <credit-balance> | added to a page with <credit-balance> |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.name} | src/${r.file} | ${kb(r.min)} | ${kb(r.gzip)} | ${r.ratio.toFixed(2)} | ${r.file === 'element.js' ? '(baseline)' : kb(r.added)} |`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
