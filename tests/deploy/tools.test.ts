import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { type Container, DEPLOY, IMAGE, manifest, parseDocuments } from './files.js';

/**
 * Runs the tools that read the deploy files on them: docker-compose, kubectl and promtool.
 * None needs a Docker engine, a cluster or a server for this. .ci/run installs all three;
 * on a machine without them these tests fail with the command that installs them.
 */

const INSTALL_HINTS: Record<string, string> = {
  'docker-compose': 'apt-get install docker-compose',
  kubectl: 'apt-get install kubernetes-client',
  promtool: 'apt-get install prometheus',
};

/** Runs a tool and returns its output, failing with an install hint when the tool is missing. */
function run(tool: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const result = spawnSync(tool, args, { ...options, encoding: 'utf8', timeout: 60_000 });
  if ((result.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new Error(`${tool} is not installed; the deploy checks need it: ${INSTALL_HINTS[tool]} (as .ci/run does)`);
  }
  if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} exited with ${result.status}:\n${result.stderr}`);
  return result.stdout;
}

describe('docker-compose config', () => {
  it('accepts docker-compose.yml', () => {
    // compose reads the env file while it parses, and deploy/secrets is empty in a clone,
    // so the check runs on a copy with a stand-in token.
    const folder = mkdtempSync(join(tmpdir(), 'gradfleet-compose-'));
    cpSync(join(DEPLOY, 'docker-compose.yml'), join(folder, 'deploy', 'docker-compose.yml'));
    mkdirSync(join(folder, 'deploy', 'secrets'));
    writeFileSync(join(folder, 'deploy', 'secrets', 'gradfleet.env'), 'GRADFLEET_TOKEN=stand-in\n');

    const output = run('docker-compose', ['-f', 'deploy/docker-compose.yml', 'config'], { cwd: folder, env: { ...process.env, WORKERS: '4' } });
    const config = parse(output);

    expect(Object.keys(config.services).sort()).toEqual(['coordinator', 'grafana', 'prometheus', 'worker']);
    expect(config.services.coordinator.image).toBe(IMAGE);
    expect(config.services.worker.image).toBe(IMAGE);
    expect(config.services.coordinator.command).toContain('--workers=4');
    expect(config.services.coordinator.command).toContain('--resume');
    expect(config.services.worker.environment.GRADFLEET_TOKEN).toBe('stand-in');
    expect(config.services.coordinator.build.dockerfile).toBe('deploy/Dockerfile');
  });
});

describe('promtool check config', () => {
  it('accepts compose/prometheus.yml', () => {
    // The file names the rule file by its path inside the Prometheus container.
    const folder = mkdtempSync(join(tmpdir(), 'gradfleet-prometheus-'));
    const text = readFileSync(join(DEPLOY, 'compose', 'prometheus.yml'), 'utf8');
    expect(text).toContain('/etc/prometheus/alerts.yml');
    writeFileSync(join(folder, 'prometheus.yml'), text.replace('/etc/prometheus/alerts.yml', join(DEPLOY, 'monitoring', 'alerts.yml')));

    const output = run('promtool', ['check', 'config', join(folder, 'prometheus.yml')]);
    expect(output).toContain('SUCCESS: 1 rule files found');
  });
});

describe('kubectl kustomize', () => {
  const overlays: [string, number][] = [
    ['base', 2],
    ['overlays/small', 2],
    ['overlays/medium', 4],
    ['overlays/large', 8],
  ];
  for (const [path, workers] of overlays) {
    it(`builds ${path} with ${workers} workers`, () => {
      const documents = parseDocuments(run('kubectl', ['kustomize', join(DEPLOY, 'k8s', path)]));
      const workerJob = manifest(documents, 'Job', 'gradfleet-worker');
      const coordinatorJob = manifest(documents, 'Job', 'gradfleet-coordinator');
      const coordinator: Container = coordinatorJob.spec.template.spec.containers[0];
      const worker: Container = workerJob.spec.template.spec.containers[0];

      expect(workerJob.spec.completions).toBe(workers);
      expect(workerJob.spec.parallelism).toBe(workers);
      expect(coordinator.env!.find(({ name }) => name === 'GRADFLEET_WORKERS')?.value).toBe(String(workers));
      expect(coordinator.image).toBe(IMAGE);
      expect(worker.image).toBe(IMAGE);

      // The generated ConfigMap gets a hash suffix, and kustomize renames its uses to match.
      const configMap = documents.find((document) => document.kind === 'ConfigMap');
      expect(configMap.metadata.name).toMatch(/^gradfleet-run-/);
      for (const job of [coordinatorJob, workerJob]) {
        const volume = job.spec.template.spec.volumes.find(({ name }: { name: string }) => name === 'run');
        expect(volume.configMap.name).toBe(configMap.metadata.name);
      }
      expect(Object.keys(configMap.data)).toEqual(['run-until-complete.sh']);
      expect(manifest(documents, 'PersistentVolumeClaim', 'gradfleet-checkpoints').spec.accessModes).toEqual(['ReadWriteOnce']);
      // PodMonitors come only from k8s/monitoring, so an overlay applies on a cluster without the Operator.
      expect(documents.filter((document) => document.kind === 'PodMonitor')).toHaveLength(0);
    });
  }

  it('builds the PodMonitors apart', () => {
    const documents = parseDocuments(run('kubectl', ['kustomize', join(DEPLOY, 'k8s', 'monitoring')]));
    expect(documents.map((document) => `${document.kind}/${document.metadata.name}`).sort()).toEqual([
      'PodMonitor/gradfleet-coordinator',
      'PodMonitor/gradfleet-worker',
    ]);
  });
});
