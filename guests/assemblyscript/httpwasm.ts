// httpwasm.ts: a small typed library for writing http-wasm guests in AssemblyScript.
//
// A guest is one file next to this one that registers its handlers and re-exports the ABI's exports:
//
//     import * as hw from "./httpwasm";
//     export { handle_request, handle_response } from "./httpwasm";
//     function onRequest(): u64 { hw.setHeader(hw.HeaderKind.Response, "x-hello", "world"); return hw.NEXT; }
//     hw.handlers(onRequest);
//
// Build: `npx asc guest.ts -o guest.wasm -O3 --runtime stub --use abort=` (guests/assemblyscript/
// build_lang.py has the exact flags).
//
// Strings: AssemblyScript strings are UTF-16; the host speaks bytes (UTF-8 for text). This library
// decodes what it reads with String.UTF8 and encodes what it writes the same way; the `...Raw`
// functions and `abi` give the bytes themselves.
//
// Memory: guests are built with the stub runtime (a bump allocator, no GC), and the heap is reset at
// the start of every `handle_request`: everything allocated while handling a request (strings, arrays)
// is freed at the next one, so it stays valid in `handle_response` of the same request. Do not keep
// heap objects in globals across requests (they would point at reused memory); objects made by the
// module's top-level code are freed by the first reset too, so build them in the handler. For the same
// reason the config is read again (once) per request.
//
// Reading a field: the host is handed a static 2 KiB buffer first; when it answers with a bigger
// length (nothing was written), a buffer of exactly that length is allocated and the call retried
// once. A host that answers bigger again is broken: the guest traps.

// --- the raw host functions, exactly as the ABI declares them ----------------------------------------

export namespace abi {
  @external("http_handler", "enable_features") export declare function enable_features(features: u32): u32;
  @external("http_handler", "get_config") export declare function get_config(buf: usize, buf_limit: u32): u32;
  @external("http_handler", "log_enabled") export declare function log_enabled(level: i32): u32;
  @external("http_handler", "log") export declare function log(level: i32, message: usize, message_len: u32): void;
  @external("http_handler", "get_header_names")
  export declare function get_header_names(kind: u32, buf: usize, buf_limit: u32): u64;
  @external("http_handler", "get_header_values")
  export declare function get_header_values(kind: u32, name: usize, name_len: u32, buf: usize, buf_limit: u32): u64;
  @external("http_handler", "set_header_value")
  export declare function set_header_value(kind: u32, name: usize, name_len: u32, value: usize, value_len: u32): void;
  @external("http_handler", "add_header_value")
  export declare function add_header_value(kind: u32, name: usize, name_len: u32, value: usize, value_len: u32): void;
  @external("http_handler", "remove_header")
  export declare function remove_header(kind: u32, name: usize, name_len: u32): void;
  @external("http_handler", "read_body") export declare function read_body(kind: u32, buf: usize, buf_limit: u32): u64;
  @external("http_handler", "write_body") export declare function write_body(kind: u32, body: usize, body_len: u32): void;
  @external("http_handler", "get_method") export declare function get_method(buf: usize, buf_limit: u32): u32;
  @external("http_handler", "set_method") export declare function set_method(method: usize, method_len: u32): void;
  @external("http_handler", "get_uri") export declare function get_uri(buf: usize, buf_limit: u32): u32;
  @external("http_handler", "set_uri") export declare function set_uri(uri: usize, uri_len: u32): void;
  @external("http_handler", "get_protocol_version")
  export declare function get_protocol_version(buf: usize, buf_limit: u32): u32;
  @external("http_handler", "get_source_addr") export declare function get_source_addr(buf: usize, buf_limit: u32): u32;
  @external("http_handler", "get_status_code") export declare function get_status_code(): u32;
  @external("http_handler", "set_status_code") export declare function set_status_code(status_code: u32): void;
}

// --- types ------------------------------------------------------------------------------------------------

/** Feature bits for `enableFeatures`. */
export namespace feature {
  export const BUFFER_REQUEST: u32 = 1;
  export const BUFFER_RESPONSE: u32 = 2;
  export const TRAILERS: u32 = 4;
}

export enum HeaderKind { Request = 0, Response = 1, RequestTrailers = 2, ResponseTrailers = 3 }
export enum BodyKind { Request = 0, Response = 1 }
export enum LogLevel { Debug = -1, Info = 0, Warn = 1, Error = 2, None = 3 }

