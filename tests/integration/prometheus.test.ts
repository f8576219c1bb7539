import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoordinatorMetrics } from '../../coordinator/metrics.js';
import { WorkerMetrics } from '../../worker/metrics.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { freePort } from '../helpers/runs.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MONITORING = join(ROOT, 'deploy', 'monitoring');
const PROMETHEUS = '/usr/bin/prometheus';
const PROMTOOL = '/usr/bin/promtool';
const MISSING_PROMETHEUS =
  `${PROMETHEUS} not found: these tests run a real Prometheus. Install it with .ci/run, ` +
  'or apt-get install -y prometheus (the package also provides promtool).';

/**
 * Counters with labels that get a series only once their event happens (a rejected message,
 * a dropped worker, a missed deadline). A healthy run has none, so only their metadata is checked.
 */
const EVENT_METRICS = new Set([
  'gradfleet_rejected_messages_total',
  'gradfleet_rejected_connections_total',
  'gradfleet_worker_disconnects_total',
  'gradfleet_step_timeouts_total',
]);

/**
 * Grafana's interval variables, replaced by fixed values before a dashboard query goes to
 * Prometheus. 30 s spans many of the test's 1 s scrapes.
 */
const GRAFANA_VARIABLES: [RegExp, string][] = [
  [/\$__rate_interval|\$\{__rate_interval\}/g, '30s'],
  [/\$__interval|\$\{__interval\}/g, '5s'],
  [/\$__range|\$\{__range\}/g, '1m'],
];

interface QueryResult {
  metric: Record<string, string>;
  value: [number, string];
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type: string; uid: string };
  targets?: { expr: string; refId: string; datasource?: { type: string; uid: string } }[];
}

function readDashboard(): { panels: Panel[]; templating: { list: { name: string; type: string; query: string }[] } } {
  return JSON.parse(readFileSync(join(MONITORING, 'grafana-dashboard.json'), 'utf8'));
}

/** Returns every panel query of the dashboard, with the title of its panel. */
function dashboardQueries(): { title: string; expr: string }[] {
  return readDashboard().panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ title: panel.title, expr: target.expr })));
}

function substituteGrafanaVariables(expr: string): string {
  let query = expr;
  for (const [pattern, value] of GRAFANA_VARIABLES) query = query.replace(pattern, value);
  return query;
}

/** Returns the names and types of every metric that a coordinator and a worker register. */
function registeredMetrics(): Map<string, string> {
  const coordinator = new CoordinatorMetrics();
  const worker = new WorkerMetrics();
  try {
    const metrics = [...coordinator.registry.getMetricsAsArray(), ...worker.registry.getMetricsAsArray()];
    // prom-client's types declare `type` as a numeric enum, but at run time it is the type
    // name that /metrics prints, such as "counter".
    return new Map(metrics.map((metric) => [metric.name, String(metric.type)]));
  } finally {
    worker.close();
  }
}

/** Returns whether nothing listens on `port` of 127.0.0.1. */
async function portIsFree(port: number): Promise<boolean> {
  const server = createServer();
  return new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Returns a port P such that P, P + 1 … P + count - 1 were free a moment ago. */
async function freePortRun(count: number): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const base = await freePort();
    if (base + count > 65_535) continue;
    const rest = await Promise.all(Array.from({ length: count - 1 }, (_, i) => portIsFree(base + 1 + i)));
    if (rest.every(Boolean)) return base;
  }
  throw new Error(`found no ${count} consecutive free ports on 127.0.0.1 in 20 attempts`);
}

/**
 * Returns the shipped prometheus.yml with the test's targets, a 1 s scrape and evaluation
 * interval, and the rule file by its absolute path. Editing the text, instead of writing a
 * config of its own, keeps the job names and labels that the alert rules match on the ones shipped.
 */
function testConfig(coordinatorPort: number, workerPorts: number[]): string {
  let config = readFileSync(join(MONITORING, 'prometheus.yml'), 'utf8');
  const replacements: [string, string][] = [
    ['scrape_interval: 5s', 'scrape_interval: 1s'],
    ['scrape_timeout: 4s', 'scrape_timeout: 1s'],
    ['evaluation_interval: 5s', 'evaluation_interval: 1s'],
    ["- targets: ['127.0.0.1:9400']", `- targets: ['127.0.0.1:${coordinatorPort}']`],
    ["- targets: ['127.0.0.1:9401', '127.0.0.1:9402']", `- targets: [${workerPorts.map((port) => `'127.0.0.1:${port}'`).join(', ')}]`],
    ['  - alerts.yml', `  - ${join(MONITORING, 'alerts.yml')}`],
  ];
  for (const [from, to] of replacements) {
    const parts = config.split(from);
    if (parts.length !== 2) throw new Error(`deploy/monitoring/prometheus.yml must contain "${from}" once, found ${parts.length - 1}; update testConfig to match the file`);
    config = parts.join(to);
  }
  return config;
}

