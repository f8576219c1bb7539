import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

/**
 * Histogram buckets for durations in seconds: steps and shard computations on CPUs take
 * from tens of milliseconds to tens of seconds.
 */
export const SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Raised when a server cannot listen on its address, for example because the port is in use. */
export class ListenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ListenError';
  }
}

/**
 * Serves one prom-client registry on `/metrics`. Each coordinator or worker owns its
 * registry and its server, so that two of them in one process never share series.
 */
export class MetricsServer {
  private server?: Server;

  constructor(private readonly registry: Registry) {}

  /** Starts listening and returns the port, which differs from `port` when it is 0. */
  async listen(host: string, port: number): Promise<number> {
    const server = createServer((request, response) => {
      if (request.method !== 'GET' || request.url?.split('?')[0] !== '/metrics') {
        response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are served on GET /metrics\n');
        return;
      }
      this.registry
        .metrics()
        .then((text) => response.writeHead(200, { 'content-type': this.registry.contentType }).end(text))
        .catch((error: Error) => response.writeHead(500).end(`collecting metrics failed: ${error.message}\n`));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        const hint = error.code === 'EADDRINUSE' ? `; pass another --metrics-port, or 0 for any free port` : '';
        reject(new ListenError(`metrics server failed to listen on ${host}:${port}: ${error.message}${hint}`));
      });
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
