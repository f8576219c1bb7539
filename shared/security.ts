import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { createSecureContext } from 'node:tls';
import { OptionError } from './options.js';

/**
 * Shared-token authentication, TLS files and the rules that keep a token off the network
 * in clear text. The coordinator and the worker both use these checks before they open a
 * socket.
 */

/**
 * Compares a presented token with the expected one in constant time. Both sides are
 * hashed with SHA-256 first, so the comparison always covers 32 bytes and neither the
 * length of the expected token nor the position of the first difference leaks through timing.
 */
export function tokensMatch(expected: string, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  const expectedDigest = createHash('sha256').update(expected, 'utf8').digest();
  const presentedDigest = createHash('sha256').update(presented, 'utf8').digest();
  return timingSafeEqual(expectedDigest, presentedDigest);
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Returns whether `host` is a loopback address: 127.0.0.0/8, ::1 (also IPv4-mapped or
 * in brackets) or the name `localhost`. Every other name counts as reachable from
 * other machines, because it may resolve to any address.
 */
export function isLoopbackHost(host: string): boolean {
  const name = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (name === 'localhost') return true;
  if (isIPv4(name)) return LOOPBACK.check(name, 'ipv4');
  if (isIPv6(name)) return LOOPBACK.check(name, 'ipv6');
  return false;
}

/** What decides whether a coordinator may listen on its address. */
export interface ListenSecurity {
  host: string;
  token?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecure: boolean;
}

/**
 * Raises unless the coordinator may listen on `host`: a loopback address always, any
 * other address only with a token and TLS, or with `--insecure`.
 */
export function checkListenSecurity(options: ListenSecurity): void {
  if (options.tlsCert !== undefined && options.tlsKey === undefined) {
    throw new OptionError(`--tls-cert ${options.tlsCert} needs --tls-key: pass the PEM file of the certificate's private key`);
  }
  if (options.tlsKey !== undefined && options.tlsCert === undefined) {
    throw new OptionError(`--tls-key ${options.tlsKey} needs --tls-cert: pass the PEM file of the certificate`);
  }
  if (options.insecure || isLoopbackHost(options.host)) return;
  const missing = [options.token === undefined ? '--token' : '', options.tlsCert === undefined ? '--tls-cert and --tls-key' : ''].filter(Boolean);
  if (missing.length === 0) return;
  throw new OptionError(
    `--host ${options.host} is reachable from other machines, so the coordinator needs --token with --tls-cert and --tls-key ` +
      `(missing: ${missing.join(', ')}); pass them (the token preferably as GRADFLEET_TOKEN), ` +
      'or --insecure on a trusted private network, or --host 127.0.0.1',
  );
}

/** What decides whether a worker may send its token to the coordinator. */
export interface WorkerTransport {
  /** The coordinator's URL, ws:// or wss://. */
  coordinator: string;
  token?: string;
  insecure: boolean;
}

/**
 * Raises when the worker would send its token in clear text (a ws:// URL) to a host
 * other than this machine, unless `--insecure` is given. Without a token there is no
 * secret to protect, so any URL passes.
 */
export function checkWorkerTransport(options: WorkerTransport): void {
  if (options.token === undefined || options.insecure) return;
  let url: URL;
  try {
    url = new URL(options.coordinator);
  } catch {
    throw new OptionError(`invalid --coordinator "${options.coordinator}": expected a WebSocket URL such as wss://10.0.0.5:7070`);
  }
  if (url.protocol !== 'ws:' || isLoopbackHost(url.hostname)) return;
  throw new OptionError(
    `--coordinator ${options.coordinator} would send the token in clear text to ${url.hostname}, which is not this machine; ` +
      'use a wss:// URL (the coordinator needs --tls-cert and --tls-key), or pass --insecure on a trusted private network',
  );
}

/** A certificate chain and its private key, as PEM bytes. */
export interface TlsCredentials {
  cert: Buffer;
  key: Buffer;
}

/**
 * Reads the coordinator's certificate and private key, and checks that they are valid
 * PEM and belong together by building a TLS context from them.
 */
export function readTlsCredentials(certPath: string, keyPath: string): TlsCredentials {
  const cert = readPemFile(certPath, '--tls-cert', 'certificate');
  const key = readPemFile(keyPath, '--tls-key', 'private key');
  try {
    createSecureContext({ cert, key });
  } catch (error) {
    throw new OptionError(
      `invalid TLS files --tls-cert ${certPath} and --tls-key ${keyPath}: ${(error as Error).message}; ` +
        'pass a PEM certificate and the PEM private key it was made with',
    );
  }
  return { cert, key };
}

/** Reads the PEM certificate a worker trusts for a wss:// coordinator (`--ca`). */
export function readCaCertificate(path: string): Buffer {
  const ca = readPemFile(path, '--ca', 'certificate');
  try {
    // createSecureContext accepts a private key as `ca` without complaint, so parse it as a certificate too.
    new X509Certificate(ca);
    createSecureContext({ ca });
  } catch (error) {
    throw new OptionError(`invalid --ca ${path}: ${(error as Error).message}; pass the PEM certificate of the CA, or the coordinator's self-signed certificate`);
  }
  return ca;
}

function readPemFile(path: string, flag: string, kind: string): Buffer {
  let contents: Buffer;
  try {
    contents = readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : (error as Error).message;
    throw new OptionError(`cannot read ${flag} ${path}: ${reason}; pass a readable PEM ${kind} file`);
  }
  // createSecureContext accepts some non-PEM input (DER, for example) only to fail
  // later, so the PEM header is checked here to name the file and the fix.
  if (!contents.includes('-----BEGIN ')) {
    throw new OptionError(`invalid ${flag} ${path}: not a PEM file (no "-----BEGIN" line); pass a PEM ${kind}, such as one written by openssl`);
  }
  return contents;
}

/** Error codes that Node's TLS client sets when it cannot verify the server's certificate. */
const CERTIFICATE_ERROR_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * Returns a complete message for a TLS certificate error, which retrying cannot fix, or
 * undefined for any other connection error.
 */
export function describeCertificateError(error: Error & { code?: string }, url: string): string | undefined {
  if (!error.code || !CERTIFICATE_ERROR_CODES.has(error.code)) return undefined;
  const fix =
    error.code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? "connect with a host name or address that the certificate lists, or issue a certificate for this one"
      : "pass --ca with the coordinator's self-signed certificate or the CA that signed it";
  return `cannot verify the TLS certificate of the coordinator at ${url}: ${error.message} (${error.code}); ${fix}`;
}
