/**
 * Raised when a gradient kernel is called with an attribute value it does not implement,
 * so that the caller gets an error instead of a silently wrong result.
 */
export class UnsupportedKernelAttributeError extends Error {
  override readonly name = 'UnsupportedKernelAttributeError';

  constructor(
    readonly kernelName: string,
    readonly attribute: string,
    readonly value: unknown,
    readonly supported: string,
  ) {
    super(
      `${kernelName} on the wasm backend does not support ${attribute}=${JSON.stringify(value)}; ` +
        `supported: ${supported}. Use those values or run this model on the cpu backend.`,
    );
  }
}
