//! The Zig conformance guest: runs the checks of the conformance cases
//! (http_wasm_asgi/conformance_cases.json) from the guest side. The case
//! comes from the request header `x-httpwasm-test-id`; the verdict goes out
//! as the response header `x-conformance-result: pass` or `fail: <reason>`.
//!
//! Byte-level checks (buf_limit, count_len, NUL layout) call `hw.abi` directly;
//! everything else goes through the typed library.

const std = @import("std");
const hw = @import("httpwasm.zig");
const abi = hw.abi;

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, onResponse);
}

/// The config every conformance guest is given (the cases' "config").
const expected_config = "{\"name\":\"conformance\",\"answer\":42}";

const result_header = "x-conformance-result";

/// The case ids of the conformance cases, spelled exactly.
const Case = enum {
    @"get_config/bytes",
    @"log/levels",
    @"enable_features/request",
    @"enable_features/trailers_unsupported",
    @"enable_features/trailers_supported",
    @"get_method/get",
    @"get_method/post",
    set_method,
    @"get_uri/encoded",
    @"get_uri/root",
    @"set_uri/path_and_query",
    @"set_uri/drops_query",
    get_protocol_version,
    @"get_protocol_version/http2",
    get_source_addr,
    @"buf_limit/too_small",
    @"get_header_names/lowercase",
    @"get_header_values/single",
    @"get_header_values/multi",
    @"get_header_values/case_insensitive",
    @"get_header_values/missing",
    @"set_header_value/request",
    @"add_header_value/request",
    @"remove_header/request",
    @"set_header_value/response_before_next",
    @"response_headers/after_next",
    @"read_body/request",
    @"write_body/request",
    @"read_body/response",
    @"write_body/response",
    @"get_status_code/response",
    @"set_status_code/response",
    @"short_circuit/response",
    @"short_circuit/default",
    req_ctx,
};

// --- verdict -----------------------------------------------------------------

/// The first failed check of this request, if any.
var failure: ?[]const u8 = null;

fn fail(comptime fmt: []const u8, args: anytype) void {
    if (failure == null) failure = hw.format(fmt, args);
}

fn expect(ok: bool, what: []const u8) void {
    if (!ok) fail("{s}", .{what});
}

fn expectInt(got: u64, want: u64, comptime what: []const u8) void {
    if (got != want) fail(what ++ " = {d}, want {d}", .{ got, want });
}

fn expectStr(got: []const u8, want: []const u8, comptime what: []const u8) void {
    if (!std.mem.eql(u8, got, want)) fail(what ++ " = '{s}', want '{s}'", .{ printable(got), printable(want) });
}

/// Header values must stay printable: show anything else as '?', and keep it short.
fn printable(bytes: []const u8) []const u8 {
    const shown = bytes[0..@min(bytes.len, 80)];
    const out = hw.allocator().alloc(u8, shown.len) catch @panic("out of memory");
    for (shown, out) |c, *o| o.* = if (c >= 0x20 and c < 0x7f) c else '?';
    return out;
}

fn report() void {
    if (failure) |reason| {
        hw.setHeader(.response, result_header, hw.format("fail: {s}", .{reason}));
    } else {
        hw.setHeader(.response, result_header, "pass");
    }
}

// --- helpers -------------------------------------------------------------------

/// A scratch area the byte-level checks hand to the host.
var probe: [256]u8 = undefined;

fn fillProbe() void {
    @memset(&probe, 0xAA);
}

fn probeUntouched(from: usize) bool {
    for (probe[from..]) |b| if (b != 0xAA) return false;
    return true;
}

fn str(s: []const u8) struct { [*]const u8, u32 } {
    return .{ s.ptr, @intCast(s.len) };
}

