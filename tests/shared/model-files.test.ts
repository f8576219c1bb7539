import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend, tf } from '../../shared/backend.js';
import { loadDataset } from '../../shared/data/dataset.js';
import { loadModel, ModelFilesError, saveModel } from '../../shared/model-files.js';
import { buildModel } from '../../shared/models.js';
import { evaluate } from '../../shared/training.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const SHAPE = { inputShape: [28, 28, 1] as [number, number, number], numClasses: 10 };

/** Serves a folder over HTTP on loopback, as a static file host would. */
async function serveFolder(folder: string): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer(async (request, response) => {
    try {
      response.end(await readFile(join(folder, request.url!.slice(1))));
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

describe('saved models', () => {
  beforeAll(async () => {
    await selectBackend('cpu');
  });

  it('load with tf.loadLayersModel', async () => {
    const folder = temporaryFolder('model-http');
    const model = buildModel('cnn', SHAPE, 7);
    await saveModel(model, folder);
    const server = await serveFolder(folder);
    try {
      const loaded = await tf.loadLayersModel(`${server.url}/model.json`);
      const input = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 3);
      const expected = (model.predict(input) as tf.Tensor).dataSync();
      const actual = (loaded.predict(input) as tf.Tensor).dataSync();
      expect(Array.from(actual)).toEqual(Array.from(expected));
      input.dispose();
      model.dispose();
      loaded.dispose();
    } finally {
      await server.close();
    }
  });

  it('round trip through loadModel', async () => {
    const folder = temporaryFolder('model-files');
    const model = buildModel('mlp', SHAPE, 11);
    await saveModel(model, folder);
    const loaded = await loadModel(folder);
    const original = model.getWeights().map((weight) => Array.from(weight.dataSync()));
    const restored = loaded.getWeights().map((weight) => Array.from(weight.dataSync()));
    expect(restored).toEqual(original);
    model.dispose();
    loaded.dispose();
  });

  it('missing folder names the path', async () => {
    const folder = join(temporaryFolder('model-missing'), 'nothing-here');
    await expect(loadModel(folder)).rejects.toThrow(ModelFilesError);
    await expect(loadModel(folder)).rejects.toThrow(/nothing-here\/model.json/);
  });

  it('non-model JSON is rejected', async () => {
    const folder = temporaryFolder('model-bad');
    await writeFile(join(folder, 'model.json'), JSON.stringify({ hello: 'world' }));
    await expect(loadModel(folder)).rejects.toThrow(/is not a TensorFlow.js Layers model/);
  });
});

describe('gradfleet evaluate', () => {
  it('prints the test accuracy of a saved model', async () => {
    await selectBackend('cpu');
    const folder = temporaryFolder('evaluate');
    const model = buildModel('mlp', SHAPE, 5);
    await saveModel(model, folder);
    const { test } = await loadDataset({ trainLimit: 0, testLimit: 500 });
    const expected = evaluate(model, test, 10);
    model.dispose();

    const run = new CliProcess(['evaluate', '--model-dir', folder, '--test-limit', '500', '--backend', 'cpu', '--log-format', 'json']);
    expect(await run.exited, run.output()).toBe(0);
    const result = run.logs('evaluation complete')[0];
    expect(result.images).toBe(500);
    expect(result.testAccuracy).toBeCloseTo(expected.accuracy, 6);
    expect(result.testLoss).toBeCloseTo(expected.loss, 4);
  });

  it('fails clearly without a model', async () => {
    const run = new CliProcess(['evaluate', '--model-dir', '/nonexistent/model-dir', '--backend', 'cpu']);
    expect(await run.exited).toBe(1);
    expect(run.stderr.join('\n')).toMatch(/cannot read \/nonexistent\/model-dir\/model.json.*pass the folder given to --output/);
  });
});
