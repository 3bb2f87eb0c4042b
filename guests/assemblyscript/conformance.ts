// The AssemblyScript conformance guest: runs the checks of the conformance cases
// (http_wasm_asgi/devkit/conformance_cases.json) from the guest side. The case comes from the request
// header `x-httpwasm-test-id`; the verdict goes out as the response header
// `x-conformance-result: pass` or `fail: <reason>`.
//
// Byte-level checks (buf_limit, count_len, NUL layout) call `hw.abi` directly; everything else goes
// through the typed library.

import * as hw from "./httpwasm";
import { abi, feature, BodyKind, HeaderKind, LogLevel } from "./httpwasm";
export { handle_request, handle_response } from "./httpwasm";

/** The config every conformance guest is given (the cases' "config"). */
const expectedConfig = "{\"name\":\"conformance\",\"answer\":42}";

const RESULT_HEADER = "x-conformance-result";

// --- verdict ---------------------------------------------------------------------------------------------

/** The first failed check of this request ("" when none yet). Reset by every request. */
let failure = "";

function fail(reason: string): void {
  if (failure.length == 0) failure = reason;
}

function expect(ok: bool, what: string): void {
  if (!ok) fail(what);
}

function expectInt(got: u64, want: u64, what: string): void {
  if (got != want) fail(what + " = " + got.toString() + ", want " + want.toString());
}

function expectStr(got: string, want: string, what: string): void {
  if (got != want) fail(what + " = '" + printable(got) + "', want '" + printable(want) + "'");
}

/** Header values must stay printable: show anything else as '?', and keep it short. */
function printable(s: string): string {
  let out = "";
  for (let i = 0; i < s.length && i < 80; i++) {
    const c = s.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : "?";
  }
  return out;
}

function report(): void {
  hw.setHeader(HeaderKind.Response, RESULT_HEADER, failure.length > 0 ? "fail: " + failure : "pass");
}

// --- helpers ------------------------------------------------------------------------------------------

/** A scratch area the byte-level checks hand to the host. */
const PROBE_SIZE: u32 = 256;
const probe: usize = memory.data(PROBE_SIZE, 8);

function fillProbe(): void {
  memory.fill(probe, 0xaa, PROBE_SIZE);
}

function probeUntouched(from: u32): bool {
  for (let i = from; i < PROBE_SIZE; i++) if (load<u8>(probe + i) != 0xaa) return false;
  return true;
}

/** Bytes of the probe as a string of byte values (one character per byte, for comparisons). */
function probeBytes(len: u32): string {
  let out = "";
  for (let i: u32 = 0; i < len; i++) out += String.fromCharCode(load<u8>(probe + i));
  return out;
}

/** get_header_values(kind, name) into the probe; checks the packed result and the exact bytes. */
function expectRawValues(kind: HeaderKind, name: string, count: u32, bytes: string): void {
  fillProbe();
  const n = hw.utf8(name);
  const r = abi.get_header_values(kind, changetype<usize>(n), n.byteLength, probe, PROBE_SIZE);
  expectInt(r, (<u64>count << 32) | <u64>bytes.length, "get_header_values count_len");
  if (failure.length > 0) return;
  expectStr(probeBytes(bytes.length), bytes, "get_header_values bytes");
  expect(probeUntouched(bytes.length), "get_header_values wrote past its length");
}

function expectValues(kind: HeaderKind, name: string, want: string[]): void {
  const values = hw.headerValues(kind, name);
  expectInt(values.length, want.length, "value count");
  for (let i = 0; i < want.length; i++) {
    if (i >= values.length) return fail("missing value '" + want[i] + "'");
    expectStr(values[i], want[i], "value");
  }
}

// --- handle_request ----------------------------------------------------------------------------------------