/** A Prometheus server on 127.0.0.1, with its output kept for error messages. */
class PrometheusServer {
  readonly url: string;
  private readonly child: ChildProcess;
  private output = '';
  private readonly exited: Promise<number | null>;

  constructor(configFile: string, dataFolder: string, port: number) {
    this.url = `http://127.0.0.1:${port}`;
    this.child = spawn(
      PROMETHEUS,
      [`--config.file=${configFile}`, `--storage.tsdb.path=${dataFolder}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child.stdout!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
  }

  /** Waits until /-/ready returns 200; raises with Prometheus's output when it exits or times out. */
  async ready(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`prometheus exited with status ${this.child.exitCode}:\n${this.output}`);
      const response = await fetch(`${this.url}/-/ready`).catch(() => undefined);
      if (response?.ok) return;
      await sleep(200);
    }
    throw new Error(`prometheus was not ready within ${timeoutMs} ms:\n${this.output}`);
  }

  /** Sends a GET to the HTTP API and returns `data`; raises when the status is not success. */
  async api<T>(path: string, parameters: Record<string, string> = {}): Promise<T> {
    const response = await fetch(`${this.url}${path}?${new URLSearchParams(parameters)}`);
    const body = (await response.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${path} ${JSON.stringify(parameters)} failed: ${body.error}`);
    return body.data;
  }

  async query(expr: string): Promise<QueryResult[]> {
    const data = await this.api<{ resultType: string; result: QueryResult[] }>('/api/v1/query', { query: expr });
    return data.result;
  }

  /** Polls `expr` until it returns a series, for conditions that need several scrapes. */
  async waitFor(expr: string, timeoutMs = 60_000): Promise<QueryResult[]> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const result = await this.query(expr);
      if (result.length > 0) return result;
      await sleep(500);
    }
    throw new Error(`prometheus returned no series for ${expr} within ${timeoutMs} ms`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Returns the gradfleet_* lines of a /metrics text: the HELP, TYPE and sample lines. */
function gradfleetLines(text: string): string {
  const lines = text.split('\n').filter((line) => /^(# (HELP|TYPE) )?gradfleet_/.test(line));
  return `${lines.join('\n')}\n`;
}

describe('Prometheus scraping a training run', () => {
  let prometheus: PrometheusServer | undefined;
  let launch: CliProcess | undefined;
  const workerPorts: number[] = [];
  let coordinatorPort = 0;

  beforeAll(async () => {
    if (!existsSync(PROMETHEUS)) throw new Error(MISSING_PROMETHEUS);

    // Fixed ports for everything, so that no port 0 of one process takes a port meant for
    // another: the metrics of the coordinator and both workers, then the WebSocket port.
    coordinatorPort = await freePortRun(4);
    workerPorts.push(coordinatorPort + 1, coordinatorPort + 2);
    const webSocketPort = coordinatorPort + 3;
    let prometheusPort = await freePort();
    while (prometheusPort >= coordinatorPort && prometheusPort <= webSocketPort) prometheusPort = await freePort();

    const folder = temporaryFolder('prometheus');
    const configFile = join(folder, 'prometheus.yml');
    writeFileSync(configFile, testConfig(coordinatorPort, workerPorts));
    prometheus = new PrometheusServer(configFile, join(folder, 'data'), prometheusPort);
    await prometheus.ready();

    // Many short epochs, so that evaluations and checkpoints happen while Prometheus
    // scrapes; the test stops the run with SIGTERM once it has queried everything.
    launch = new CliProcess([
      'launch', '--workers', '2', '--port', String(webSocketPort), '--metrics-port', String(coordinatorPort), '--backend', 'wasm', '--model', 'mlp',
      '--train-limit', '2000', '--test-limit', '500', '--epochs', '100', '--log-format', 'json',
      '--checkpoint-dir', join(folder, 'checkpoints'), '--keep-checkpoints', '1', '--output', join(folder, 'model'),
    ]);
    await launch.waitForLog('started', 60_000);

    // Past epoch 1 the test accuracy and a checkpoint exist, and 10 scrapes of steps give
    // every rate over 30 s several points.
    await prometheus.waitFor('gradfleet_epoch >= 2');
    await prometheus.waitFor('count_over_time(gradfleet_steps_total[30s]) >= 10 and gradfleet_steps_total > 0');
  }, 120_000);

  afterAll(async () => {
    launch?.kill();
    await prometheus?.stop();
  });

  it('scrapes the coordinator and both workers', async () => {
    const up = await prometheus!.query('up');
    const instances = up.map((series) => series.metric.instance).sort();
    expect(instances).toEqual([coordinatorPort, ...workerPorts].map((port) => `127.0.0.1:${port}`).sort());
    for (const series of up) expect(series.value[1], `up of ${series.metric.instance}`).toBe('1');
  });

  it('stores every gradfleet metric', async () => {
    const names = new Set((await prometheus!.query('group by (__name__) ({__name__=~"gradfleet_.+"})')).map((series) => series.metric.__name__));
    const metadata = await prometheus!.api<Record<string, { type: string }[]>>('/api/v1/metadata');
    for (const [name, type] of registeredMetrics()) {
      expect(metadata[name]?.map((entry) => entry.type), `metadata of ${name}`).toContain(type);
      if (EVENT_METRICS.has(name)) continue;
      const stored = type === 'histogram' ? `${name}_bucket` : name;
      expect(names.has(stored), `series ${stored} in Prometheus`).toBe(true);
    }
  });

  it('runs every dashboard query', async () => {
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(10);
    for (const { title, expr } of queries) {
      const query = substituteGrafanaVariables(expr);
      expect(query, `panel "${title}" uses a Grafana variable the test does not replace`).not.toContain('$');
      const result = await prometheus!.query(query);
      // A query of an event counter alone may be empty in a healthy run.
      const mayBeEmpty = [...EVENT_METRICS].some((name) => query.includes(name));
      if (!mayBeEmpty) expect(result.length, `series of panel "${title}": ${query}`).toBeGreaterThan(0);
    }
  });

  it('loads and evaluates every alert rule', async () => {
    const alertCount = readFileSync(join(MONITORING, 'alerts.yml'), 'utf8').match(/^\s*- alert: /gm)!.length;
    type Rule = { name: string; health: string; lastError?: string };
    const { groups } = await prometheus!.api<{ groups: { name: string; rules: Rule[] }[] }>('/api/v1/rules');
    expect(groups.map((group) => group.name)).toEqual(['gradfleet']);
    const rules = groups[0].rules;
    expect(rules).toHaveLength(alertCount);
    for (const rule of rules) expect(rule.health, `${rule.name}: ${rule.lastError ?? ''}`).toBe('ok');
  });

  it('raises no alert while training runs', async () => {
    const { alerts } = await prometheus!.api<{ alerts: { labels: Record<string, string>; state: string }[] }>('/api/v1/alerts');
    expect(alerts.map((alert) => `${alert.labels.alertname} ${alert.state} ${alert.labels.instance}`)).toEqual([]);
  });

  it('serves metrics that promtool accepts', async () => {
    if (!existsSync(PROMTOOL)) throw new Error(MISSING_PROMETHEUS);
    for (const port of [coordinatorPort, workerPorts[0]]) {
      const text = gradfleetLines(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
      const check = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
      expect(check.status, `promtool check metrics of port ${port}:\n${check.stdout}${check.stderr}`).toBe(0);
    }
  });

  it('alerts on every target once the run stops', async () => {
    launch!.kill('SIGTERM');
    expect(await launch!.exited, launch!.output()).toBe(0);
    // GradfleetTargetDown waits a minute before firing, but is pending from the first failed scrape.
    const pending = await prometheus!.waitFor('count(ALERTS{alertname="GradfleetTargetDown", alertstate="pending"}) == 3', 30_000);
    expect(pending[0].value[1]).toBe('3');
  }, 60_000);
});

describe('Grafana dashboard', () => {
  it('takes its data source from a variable', () => {
    const dashboard = readDashboard();
    expect(dashboard.templating.list).toContainEqual(expect.objectContaining({ name: 'datasource', type: 'datasource', query: 'prometheus' }));
    for (const panel of dashboard.panels.filter((panel) => panel.type !== 'row')) {
      expect(panel.datasource, `data source of panel "${panel.title}"`).toEqual({ type: 'prometheus', uid: '${datasource}' });
      for (const target of panel.targets ?? []) expect(target.datasource, `data source of a query of "${panel.title}"`).toEqual(panel.datasource);
    }
  });

  it('has unique ids and panels inside the grid', () => {
    const panels = readDashboard().panels;
    expect(new Set(panels.map((panel) => panel.id)).size).toBe(panels.length);
    for (const panel of panels) {
      expect(panel.gridPos.x + panel.gridPos.w, `right edge of panel "${panel.title}"`).toBeLessThanOrEqual(24);
      const refIds = (panel.targets ?? []).map((target) => target.refId);
      expect(new Set(refIds).size, `query refIds of panel "${panel.title}"`).toBe(refIds.length);
    }
  });
});