/** What a request handler returns: NEXT (go on to the app, then handle_response), STOP (the response
 * is as written), or `nextWithCtx(ctx)` (NEXT, and handle_response gets ctx). */
export const NEXT: u64 = 1;
export const STOP: u64 = 0;

export function nextWithCtx(ctx: u32): u64 {
  return (<u64>ctx << 32) | 1;
}

/** Upper and lower halves of a packed `count_len` / `eof_len` / `ctx_next`. */
export function high(v: u64): u32 {
  return <u32>(v >>> 32);
}
export function low(v: u64): u32 {
  return <u32>v;
}

// --- lifecycle ----------------------------------------------------------------------------------------

function noResponse(ctx: u32, isError: bool): void {}

let requestHandler: () => u64 = (): u64 => NEXT;
let responseHandler: (ctx: u32, isError: bool) => void = noResponse;

/** Register the guest's handlers (call it from the module's top level). */
export function handlers(onRequest: () => u64, onResponse: (ctx: u32, isError: bool) => void = noResponse): void {
  requestHandler = onRequest;
  responseHandler = onResponse;
}

/** The ABI's export: frees the last request's memory, then runs the request handler. */
export function handle_request(): u64 {
  heap.reset();
  configCache = null;
  return requestHandler();
}

/** The ABI's export: runs the response handler. */
export function handle_response(reqCtx: u32, isError: u32): void {
  responseHandler(reqCtx, isError != 0);
}

// --- memory and reads -------------------------------------------------------------------------------------

const FIRST_READ: u32 = 2048;
const firstBuffer: usize = memory.data(FIRST_READ, 8);

/** The bytes of a read: where they are (valid until the next read) and how many; `count` for lists. */
class Read {
  constructor(public ptr: usize, public len: u32, public count: u32) {}
}

// A host function that reads into (buf, buf_limit); the wrappers below close over nothing.
type Reader = (kind: u32, name: usize, nameLen: u32, buf: usize, limit: u32) => u64;

function fetch(read: Reader, kind: u32, name: usize, nameLen: u32): Read {
  let buf = firstBuffer;
  let r = read(kind, name, nameLen, buf, FIRST_READ);
  let len = low(r);
  if (len > FIRST_READ) {
    buf = heap.alloc(len);
    r = read(kind, name, nameLen, buf, len);
    if (low(r) > len) unreachable();
    len = low(r);
  }
  return new Read(buf, len, high(r));
}