/// get_header_values(kind, name) into `probe`; checks the packed result and the exact bytes.
fn expectRawValues(kind: hw.HeaderKind, name: []const u8, count: u32, bytes: []const u8) void {
    fillProbe();
    const n = str(name);
    const r = abi.get_header_values(@intFromEnum(kind), n[0], n[1], &probe, probe.len);
    expectInt(r, @as(u64, count) << 32 | bytes.len, "get_header_values count_len");
    if (failure != null) return;
    expectStr(probe[0..bytes.len], bytes, "get_header_values bytes");
    expect(probeUntouched(bytes.len), "get_header_values wrote past its length");
}

fn expectValues(kind: hw.HeaderKind, name: []const u8, want: []const []const u8) void {
    const values = hw.headerValues(kind, name);
    expectInt(values.count, want.len, "value count");
    var it = values.iterator();
    for (want) |w| {
        const got = it.next() orelse return fail("missing value '{s}'", .{w});
        expectStr(got, w, "value");
    }
}

// --- handle_request --------------------------------------------------------------

var current: ?Case = null;

fn onRequest() hw.Next {
    failure = null;
    current = null;
    const id = hw.header(.request, "x-httpwasm-test-id") orelse "";
    const case = std.meta.stringToEnum(Case, id) orelse {
        failure = "unknown case";
        report();
        return .stop;
    };
    current = case;
    const next = runRequest(case);
    // Cases that buffer the response report from handle_response.
    if (!next.next or !buffersResponse(case)) report();
    return next;
}

fn buffersResponse(case: Case) bool {
    return switch (case) {
        .@"response_headers/after_next",
        .@"read_body/response",
        .@"write_body/response",
        .@"get_status_code/response",
        .@"set_status_code/response",
        .req_ctx,
        => true,
        else => false,
    };
}

