/**
 * The Chromium every browser test drives, through playwright-core (which downloads no browser of its own).
 *
 * Which one: `CHROMIUM_PATH` when set, else a system Chromium at the usual places, else the one the
 * `@sparticuz/chromium` devDependency ships inside its npm tarball, so `npm ci` alone makes the browser tests
 * runnable on a fresh machine. `SIROCCO_BROWSER=system` or `=npm` forces one of the two.
 *
 * The npm one is brotli-compressed in the package: it is unpacked once per package version into the temp folder,
 * with the NSS/NSPR/expat libraries the package ships beside it, because a bare Debian has no libnss3. Each
 * process unpacks into its own staging folder and renames it into place, so two test files starting at once
 * never run a half-written binary.
 */
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createBrotliDecompress } from 'node:zlib';
import { type Browser, chromium } from 'playwright-core';
import { extract } from 'tar';
import { reportFigure } from './stack-fixture.ts';

/** Where distributions and Google put a Chromium, in the order tried. */
const SYSTEM_CHROMIUMS = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'];

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export type ChromiumSource = 'CHROMIUM_PATH' | 'system' | '@sparticuz/chromium';

export interface ChromiumFound {
  source: ChromiumSource;
  executablePath: string;
  /** Extra environment the binary needs (the npm one's own shared libraries and fonts). */
  env: Record<string, string>;
}

/** Starts headless Chromium for a test file; the caller closes it. */
export async function launchBrowser(): Promise<Browser> {
  const found = await findChromium();
  const browser = await chromium.launch({
    executablePath: found.executablePath,
    args: CHROMIUM_ARGS,
    // A language as a user's browser reports it: under LANG=C or C.UTF-8 (CI machines) Chromium
    // reports "en-US@posix", which Intl rejects. (--lang does not reach navigator.language headless.)
    env: { ...process.env, LANG: 'en_US', ...found.env },
  });
  reportFigure('browser', `Chromium ${browser.version()} from ${found.source} (${found.executablePath})`);
  return browser;
}

export async function findChromium(): Promise<ChromiumFound> {
  const choice = process.env.SIROCCO_BROWSER;
  if (choice !== undefined && choice !== 'system' && choice !== 'npm') {
    throw new Error(`SIROCCO_BROWSER must be "system" or "npm", not "${choice}".`);
  }
  if (choice !== 'npm') {
    const system = findSystemChromium();
    if (system) return system;
    if (choice === 'system') {
      throw new Error(`SIROCCO_BROWSER=system, but no Chromium at CHROMIUM_PATH or ${SYSTEM_CHROMIUMS.join(', ')}.`);
    }
  }
  return unpackNpmChromium();
}

function findSystemChromium(): ChromiumFound | undefined {
  const configured = process.env.CHROMIUM_PATH;
  if (configured) {
    if (!existsSync(configured)) throw new Error(`CHROMIUM_PATH=${configured} does not exist.`);
    return { source: 'CHROMIUM_PATH', executablePath: configured, env: {} };
  }
  const path = SYSTEM_CHROMIUMS.find((candidate) => existsSync(candidate));
  return path ? { source: 'system', executablePath: path, env: {} } : undefined;
}

async function unpackNpmChromium(): Promise<ChromiumFound> {
  // The package's own executablePath() unpacks into the shared temp folder without a guard against a second
  // process doing the same, so its payload (bin/) is unpacked here instead.
  const packageRoot = join(dirname(fileURLToPath(import.meta.resolve('@sparticuz/chromium'))), '../..');
  const { version } = JSON.parse(await readFile(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  const target = join(tmpdir(), `sirocco-chromium-${version}`);
  if (!existsSync(join(target, 'chromium'))) {
    const staging = `${target}.${process.pid}`;
    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { recursive: true });
    const bin = join(packageRoot, 'bin');
    await Promise.all([
      pipeline(
        createReadStream(join(bin, 'chromium.br')),
        createBrotliDecompress(),
        createWriteStream(join(staging, 'chromium'), { mode: 0o755 }),
      ),
      extract({ file: join(bin, 'al2023.tar.br'), cwd: staging }),
      extract({ file: join(bin, 'swiftshader.tar.br'), cwd: staging }),
      extract({ file: join(bin, 'fonts.tar.br'), cwd: staging }),
    ]);
    // The package's fonts.conf names Lambda's folders; this one adds its fonts to the system's, when there are any.
    await writeFile(
      join(staging, 'fonts.conf'),
      `<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>\n  <dir>${join(target, 'fonts')}</dir>\n  <cachedir>${join(target, 'fonts-cache')}</cachedir>\n</fontconfig>\n`,
    );
    try {
      await rename(staging, target);
    } catch (error) {
      // Another process renamed its copy into place first: use that one.
      await rm(staging, { recursive: true, force: true });
      if (!existsSync(join(target, 'chromium'))) throw error;
    }
  }
  return {
    source: '@sparticuz/chromium',
    executablePath: join(target, 'chromium'),
    env: {
      LD_LIBRARY_PATH: [join(target, 'lib'), process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
      FONTCONFIG_FILE: join(target, 'fonts.conf'),
    },
  };
}