/** The case ids of the conformance cases, spelled exactly (built per request: the heap is reset). */
function caseIds(): string[] {
  return [
    "get_config/bytes", "log/levels", "enable_features/request", "enable_features/trailers_unsupported",
    "enable_features/trailers_supported", "get_method/get", "get_method/post", "set_method", "get_uri/encoded",
    "get_uri/root", "set_uri/path_and_query", "set_uri/drops_query", "get_protocol_version",
    "get_protocol_version/http2", "get_source_addr", "buf_limit/too_small", "get_header_names/lowercase",
    "get_header_values/single", "get_header_values/multi", "get_header_values/case_insensitive",
    "get_header_values/missing", "set_header_value/request", "add_header_value/request",
    "remove_header/request", "set_header_value/response_before_next", "response_headers/after_next",
    "read_body/request", "write_body/request", "read_body/response", "write_body/response",
    "get_status_code/response", "set_status_code/response", "short_circuit/response", "short_circuit/default",
    "req_ctx",
  ];
}

/** Cases that buffer the response report from handle_response. */
function buffersResponse(id: string): bool {
  return id == "response_headers/after_next" || id == "read_body/response" || id == "write_body/response" ||
    id == "get_status_code/response" || id == "set_status_code/response" || id == "req_ctx";
}

/** The case of this request ("" when unknown): a heap string, valid until the next request. */
let current = "";

function onRequest(): u64 {
  failure = "";
  current = "";
  const given = hw.header(HeaderKind.Request, "x-httpwasm-test-id");
  const id = given === null ? "" : given;
  const ids = caseIds();
  if (!ids.includes(id)) {
    failure = "unknown case";
    report();
    return hw.STOP;
  }
  current = id;
  const next = runRequest(id);
  if ((next & 1) == 0 || !buffersResponse(id)) report();
  return next;
}

