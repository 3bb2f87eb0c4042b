//! router: redirects and prefix rewrites from config lines, first match wins.
//!
//!     redirect /old /new      GET /old?x=1   -> 302, location: /new?x=1
//!     rewrite /api/ /v2/      GET /api/u?x=1 -> the app sees /v2/u?x=1
//!
//! A redirect matches the exact path; a rewrite matches a path prefix. Both keep the query.

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, null);
}

fn onRequest() hw.Next {
    const uri = hw.splitUri(hw.uri());
    var lines = hw.configLines();
    while (lines.next()) |line| {
        var words = std.mem.tokenizeAny(u8, line, " \t");
        const action = words.next() orelse continue;
        const from = words.next() orelse continue;
        const to = words.next() orelse continue;
        if (std.mem.eql(u8, action, "redirect") and std.mem.eql(u8, uri.path, from)) {
            hw.setStatusCode(302);
            hw.setHeader(.response, "location", withQuery(to, "", uri.query));
            return .stop;
        }
        if (std.mem.eql(u8, action, "rewrite") and std.mem.startsWith(u8, uri.path, from)) {
            hw.setUri(withQuery(to, uri.path[from.len..], uri.query));
            return .proceed;
        }
    }
    return .proceed;
}

fn withQuery(prefix: []const u8, rest: []const u8, query: ?[]const u8) []const u8 {
    if (query) |q| return hw.format("{s}{s}?{s}", .{ prefix, rest, q });
    return hw.format("{s}{s}", .{ prefix, rest });
}
