//! hello: answers GET /hello itself, and tags every other response.

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, null);
}

fn onRequest() hw.Next {
    const config = hw.config(); // the guest's config, e.g. config=b"Zig"
    const name = if (config.len > 0) config else "world";
    if (std.mem.eql(u8, hw.method(), "GET") and std.mem.eql(u8, hw.uri(), "/hello")) {
        hw.setHeader(.response, "content-type", "text/plain");
        hw.writeBody(.response, hw.format("hello, {s}\n", .{name}));
        return .stop; // the app is not called
    }
    hw.setHeader(.response, "x-hello", name);
    return .proceed;
}
