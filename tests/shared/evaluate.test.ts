import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset, type Dataset } from '../../shared/data/dataset.js';
import { buildModel } from '../../shared/models.js';
import { evaluate, evaluateInSlices } from '../../shared/training.js';

describe('evaluation in slices', () => {
  let dataset: Dataset;

  beforeAll(async () => {
    await selectBackend('cpu');
    dataset = await loadDataset({ trainLimit: 10, testLimit: 537 });
  });

  // A budget of 0 ms gives chunks of 1 image after the first; 1e6 ms gives chunks of 1,000.
  for (const sliceMs of [0, 5, 1e6]) {
    it(`matches evaluate at ${sliceMs} ms`, async () => {
      const model = buildModel('mlp', { inputShape: [28, 28, 1], numClasses: 10 }, 7);
      const { test } = dataset;
      const data = { images: test.images, labels: test.labels, count: test.count };
      const whole = evaluate(model, data, 10);
      const sliced = await evaluateInSlices(model, data, 10, sliceMs);
      model.dispose();
      expect(sliced.count).toBe(537);
      expect(sliced.accuracy).toBe(whole.accuracy);
      expect(sliced.loss).toBeCloseTo(whole.loss, 5);
    });
  }
});