function runRequest(id: string): u64 {
  if (id == "get_config/bytes") {
    const want: u32 = expectedConfig.length;
    fillProbe();
    expectInt(abi.get_config(probe, 0), want, "get_config(buf, 0)");
    expect(probeUntouched(0), "get_config(buf, 0) wrote to the buffer");
    expectInt(abi.get_config(probe, want - 1), want, "get_config(buf, len-1)");
    expect(probeUntouched(0), "get_config(buf, len-1) wrote to the buffer");
    const full = abi.get_config(probe, PROBE_SIZE);
    expectInt(full, want, "get_config(buf, 256)");
    if (failure.length == 0) expectStr(probeBytes(full), expectedConfig, "config");
    expect(probeUntouched(full), "get_config wrote past the config");
    expectStr(hw.config(), expectedConfig, "hw.config()");
  } else if (id == "log/levels") {
    hw.log(LogLevel.Debug, "conformance log -1");
    hw.log(LogLevel.Info, "conformance log 0");
    hw.log(LogLevel.Warn, "conformance log 1");
    hw.log(LogLevel.Error, "conformance log 2");
    expectInt(abi.log_enabled(-1), 0, "log_enabled(-1)");
    expectInt(abi.log_enabled(0), 1, "log_enabled(0)");
    expectInt(abi.log_enabled(2), 1, "log_enabled(2)");
    expectInt(abi.log_enabled(3), 0, "log_enabled(3)");
    expect(hw.logEnabled(LogLevel.Info), "hw.logEnabled(Info)");
  } else if (id == "enable_features/request") {
    expectInt(hw.enableFeatures(0), 0, "enable_features(0)");
    expectInt(hw.enableFeatures(feature.BUFFER_REQUEST), 1, "enable_features(1)");
    expectInt(hw.enableFeatures(feature.BUFFER_RESPONSE), 3, "then enable_features(2)");
  } else if (id == "enable_features/trailers_unsupported" || id == "enable_features/trailers_supported") {
    const supported = id == "enable_features/trailers_supported";
    const got = hw.enableFeatures(feature.TRAILERS);
    if (((got & feature.TRAILERS) != 0) != supported) {
      fail("enable_features(4) = " + got.toString() + (supported ? " lacks" : " has") + " the trailers bit");
    }
    expectInt(abi.get_header_names(2, probe, PROBE_SIZE), 0, "get_header_names(request trailers)");
    expectInt(abi.get_header_names(3, probe, PROBE_SIZE), 0, "get_header_names(response trailers)");
  } else if (id == "get_method/get") {
    expectStr(hw.method(), "GET", "get_method");
  } else if (id == "get_method/post") {
    expectStr(hw.method(), "POST", "get_method");
  } else if (id == "set_method") {
    hw.setMethod("PUT");
    expectStr(hw.method(), "PUT", "get_method after set_method");
  } else if (id == "get_uri/encoded") {
    expectStr(hw.uri(), "/a%20b/c%2Fd?x=1&y=%2F", "get_uri");
  } else if (id == "get_uri/root") {
    expectStr(hw.uri(), "/", "get_uri");
  } else if (id == "set_uri/path_and_query") {
    hw.setUri("/new/p%2Fq?z=9");
    expectStr(hw.uri(), "/new/p%2Fq?z=9", "get_uri after set_uri");
  } else if (id == "set_uri/drops_query") {
    hw.setUri("/plain");
    expectStr(hw.uri(), "/plain", "get_uri after set_uri");
  } else if (id == "get_protocol_version") {
    expectStr(hw.protocolVersion(), "HTTP/1.1", "get_protocol_version");
  } else if (id == "get_protocol_version/http2") {
    expectStr(hw.protocolVersion(), "HTTP/2.0", "get_protocol_version");
  } else if (id == "get_source_addr") {
    checkSourceAddr(hw.sourceAddr());
  } else if (id == "buf_limit/too_small") {
    fillProbe();
    expectInt(abi.get_uri(probe, 5), 11, "get_uri(buf, 5)");
    expect(probeUntouched(0), "get_uri(buf, 5) wrote to the buffer");
    expectInt(abi.get_uri(probe, 0), 11, "get_uri(buf, 0)");
    expect(probeUntouched(0), "get_uri(buf, 0) wrote to the buffer");
  } else if (id == "get_header_names/lowercase") {
    checkHeaderNames();
  } else if (id == "get_header_values/single") {
    expectRawValues(HeaderKind.Request, "x-single", 1, "01234567\0");
  } else if (id == "get_header_values/multi") {
    expectRawValues(HeaderKind.Request, "x-multi", 2, "a=b\0c=d\0");
  } else if (id == "get_header_values/case_insensitive") {
    expectRawValues(HeaderKind.Request, "X-MIXED", 1, "v\0");
  } else if (id == "get_header_values/missing") {
    expectRawValues(HeaderKind.Request, "x-not-there", 0, "");
  } else if (id == "set_header_value/request") {
    hw.setHeader(HeaderKind.Request, "x-set", "new");
    expectValues(HeaderKind.Request, "x-set", ["new"]);
  } else if (id == "add_header_value/request") {
    hw.addHeader(HeaderKind.Request, "x-add", "second");
    expectValues(HeaderKind.Request, "x-add", ["first", "second"]);
  } else if (id == "remove_header/request") {
    hw.removeHeader(HeaderKind.Request, "x-remove");
    const n = hw.utf8("x-remove");
    expectInt(abi.get_header_values(0, changetype<usize>(n), n.byteLength, probe, PROBE_SIZE), 0,
      "get_header_values after remove");
  } else if (id == "set_header_value/response_before_next") {
    hw.setHeader(HeaderKind.Response, "x-from-guest", "yes");
  } else if (id == "read_body/request") {
    hw.enableFeatures(feature.BUFFER_REQUEST);
    checkRequestBody();
  } else if (id == "write_body/request") {
    hw.writeBody(BodyKind.Request, "re");
    hw.writeBody(BodyKind.Request, "written");
  } else if (buffersResponse(id) && id != "req_ctx") {
    hw.enableFeatures(feature.BUFFER_RESPONSE);
  } else if (id == "short_circuit/response") {
    hw.setStatusCode(401);
    hw.setHeader(HeaderKind.Response, "www-authenticate", "Basic");
    hw.writeBody(BodyKind.Response, "denied");
    return hw.STOP;
  } else if (id == "short_circuit/default") {
    return hw.STOP;
  } else if (id == "req_ctx") {
    hw.enableFeatures(feature.BUFFER_RESPONSE);
    return hw.nextWithCtx(42);
  } else {
    fail("case '" + id + "' has no checks");
  }
  return hw.NEXT;
}