function readConfig(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 { return abi.get_config(buf, limit); }
function readMethod(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 { return abi.get_method(buf, limit); }
function readUri(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 { return abi.get_uri(buf, limit); }
function readProtocol(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 {
  return abi.get_protocol_version(buf, limit);
}
function readSource(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 { return abi.get_source_addr(buf, limit); }
function readNames(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 {
  return abi.get_header_names(k, buf, limit);
}
function readValues(k: u32, n: usize, nl: u32, buf: usize, limit: u32): u64 {
  return abi.get_header_values(k, n, nl, buf, limit);
}

function text(read: Reader): string {
  const r = fetch(read, 0, 0, 0);
  return String.UTF8.decodeUnsafe(r.ptr, r.len);
}

/** Split a NUL-terminated sequence ("a\0b\0") into its strings. */
function list(r: Read): string[] {
  const out = new Array<string>();
  let start: usize = r.ptr;
  const end = r.ptr + r.len;
  for (let p = r.ptr; p < end; p++) {
    if (load<u8>(p) == 0) {
      out.push(String.UTF8.decodeUnsafe(start, p - start));
      start = p + 1;
    }
  }
  return out;
}

/** A string as UTF-8 bytes, for the host. */
export function utf8(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

// --- administrative -----------------------------------------------------------------------------------

/** Enable features for this request (or for every request when called before any); returns what is
 * enabled now. */
export function enableFeatures(features: u32): u32 {
  return abi.enable_features(features);
}

let configCache: string | null = null;

/** The guest's configuration as text (read from the host once per request). */
export function config(): string {
  let c = configCache;
  if (c === null) {
    c = text(readConfig);
    configCache = c;
  }
  return c;
}

/** The non-empty lines of the config, trimmed, skipping lines starting with '#'. */
export function configLines(): string[] {
  const out = new Array<string>();
  const lines = config().split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line.length > 0 && !line.startsWith("#")) out.push(line);
  }
  return out;
}

export function log(level: LogLevel, message: string): void {
  const b = utf8(message);
  abi.log(level, changetype<usize>(b), b.byteLength);
}

export function logEnabled(level: LogLevel): bool {
  return abi.log_enabled(level) != 0;
}

// --- headers --------------------------------------------------------------------------------------------

/** All header names of `kind`, lowercase. */
export function headerNames(kind: HeaderKind): string[] {
  return list(fetch(readNames, kind, 0, 0));
}

/** The raw answer of get_header_names: the NUL-terminated names and their count. */
export function headerNamesRaw(kind: HeaderKind): Uint8Array {
  const r = fetch(readNames, kind, 0, 0);
  const out = new Uint8Array(r.len);
  memory.copy(out.dataStart, r.ptr, r.len);
  return out;
}

/** All values of header `name` (case-insensitive), in order. */
export function headerValues(kind: HeaderKind, name: string): string[] {
  const n = utf8(name);
  return list(fetch(readValues, kind, changetype<usize>(n), n.byteLength));
}

/** The first value of header `name`, or null when there is none. */
export function header(kind: HeaderKind, name: string): string | null {
  const n = utf8(name);
  const r = fetch(readValues, kind, changetype<usize>(n), n.byteLength);
  if (r.count == 0) return null;
  let end = r.ptr;
  while (load<u8>(end) != 0) end++;
  return String.UTF8.decodeUnsafe(r.ptr, end - r.ptr);
}

export function setHeader(kind: HeaderKind, name: string, value: string): void {
  const n = utf8(name);
  const v = utf8(value);
  abi.set_header_value(kind, changetype<usize>(n), n.byteLength, changetype<usize>(v), v.byteLength);
}

export function addHeader(kind: HeaderKind, name: string, value: string): void {
  const n = utf8(name);
  const v = utf8(value);
  abi.add_header_value(kind, changetype<usize>(n), n.byteLength, changetype<usize>(v), v.byteLength);
}

export function removeHeader(kind: HeaderKind, name: string): void {
  const n = utf8(name);
  abi.remove_header(kind, changetype<usize>(n), n.byteLength);
}

// --- request --------------------------------------------------------------------------------------------

export function method(): string {
  return text(readMethod);
}

export function setMethod(m: string): void {
  const b = utf8(m);
  abi.set_method(changetype<usize>(b), b.byteLength);
}

/** The request URI, still encoded, with its query ("/a%20b?x=1"). */
export function uri(): string {
  return text(readUri);
}

/** Replace the URI (path and query, encoded). A URI without '?' drops the query. */
export function setUri(u: string): void {
  const b = utf8(u);
  abi.set_uri(changetype<usize>(b), b.byteLength);
}

export function protocolVersion(): string {
  return text(readProtocol);
}

export function sourceAddr(): string {
  return text(readSource);
}

// --- bodies -----------------------------------------------------------------------------------------------

/** Read the rest of a body. */
export function readBodyAll(kind: BodyKind): Uint8Array {
  const room: u32 = 4096;
  let buf = heap.alloc(room);
  let len: u32 = 0;
  while (true) {
    buf = heap.realloc(buf, len + room); // the last block: grows in place
    const r = abi.read_body(kind, buf + len, room);
    if (low(r) > room) unreachable();
    len += low(r);
    if (high(r) != 0) break;
  }
  const out = new Uint8Array(len);
  memory.copy(out.dataStart, buf, len);
  return out;
}

/** Write text to a body: the first write in a phase replaces it, the next ones append. */
export function writeBody(kind: BodyKind, body: string): void {
  const b = utf8(body);
  abi.write_body(kind, changetype<usize>(b), b.byteLength);
}

/** Write bytes to a body (see writeBody). */
export function writeBodyBytes(kind: BodyKind, body: Uint8Array): void {
  abi.write_body(kind, body.dataStart, body.byteLength);
}

// --- response -----------------------------------------------------------------------------------------

export function statusCode(): u32 {
  return abi.get_status_code();
}

export function setStatusCode(code: u32): void {
  abi.set_status_code(code);
}

// --- strings ----------------------------------------------------------------------------------------------

/** Compare without returning early on the first differing character (for secrets). */
export function sameSecret(a: string, b: string): bool {
  if (a.length != b.length) return false;
  let diff: i32 = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff == 0;
}

/** The first word of `s` (split at spaces and tabs) and the rest after it, unstripped. */
export function firstWord(s: string): string[] {
  const t = s.trim();
  let end = 0;
  while (end < t.length && t.charCodeAt(end) != 0x20 && t.charCodeAt(end) != 0x09) end++;
  return [t.substring(0, end), t.substring(end)];
}