fn runRequest(case: Case) hw.Next {
    switch (case) {
        .@"get_config/bytes" => {
            fillProbe();
            const len = abi.get_config(&probe, 0);
            expectInt(len, expected_config.len, "get_config(buf, 0)");
            expect(probeUntouched(0), "get_config(buf, 0) wrote to the buffer");
            const short = abi.get_config(&probe, @intCast(expected_config.len - 1));
            expectInt(short, expected_config.len, "get_config(buf, len-1)");
            expect(probeUntouched(0), "get_config(buf, len-1) wrote to the buffer");
            const full = abi.get_config(&probe, probe.len);
            expectInt(full, expected_config.len, "get_config(buf, 256)");
            if (failure == null) expectStr(probe[0..full], expected_config, "config");
            expect(probeUntouched(full), "get_config wrote past the config");
        },
        .@"log/levels" => {
            inline for ([_]hw.LogLevel{ .debug, .info, .warn, .err }) |level| {
                hw.log(level, std.fmt.comptimePrint("conformance log {d}", .{@intFromEnum(level)}));
            }
            expectInt(abi.log_enabled(-1), 0, "log_enabled(-1)");
            expectInt(abi.log_enabled(0), 1, "log_enabled(0)");
            expectInt(abi.log_enabled(2), 1, "log_enabled(2)");
            expectInt(abi.log_enabled(3), 0, "log_enabled(3)");
        },
        .@"enable_features/request" => {
            expectInt(hw.enableFeatures(0), 0, "enable_features(0)");
            expectInt(hw.enableFeatures(hw.feature.buffer_request), 1, "enable_features(1)");
            expectInt(hw.enableFeatures(hw.feature.buffer_response), 3, "then enable_features(2)");
        },
        .@"enable_features/trailers_unsupported" => {
            const got = hw.enableFeatures(hw.feature.trailers);
            if (got & hw.feature.trailers != 0) fail("enable_features(4) = {d} has the trailers bit", .{got});
            expectInt(abi.get_header_names(2, &probe, probe.len), 0, "get_header_names(request trailers)");
            expectInt(abi.get_header_names(3, &probe, probe.len), 0, "get_header_names(response trailers)");
        },
        .@"enable_features/trailers_supported" => {
            const got = hw.enableFeatures(hw.feature.trailers);
            if (got & hw.feature.trailers == 0) fail("enable_features(4) = {d} lacks the trailers bit", .{got});
            expectInt(abi.get_header_names(2, &probe, probe.len), 0, "get_header_names(request trailers)");
            expectInt(abi.get_header_names(3, &probe, probe.len), 0, "get_header_names(response trailers)");
        },
        .@"get_method/get" => expectStr(hw.method(), "GET", "get_method"),
        .@"get_method/post" => expectStr(hw.method(), "POST", "get_method"),
        .set_method => {
            hw.setMethod("PUT");
            expectStr(hw.method(), "PUT", "get_method after set_method");
        },
        .@"get_uri/encoded" => expectStr(hw.uri(), "/a%20b/c%2Fd?x=1&y=%2F", "get_uri"),
        .@"get_uri/root" => expectStr(hw.uri(), "/", "get_uri"),
        .@"set_uri/path_and_query" => {
            hw.setUri("/new/p%2Fq?z=9");
            expectStr(hw.uri(), "/new/p%2Fq?z=9", "get_uri after set_uri");
        },
        .@"set_uri/drops_query" => {
            hw.setUri("/plain");
            expectStr(hw.uri(), "/plain", "get_uri after set_uri");
        },
        .get_protocol_version => expectStr(hw.protocolVersion(), "HTTP/1.1", "get_protocol_version"),
        .@"get_protocol_version/http2" => expectStr(hw.protocolVersion(), "HTTP/2.0", "get_protocol_version"),
        .get_source_addr => checkSourceAddr(hw.sourceAddr()),
        .@"buf_limit/too_small" => {
            fillProbe();
            expectInt(abi.get_uri(&probe, 5), 11, "get_uri(buf, 5)");
            expect(probeUntouched(0), "get_uri(buf, 5) wrote to the buffer");
            expectInt(abi.get_uri(&probe, 0), 11, "get_uri(buf, 0)");
            expect(probeUntouched(0), "get_uri(buf, 0) wrote to the buffer");
        },
        .@"get_header_names/lowercase" => checkHeaderNames(),
        .@"get_header_values/single" => expectRawValues(.request, "x-single", 1, "01234567\x00"),
        .@"get_header_values/multi" => expectRawValues(.request, "x-multi", 2, "a=b\x00c=d\x00"),
        .@"get_header_values/case_insensitive" => expectRawValues(.request, "X-MIXED", 1, "v\x00"),
        .@"get_header_values/missing" => expectRawValues(.request, "x-not-there", 0, ""),
        .@"set_header_value/request" => {
            hw.setHeader(.request, "x-set", "new");
            expectValues(.request, "x-set", &.{"new"});
        },
        .@"add_header_value/request" => {
            hw.addHeader(.request, "x-add", "second");
            expectValues(.request, "x-add", &.{ "first", "second" });
        },
        .@"remove_header/request" => {
            hw.removeHeader(.request, "x-remove");
            const n = str("x-remove");
            expectInt(abi.get_header_values(0, n[0], n[1], &probe, probe.len), 0, "get_header_values after remove");
        },
        .@"set_header_value/response_before_next" => hw.setHeader(.response, "x-from-guest", "yes"),
        .@"read_body/request" => {
            _ = hw.enableFeatures(hw.feature.buffer_request);
            checkRequestBody(5);
        },
        .@"write_body/request" => {
            hw.writeBody(.request, "re");
            hw.writeBody(.request, "written");
        },
        .@"response_headers/after_next",
        .@"read_body/response",
        .@"write_body/response",
        .@"get_status_code/response",
        .@"set_status_code/response",
        => _ = hw.enableFeatures(hw.feature.buffer_response),
        .@"short_circuit/response" => {
            hw.setStatusCode(401);
            hw.setHeader(.response, "www-authenticate", "Basic");
            hw.writeBody(.response, "denied");
            return .stop;
        },
        .@"short_circuit/default" => return .stop,
        .req_ctx => {
            _ = hw.enableFeatures(hw.feature.buffer_response);
            return .{ .next = true, .ctx = 42 };
        },
    }
    return .proceed;
}