function checkSourceAddr(addr: string): void {
  const prefix = "127.0.0.1:";
  if (!addr.startsWith(prefix)) return fail("get_source_addr = '" + printable(addr) + "'");
  const port = addr.substring(prefix.length);
  let digits = port.length >= 1 && port.length <= 5;
  for (let i = 0; i < port.length; i++) {
    const c = port.charCodeAt(i);
    digits = digits && c >= 0x30 && c <= 0x39;
  }
  if (!digits) fail("get_source_addr port = '" + printable(port) + "'");
}

function checkHeaderNames(): void {
  fillProbe();
  const r = abi.get_header_names(0, probe, PROBE_SIZE);
  const count = hw.high(r);
  const len = hw.low(r);
  if (len == 0 || len > PROBE_SIZE) return fail("get_header_names len = " + len.toString());
  expect(load<u8>(probe + len - 1) == 0, "get_header_names: last name not NUL-terminated");
  expect(probeUntouched(len), "get_header_names wrote past its length");
  let nuls: u32 = 0;
  for (let i: u32 = 0; i < len; i++) if (load<u8>(probe + i) == 0) nuls++;
  expectInt(count, nuls, "get_header_names count vs NULs");
  const written = probeBytes(len);
  const names = written.split("\0");
  names.pop(); // after the last NUL
  let a = false;
  let b = false;
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    if (name != name.toLowerCase()) return fail("header name '" + printable(name) + "' is not lowercase");
    a = a || name == "x-case-a";
    b = b || name == "x-case-b";
  }
  expect(a && b, "x-case-a or x-case-b missing from get_header_names");
  // The library's view (read buffer, retry, decode) must be the same list.
  const listed = hw.headerNames(HeaderKind.Request);
  expectInt(listed.length, count, "hw.headerNames count");
  expectStr(listed.join("\0") + "\0", written, "hw.headerNames");
}

/** Read the request body to EOF in chunks of at most 5 bytes, then check it. */
function checkRequestBody(): void {
  const limit: u32 = 5;
  let body = "";
  for (let calls = 0; calls < 10000; calls++) {
    fillProbe();
    const r = abi.read_body(0, probe, limit);
    const len = hw.low(r);
    if (len > limit) return fail("read_body returned " + len.toString() + " bytes for a limit of 5");
    body += probeBytes(len);
    if (hw.high(r) == 1) return expectStr(body, "hello conformance body", "request body");
    if (hw.high(r) != 0) return fail("read_body eof = " + hw.high(r).toString());
  }
  fail("read_body never reached eof");
}

function checkResponseBody(body: Uint8Array): void {
  const text = String.UTF8.decode(body.buffer);
  expect(text.startsWith("{"), "response body does not start with '{'");
  expect(text.includes("\"method\""), "response body lacks \"method\"");
}

// --- handle_response ------------------------------------------------------------------------------------------

function onResponse(ctx: u32, isError: bool): void {
  const id = current;
  if (id.length == 0 || !buffersResponse(id)) return;
  if (isError) fail("handle_response is_error = 1");
  if (failure.length == 0) {
    if (id == "response_headers/after_next") {
      expectValues(HeaderKind.Response, "content-type", ["application/json"]);
      expectValues(HeaderKind.Response, "x-echo", ["1"]);
    } else if (id == "read_body/response") {
      checkResponseBody(hw.readBodyAll(BodyKind.Response));
    } else if (id == "write_body/response") {
      hw.writeBody(BodyKind.Response, "replaced");
    } else if (id == "get_status_code/response") {
      expectInt(hw.statusCode(), 200, "get_status_code");
    } else if (id == "set_status_code/response") {
      hw.setStatusCode(418);
    } else if (id == "req_ctx") {
      expectInt(ctx, 42, "handle_response req_ctx");
    }
  }
  report();
}

hw.handlers(onRequest, onResponse);
