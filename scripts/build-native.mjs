#!/usr/bin/env node
// Builds the native expert kernel (sidecar/engine/native, binding.gyp) at install time
// with node-gyp against this Node's own headers. It needs python3, make and a C++ compiler; where
// they are missing the build is skipped with a warning and the sidecar runs its experts in the
// WebAssembly kernel instead (same results, slower). It is x86-only (AVX-512 VNNI or AVX2).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

if (process.env.SIROCCO_NATIVE_KERNEL === 'off') {
  console.log('sirocco: SIROCCO_NATIVE_KERNEL=off, native expert kernel not built');
  process.exit(0);
}
if (process.arch !== 'x64') {
  console.log(`sirocco: the native expert kernel is for x86-64 (this is ${process.arch}); experts will run in the WebAssembly kernel`);
  process.exit(0);
}
// npm names its bundled node-gyp in the scripts it runs; elsewhere, one on PATH.
const gyp = process.env.npm_config_node_gyp;
const [command, args] = gyp && existsSync(gyp) ? [process.execPath, [gyp, 'rebuild']] : ['node-gyp', ['rebuild']];
const result = spawnSync(command, args, { stdio: 'inherit' });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `node-gyp exited with ${result.status ?? result.signal}`;
  console.warn(`sirocco: the native expert kernel was not built (${why}); experts will run in the WebAssembly kernel`);
}
