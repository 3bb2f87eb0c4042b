//! trailers: reads and edits the app's response trailers, where the server can
//! send them (ASGI `http.response.trailers`, e.g. Hypercorn over HTTP/2).
//! Config lines, applied in order in handle_response:
//!
//!     set x-status ok      set a trailer (replaces every value of it)
//!     add x-added one      add a value
//!     remove x-drop        remove a trailer
//!
//! handle_request enables buffer_response and trailers, and sets the response
//! header `x-trailers: granted`, or `unsupported` when the host did not grant
//! trailers (then nothing else happens: trailer writes would trap). When
//! granted, handle_response first sets the response header `x-app-trailers` to
//! the app's trailers as read, `name=value` joined with ", ", then edits them.

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, onResponse);
}

var granted = false;

fn onRequest() hw.Next {
    const wanted = hw.feature.buffer_response | hw.feature.trailers;
    granted = hw.enableFeatures(wanted) & wanted == wanted;
    hw.setHeader(.response, "x-trailers", if (granted) "granted" else "unsupported");
    return .proceed;
}

fn onResponse(_: u32, is_error: bool) void {
    if (!granted or is_error) return;
    hw.setHeader(.response, "x-app-trailers", appTrailers());
    var lines = hw.configLines();
    while (lines.next()) |line| {
        var words = std.mem.tokenizeAny(u8, line, " \t");
        const op = words.next() orelse continue;
        const name = words.next() orelse continue;
        const value = std.mem.trim(u8, words.rest(), " \t");
        if (std.mem.eql(u8, op, "set")) {
            hw.setHeader(.response_trailers, name, value);
        } else if (std.mem.eql(u8, op, "add")) {
            hw.addHeader(.response_trailers, name, value);
        } else if (std.mem.eql(u8, op, "remove")) {
            hw.removeHeader(.response_trailers, name);
        }
    }
}

/// The app's response trailers, `name=value` joined with ", " (names in the order the host lists them).
fn appTrailers() []const u8 {
    var out: std.ArrayList(u8) = .empty;
    const a = hw.allocator();
    var names = hw.headerNames(.response_trailers).iterator();
    while (names.next()) |name| {
        var values = hw.headerValues(.response_trailers, name).iterator();
        while (values.next()) |value| {
            if (out.items.len > 0) out.appendSlice(a, ", ") catch @panic("out of memory");
            out.appendSlice(a, name) catch @panic("out of memory");
            out.append(a, '=') catch @panic("out of memory");
            out.appendSlice(a, value) catch @panic("out of memory");
        }
    }
    return out.items;
}
