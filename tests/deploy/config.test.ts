import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { COMMAND_OPTIONS } from '../../cli/options.js';
import { COORDINATOR_DEFAULTS, WORKER_DEFAULTS } from '../../shared/options.js';
import { type Container, DEPLOY, dockerInstructions, flagsOf, IMAGE, manifest, optionOfVariable, parseDocuments, readDeploy, readYaml, VERSION } from './files.js';

/**
 * Checks the deploy files as text against the CLI: every flag and GRADFLEET_* variable
 * they name exists, the ports are gradfleet's defaults, and the Dockerfile, compose,
 * Kubernetes and VM files agree on the image, the paths and the restart rules.
 * tools.test.ts checks the same files with docker-compose and kubectl.
 */

/** Flags yargs adds to every command. */
const BUILT_IN_FLAGS = ['help', 'version', 'config'];
const ALL_OPTIONS = new Set(Object.values(COMMAND_OPTIONS).flat());
/** The folder every container and VM keeps its checkpoints and model in. */
const STATE = '/var/lib/gradfleet';
/** Names deploy/README.md quotes as examples of variables gradfleet rejects. */
const REJECTED_EXAMPLES = new Set(['GRADFLEET_COORDINATOR_SERVICE_HOST']);

function expectOptionsOf(command: string, flags: string[], where: string): void {
  const known = new Set([...COMMAND_OPTIONS[command], ...BUILT_IN_FLAGS]);
  for (const flag of flags) expect(known.has(flag), `--${flag} in ${where} is not an option of gradfleet ${command}`).toBe(true);
}

/** Returns the value of --flag in a command line, written as --flag=value or --flag value. */
function valueOf(words: string[], flag: string): string | undefined {
  const index = words.findIndex((word) => word === `--${flag}` || word.startsWith(`--${flag}=`));
  if (index < 0) return undefined;
  return words[index].includes('=') ? words[index].slice(flag.length + 3) : words[index + 1];
}

/** Lists every file under deploy/, except monitoring/ and the local secrets. */
function deployFiles(folder = DEPLOY): string[] {
  return readdirSync(folder).flatMap((name) => {
    const path = join(folder, name);
    const relativePath = relative(DEPLOY, path);
    if (relativePath === 'monitoring' || relativePath === 'secrets') return [];
    return statSync(path).isDirectory() ? deployFiles(path) : [relativePath];
  });
}

/** Returns the ExecStart command line of a systemd unit as words, with continuation lines joined. */
function execStart(unit: string): string[] {
  const joined = unit.replace(/\\\n\s*/g, ' ');
  const line = joined.split('\n').find((text) => text.startsWith('ExecStart='));
  if (!line) throw new Error('the unit has no ExecStart= line');
  return line.slice('ExecStart='.length).trim().split(/\s+/);
}

function unitSetting(unit: string, key: string): string[] {
  return unit
    .split('\n')
    .filter((line) => line.startsWith(`${key}=`))
    .map((line) => line.slice(key.length + 1));
}

const compose = readYaml('docker-compose.yml');
const composePrometheus = readYaml('compose/prometheus.yml');
const k8sBase = ['base/coordinator.yaml', 'base/workers.yaml', 'monitoring/podmonitor.yaml'].flatMap((file) => parseDocuments(readDeploy(`k8s/${file}`)));
const kustomization = readYaml('k8s/base/kustomization.yaml');
const k8sCoordinatorJob = manifest(k8sBase, 'Job', 'gradfleet-coordinator');
const k8sWorkerJob = manifest(k8sBase, 'Job', 'gradfleet-worker');
const k8sService = manifest(k8sBase, 'Service', 'gradfleet-coordinator');
const k8sCoordinator: Container = k8sCoordinatorJob.spec.template.spec.containers[0];
const k8sWorker: Container = k8sWorkerJob.spec.template.spec.containers[0];
const coordinatorUnit = readDeploy('vm/gradfleet-coordinator.service');
const workerUnit = readDeploy('vm/gradfleet-worker.service');
const dockerfile = dockerInstructions(readDeploy('Dockerfile'));

/** The coordinator and worker command lines of every deploy file, as words after `gradfleet`. */
const COMMAND_LINES: { where: string; words: string[] }[] = [
  { where: 'docker-compose.yml coordinator', words: compose.services.coordinator.command },
  { where: 'docker-compose.yml worker', words: compose.services.worker.command },
  { where: 'k8s/base/coordinator.yaml', words: k8sCoordinator.args! },
  { where: 'k8s/base/workers.yaml', words: k8sWorker.args! },
  { where: 'vm/gradfleet-coordinator.service', words: execStart(coordinatorUnit).slice(1) },
  { where: 'vm/gradfleet-worker.service', words: execStart(workerUnit).slice(1) },
];

