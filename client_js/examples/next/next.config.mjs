import { fileURLToPath } from 'node:url';

/** @type {import('next').NextConfig} */
export default {
  // balance-client is installed from this checkout (file:../..): a symlink out of this
  // folder, so the build's root is the client_js folder that holds both.
  turbopack: { root: fileURLToPath(new URL('../..', import.meta.url)) },
  outputFileTracingRoot: fileURLToPath(new URL('../..', import.meta.url)),
};
