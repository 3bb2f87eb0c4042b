//! bodyrewrite: replace substrings in request and response bodies. The config
//! is JSON, rules applied in order, each replacing every occurrence:
//!
//!     {"request":  [{"from": "colour", "to": "color"}],
//!      "response": [{"from": "secret", "to": "******"}]}
//!
//! With request rules the request body is buffered (buffer_request: the app
//! still gets it when nothing matched) and replaced when a rule matched; with
//! response rules the response is buffered (buffer_response) and rewritten in
//! handle_response. Bodies with a content-encoding (compressed) are left alone.
//! The host sets content-length to the new length. Same behaviour as
//! guests/go/bodyrewrite.
//!
//! A bad config is logged at ERROR and every request traps (the client gets a 500).

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, onResponse);
}

const Rule = struct { from: []const u8, to: []const u8 };
const Config = struct { request: []const Rule = &.{}, response: []const Rule = &.{} };

var parsed: ?Config = null;

/// The config, parsed on the first request of the instance (it never changes).
fn rules() Config {
    if (parsed) |c| return c;
    const raw = hw.config();
    const c: Config = if (std.mem.trim(u8, raw, " \t\r\n").len == 0)
        .{}
    else
        std.json.parseFromSliceLeaky(Config, std.heap.wasm_allocator, raw, .{}) catch |err| {
            hw.log(.err, hw.format("bodyrewrite: bad JSON config: {s}", .{@errorName(err)}));
            @panic("bad config");
        };
    for ([_][]const Rule{ c.request, c.response }) |list| {
        for (list) |rule| if (rule.from.len == 0) {
            hw.log(.err, "bodyrewrite: bad JSON config: a rule has an empty \"from\"");
            @panic("bad config");
        };
    }
    parsed = c;
    return c;
}

/// Apply `list` to `body` in the request arena; null when no rule matched.
fn rewrite(body: []const u8, list: []const Rule) ?[]const u8 {
    var out = body;
    var changed = false;
    for (list) |rule| {
        if (std.mem.indexOf(u8, out, rule.from) == null) continue;
        out = std.mem.replaceOwned(u8, hw.allocator(), out, rule.from, rule.to) catch @panic("out of memory");
        changed = true;
    }
    return if (changed) out else null;
}

fn encoded(kind: hw.HeaderKind) bool {
    const enc = std.mem.trim(u8, hw.header(kind, "content-encoding") orelse "", " \t");
    return enc.len > 0 and !std.ascii.eqlIgnoreCase(enc, "identity");
}

fn onRequest() hw.Next {
    const c = rules();
    if (c.request.len > 0 and !encoded(.request)) {
        _ = hw.enableFeatures(hw.feature.buffer_request);
        if (rewrite(hw.readBodyAll(.request), c.request)) |body| hw.writeBody(.request, body);
    }
    if (c.response.len > 0) _ = hw.enableFeatures(hw.feature.buffer_response);
    return .proceed;
}

fn onResponse(_: u32, is_error: bool) void {
    const c = rules();
    if (is_error or c.response.len == 0 or encoded(.response)) return;
    if (rewrite(hw.readBodyAll(.response), c.response)) |body| hw.writeBody(.response, body);
}