fn checkSourceAddr(addr: []const u8) void {
    const prefix = "127.0.0.1:";
    if (!std.mem.startsWith(u8, addr, prefix)) return fail("get_source_addr = '{s}'", .{printable(addr)});
    const port = addr[prefix.len..];
    const digits = port.len >= 1 and port.len <= 5 and for (port) |c| {
        if (!std.ascii.isDigit(c)) break false;
    } else true;
    if (!digits) fail("get_source_addr port = '{s}'", .{printable(port)});
}

fn checkHeaderNames() void {
    fillProbe();
    const r = abi.get_header_names(0, &probe, probe.len);
    const count = hw.high(r);
    const len = hw.low(r);
    if (len == 0 or len > probe.len) return fail("get_header_names len = {d}", .{len});
    const written = probe[0..len];
    expect(written[len - 1] == 0, "get_header_names: last name not NUL-terminated");
    expect(probeUntouched(len), "get_header_names wrote past its length");
    expectInt(count, std.mem.count(u8, written, "\x00"), "get_header_names count vs NULs");
    var a = false;
    var b = false;
    var it = (hw.List{ .count = count, .bytes = written }).iterator();
    while (it.next()) |name| {
        for (name) |c| if (std.ascii.isUpper(c)) return fail("header name '{s}' is not lowercase", .{printable(name)});
        a = a or std.mem.eql(u8, name, "x-case-a");
        b = b or std.mem.eql(u8, name, "x-case-b");
    }
    expect(a and b, "x-case-a or x-case-b missing from get_header_names");
    // The library's view (read buffer, retry, copy) must be the same list.
    const names = hw.headerNames(.request);
    expectInt(names.count, count, "hw.headerNames count");
    expectStr(names.bytes, written, "hw.headerNames bytes");
}

fn checkResponseBody(body: []const u8) void {
    expect(std.mem.startsWith(u8, body, "{"), "response body does not start with '{'");
    expect(std.mem.indexOf(u8, body, "\"method\"") != null, "response body lacks \"method\"");
}

/// Read the request body to EOF in chunks of at most `chunk_limit`, then check it.
fn checkRequestBody(comptime chunk_limit: u32) void {
    var body: std.ArrayList(u8) = .empty;
    var chunk: [chunk_limit]u8 = undefined;
    var calls: u32 = 0;
    while (calls < 10_000) : (calls += 1) {
        const r = abi.read_body(0, &chunk, chunk_limit);
        const len = hw.low(r);
        if (len > chunk_limit) return fail("read_body returned {d} bytes for a limit of {d}", .{ len, chunk_limit });
        body.appendSlice(hw.allocator(), chunk[0..len]) catch @panic("out of memory");
        if (hw.high(r) == 1) break;
        if (hw.high(r) != 0) return fail("read_body eof = {d}", .{hw.high(r)});
    } else return fail("read_body never reached eof", .{});
    expectStr(body.items, "hello conformance body", "request body");
}

// --- handle_response -------------------------------------------------------------

fn onResponse(ctx: u32, is_error: bool) void {
    const case = current orelse return;
    if (!buffersResponse(case)) return;
    if (is_error) fail("handle_response is_error = 1", .{});
    if (failure == null) switch (case) {
        .@"response_headers/after_next" => {
            expectValues(.response, "content-type", &.{"application/json"});
            expectValues(.response, "x-echo", &.{"1"});
        },
        .@"read_body/response" => checkResponseBody(hw.readBodyAll(.response)),
        .@"write_body/response" => hw.writeBody(.response, "replaced"),
        .@"get_status_code/response" => expectInt(hw.statusCode(), 200, "get_status_code"),
        .@"set_status_code/response" => hw.setStatusCode(418),
        .req_ctx => expectInt(ctx, 42, "handle_response req_ctx"),
        else => unreachable,
    };
    report();
}
