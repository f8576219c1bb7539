import { roundTrip, type GradientEncoding } from '../shared/encoding.js';

/**
 * Error feedback for a compressed gradient encoding (Karimireddy et al., "Error Feedback
 * Fixes SignSGD and other Gradient Compression Schemes", arXiv:1901.09847). The worker
 * keeps, per tensor, the residual that the encoding lost on its last gradient and adds it to
 * the next one before that is encoded. So a value the encoding rounds away is not lost but
 * sent later: over k steps the decoded gradients sum to the true sum up to one residual.
 *
 * One compressor lives for one model on one connection. The worker makes a new one at every
 * `welcome`, so a rejoin or a new model starts from zero residuals.
 */
export class GradientCompressor {
  private residuals: Float32Array[] = [];

  constructor(readonly encoding: GradientEncoding) {}

  /**
   * Adds the carried residual to each gradient in place and stores the new residual, the part
   * of the result that the encoding will lose. Returns the same arrays, ready for the codec
   * to encode. fp32 loses nothing, so it carries nothing.
   */
  compensate(gradients: Float32Array[]): Float32Array[] {
    if (this.encoding === 'fp32') return gradients;
    // NOTE: the codec encodes the returned values again when it writes the frame, so each
    // gradient is encoded twice; bench/encodings.ts measures one encoding of the CNN's gradient.
    gradients.forEach((gradient, t) => {
      const residual = this.residualFor(t, gradient.length);
      for (let i = 0; i < gradient.length; i++) gradient[i] += residual[i];
      const sent = roundTrip(this.encoding, gradient);
      for (let i = 0; i < gradient.length; i++) {
        const lost = gradient[i] - sent[i];
        // A non-finite gradient is rejected by the coordinator, and an fp16 overflow sends an
        // infinity. Carrying NaN or infinity would poison every later step, so it is dropped.
        residual[i] = Number.isFinite(lost) ? lost : 0;
      }
    });
    return gradients;
  }

  /** Returns the residual of tensor `t`, zero at first use or when its length changed. */
  private residualFor(t: number, length: number): Float32Array {
    let residual = this.residuals[t];
    if (!residual || residual.length !== length) {
      residual = new Float32Array(length);
      this.residuals[t] = residual;
    }
    return residual;
  }
}
