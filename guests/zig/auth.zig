//! auth: let a request through only with `authorization: Bearer <token>`,
//! where the token is the guest's config. Anything else gets 401 with
//! `www-authenticate: Bearer` and never reaches the app.

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, null);
}

fn onRequest() hw.Next {
    const token = std.mem.trim(u8, hw.config(), " \t\r\n");
    const given = hw.header(.request, "authorization") orelse "";
    const prefix = "Bearer ";
    // An empty token in the config lets nobody in.
    if (token.len > 0 and std.mem.startsWith(u8, given, prefix) and sameSecret(given[prefix.len..], token)) {
        return .proceed;
    }
    hw.setStatusCode(401);
    hw.setHeader(.response, "www-authenticate", "Bearer");
    return .stop;
}

/// Compare without returning early on the first differing byte.
fn sameSecret(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    var diff: u8 = 0;
    for (a, b) |x, y| diff |= x ^ y;
    return diff == 0;
}
