import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Finds gradfleet's package.json by walking up from this file. The walk is needed because
 * this module runs both from the sources (tests) and from the compiled `dist/` folder.
 */
function readPackageVersion(): string {
  let folder = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(folder, 'package.json');
    if (existsSync(candidate)) {
      const manifest = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'gradfleet' && manifest.version) return manifest.version;
    }
    const parent = dirname(folder);
    if (parent === folder) return 'unknown';
    folder = parent;
  }
}

/** gradfleet's own version, as package.json gives it. */
export const GRADFLEET_VERSION = readPackageVersion();