/** Commands shown in deploy/README.md: `gradfleet coordinator …` and `gradfleet worker …` lines, continuations joined. */
function readmeCommandLines(): { where: string; words: string[] }[] {
  const text = readDeploy('README.md').replace(/\\\n\s*/g, ' ');
  return [...text.matchAll(/\bgradfleet (coordinator|worker)(?![-\w])([^\n`]*)/g)].map((match) => ({
    where: `deploy/README.md: ${match[0].slice(0, 60)}`,
    words: [match[1], ...match[2].trim().split(/\s+/)],
  }));
}

describe('deploy flags and variables', () => {
  it('names only options of each command', () => {
    for (const { where, words } of [...COMMAND_LINES, ...readmeCommandLines()]) {
      expect(['coordinator', 'worker'], `first word of the command in ${where}`).toContain(words[0]);
      expectOptionsOf(words[0], flagsOf(words), where);
    }
  });

  it('finds the README commands', () => {
    const commands = readmeCommandLines().map(({ words }) => words[0]);
    expect(commands).toContain('coordinator');
    expect(commands).toContain('worker');
  });

  it('names only existing GRADFLEET_* variables', () => {
    const files = deployFiles();
    expect(files).toContain('Dockerfile');
    for (const file of files) {
      for (const [name] of readDeploy(file).matchAll(/\bGRADFLEET_[A-Z0-9_]*[A-Z0-9]\b/g)) {
        if (file === 'README.md' && REJECTED_EXAMPLES.has(name)) continue;
        expect(ALL_OPTIONS.has(optionOfVariable(name)), `${name} in deploy/${file} matches no gradfleet option; gradfleet would exit with status 2`).toBe(true);
      }
    }
  });

  it('sets container variables of the right command', () => {
    const containers: [string, Container][] = [
      ['coordinator', k8sCoordinator],
      ['worker', k8sWorker],
    ];
    for (const [command, container] of containers) {
      const options = (container.env ?? []).map(({ name }) => optionOfVariable(name));
      expectOptionsOf(command, options, `the environment of the ${command} container in k8s/base`);
    }
  });

  it('passes --resume to every coordinator', () => {
    for (const { where, words } of COMMAND_LINES.filter(({ words }) => words[0] === 'coordinator')) {
      expect(flagsOf(words), where).toContain('resume');
      expect(valueOf(words, 'checkpoint-dir'), where).toBe(`${STATE}/checkpoints`);
      expect(valueOf(words, 'output'), where).toBe(`${STATE}/model`);
    }
  });
});

describe('deploy ports', () => {
  const coordinatorPort = COORDINATOR_DEFAULTS.port;
  const coordinatorMetrics = COORDINATOR_DEFAULTS.metricsPort;
  const workerMetrics = WORKER_DEFAULTS.metricsPort;

  it('exposes the default ports in the image', () => {
    const exposed = dockerfile.filter(({ keyword }) => keyword === 'EXPOSE').flatMap(({ value }) => value.split(/\s+/).map(Number));
    expect(exposed.sort()).toEqual([coordinatorPort, coordinatorMetrics, workerMetrics].sort());
    expect(readDeploy('healthcheck.mjs')).toContain(`['${coordinatorMetrics}', '${workerMetrics}']`);
  });

  it('connects compose workers to the coordinator port', () => {
    expect(valueOf(compose.services.worker.command, 'coordinator')).toBe(`wss://coordinator:${coordinatorPort}`);
    const [coordinatorJob, workerJob] = composePrometheus.scrape_configs;
    expect(coordinatorJob.static_configs[0].targets).toEqual([`coordinator:${coordinatorMetrics}`]);
    expect(workerJob.dns_sd_configs[0]).toMatchObject({ names: ['worker'], port: workerMetrics });
  });

  it('matches Kubernetes ports and annotations', () => {
    expect(k8sCoordinator.ports).toEqual([
      { name: 'workers', containerPort: coordinatorPort },
      { name: 'metrics', containerPort: coordinatorMetrics },
    ]);
    expect(k8sWorker.ports).toEqual([{ name: 'metrics', containerPort: workerMetrics }]);
    expect(k8sService.spec.ports.map(({ port }: { port: number }) => port)).toEqual([coordinatorPort, coordinatorMetrics]);
    expect(k8sCoordinatorJob.spec.template.metadata.annotations['prometheus.io/port']).toBe(String(coordinatorMetrics));
    expect(k8sWorkerJob.spec.template.metadata.annotations['prometheus.io/port']).toBe(String(workerMetrics));
    expect(valueOf(k8sWorker.args!, 'coordinator')).toBe(`wss://${k8sService.metadata.name}:${coordinatorPort}`);
  });

  it('points VM workers at the coordinator port', () => {
    const line = readDeploy('vm/gradfleet.env.example').match(/^GRADFLEET_COORDINATOR=(.*)$/m);
    expect(line?.[1]).toMatch(new RegExp(`^wss://[^/]+:${coordinatorPort}$`));
  });
});

describe('compose and Kubernetes agree', () => {
  it('use the same image', () => {
    expect(compose.services.coordinator.image).toBe(IMAGE);
    expect(compose.services.worker.image).toBe(IMAGE);
    expect(kustomization.images).toEqual([{ name: 'gradfleet', newTag: VERSION }]);
    expect(k8sCoordinator.image).toBe('gradfleet');
    expect(k8sWorker.image).toBe('gradfleet');
    expect(readDeploy('Dockerfile')).toContain(`-t ${IMAGE} `);
  });

  it('mount the state folder at the image workdir', () => {
    const workdirs = dockerfile.filter(({ keyword }) => keyword === 'WORKDIR');
    expect(workdirs.at(-1)?.value).toBe(STATE);
    expect(compose.services.coordinator.volumes).toContain(`gradfleet-data:${STATE}`);
    const mount = k8sCoordinator.volumeMounts!.find(({ name }) => name === 'data');
    expect(mount?.mountPath).toBe(STATE);
  });

  it('give workers the certificate, not the key', () => {
    const composeCoordinator = compose.services.coordinator.command;
    expect(valueOf(compose.services.worker.command, 'ca')).toBe(valueOf(composeCoordinator, 'tls-cert'));
    expect(compose.services.worker.secrets).toEqual(['coordinator-cert.pem']);
    expect(valueOf(k8sWorker.args!, 'ca')).toBe(valueOf(k8sCoordinator.args!, 'tls-cert'));
    const tls = k8sWorkerJob.spec.template.spec.volumes.find(({ name }: { name: string }) => name === 'tls');
    expect(tls.secret.items).toEqual([{ key: 'tls.crt', path: 'tls.crt' }]);
  });

  it('reference files that exist', () => {
    const sources = Object.values<any>(compose.services)
      .flatMap((service) => service.volumes ?? [])
      .map((volume: string) => volume.split(':')[0])
      .filter((source: string) => source.startsWith('./'));
    expect(sources.length).toBeGreaterThan(0);
    for (const source of sources) expect(existsSync(join(DEPLOY, source)), `deploy/${source}, mounted in docker-compose.yml`).toBe(true);
    for (const file of kustomization.configMapGenerator[0].files) expect(existsSync(join(DEPLOY, 'k8s/base', file)), `k8s/base/${file}`).toBe(true);
    expect(k8sCoordinator.command).toEqual(['/bin/sh', '/etc/gradfleet/run/run-until-complete.sh']);
    expect(k8sWorker.command).toEqual(k8sCoordinator.command);
  });

  it('provision Grafana from the monitoring files', () => {
    const grafana = compose.services.grafana;
    const provider = readYaml('monitoring/grafana/provisioning/dashboards/gradfleet.yml').providers[0];
    const dashboard = grafana.volumes.find((volume: string) => volume.startsWith('./monitoring/grafana-dashboard.json:'));
    expect(dashboard?.split(':')[1], 'the dashboard mount in docker-compose.yml').toMatch(new RegExp(`^${provider.options.path}/[^/]+\\.json$`));
    expect(grafana.volumes).toContain('./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro');
    const source = readYaml('monitoring/grafana/provisioning/datasources/prometheus.yml').datasources[0];
    const url = new URL(source.url);
    expect(Object.keys(compose.services)).toContain(url.hostname);
    expect(compose.services[url.hostname].ports).toContain(`127.0.0.1:${url.port}:${url.port}`);
  });

  it('keep service links out of pods', () => {
    // Kubernetes would define GRADFLEET_COORDINATOR_PORT and the like for the Service
    // gradfleet-coordinator, which gradfleet rejects as unknown options.
    for (const job of [k8sCoordinatorJob, k8sWorkerJob]) {
      expect(job.spec.template.spec.enableServiceLinks, job.metadata.name).toBe(false);
      expect(job.spec.template.spec.restartPolicy, job.metadata.name).toBe('Never');
      expect(job.spec.podFailurePolicy.rules[0]).toMatchObject({ action: 'FailJob', onExitCodes: { operator: 'In', values: [2] } });
    }
  });
});

describe('VM units', () => {
  it('match the copies in cloud-init', () => {
    const cloudInit = readDeploy('vm/cloud-init.yaml');
    expect(cloudInit.startsWith('#cloud-config\n')).toBe(true);
    const files = readYaml('vm/cloud-init.yaml').write_files;
    for (const name of ['gradfleet-coordinator.service', 'gradfleet-worker.service']) {
      const copy = files.find(({ path }: { path: string }) => path === `/etc/systemd/system/${name}`);
      expect(copy?.content, `${name} in vm/cloud-init.yaml`).toBe(readDeploy(`vm/${name}`));
    }
  });

  it('restart on failure only', () => {
    for (const unit of [coordinatorUnit, workerUnit]) {
      expect(unitSetting(unit, 'Restart')).toEqual(['on-failure']);
      expect(unitSetting(unit, 'RestartPreventExitStatus')).toEqual(['2']);
      expect(unitSetting(unit, 'EnvironmentFile')).toEqual(['/etc/gradfleet/gradfleet.env']);
      expect(execStart(unit)[0]).toBe('/usr/bin/gradfleet');
    }
  });
});
