// Container health check: exits 0 when the gradfleet process in this container serves
// /metrics. Node's fetch is used because the slim Node.js image has no curl or wget.
// GRADFLEET_METRICS_PORT names the port; without it the coordinator's default (9400)
// and the worker's (9401) are tried in turn.
const ports = process.env.GRADFLEET_METRICS_PORT ? [process.env.GRADFLEET_METRICS_PORT] : ['9400', '9401'];

for (const port of ports) {
  const url = `http://127.0.0.1:${port}/metrics`;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(3_000) });
    if (response.ok) process.exit(0);
    console.error(`unhealthy: ${url} returned HTTP ${response.status}`);
  } catch (error) {
    console.error(`unhealthy: ${url} failed: ${error.cause?.code ?? error.message}`);
  }
}
process.exit(1);
