import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';

/** Readers for the files under deploy/, shared by the deploy tests. */

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEPLOY = join(ROOT, 'deploy');

export const VERSION: string = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version;
/** The image name every deploy file must use: the package name and version. */
export const IMAGE = `gradfleet:${VERSION}`;

export function readDeploy(path: string): string {
  return readFileSync(join(DEPLOY, path), 'utf8');
}

export function readYaml(path: string): any {
  // merge: docker-compose.yml shares settings between services with YAML merge keys (<<).
  return parse(readDeploy(path), { merge: true });
}

/** Parses a multi-document YAML text, such as the output of kubectl kustomize. */
export function parseDocuments(text: string): any[] {
  return parseAllDocuments(text)
    .map((document) => document.toJS())
    .filter((document) => document !== null);
}

/** A Kubernetes container with the command-line arguments and the environment it gets. */
export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  ports?: { name: string; containerPort: number }[];
  volumeMounts?: { name: string; mountPath: string }[];
}

/** Returns the manifest of `kind` named `name` among `documents`, failing with the names present. */
export function manifest(documents: any[], kind: string, name: string): any {
  const found = documents.find((document) => document.kind === kind && document.metadata?.name === name);
  if (!found) {
    const present = documents.map((document) => `${document.kind}/${document.metadata?.name}`).join(', ');
    throw new Error(`no ${kind} named ${name} in the manifests; found ${present}`);
  }
  return found;
}

/** The Dockerfile split into instructions, with continuation lines joined and comments dropped. */
export function dockerInstructions(text: string): { keyword: string; value: string; stage: number }[] {
  const instructions: { keyword: string; value: string; stage: number }[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && pending === '')) continue;
    pending += `${pending ? ' ' : ''}${line.replace(/\\$/, '').trim()}`;
    if (line.endsWith('\\')) continue;
    const [keyword, ...rest] = pending.split(/\s+/);
    if (keyword.toUpperCase() === 'FROM') stage += 1;
    instructions.push({ keyword: keyword.toUpperCase(), value: rest.join(' '), stage });
    pending = '';
  }
  return instructions;
}

/**
 * Returns the flag names (without the dashes) in a command line given as words, such as
 * ["coordinator", "--resume", "--port=7070"], stopping at nothing: values never start with --.
 */
export function flagsOf(words: string[]): string[] {
  return words.filter((word) => word.startsWith('--')).map((word) => word.slice(2).split('=')[0]);
}

/** Returns the option name of a GRADFLEET_* environment variable: GRADFLEET_CHECKPOINT_DIR is checkpoint-dir. */
export function optionOfVariable(name: string): string {
  return name.slice('GRADFLEET_'.length).toLowerCase().replace(/_/g, '-');
}
