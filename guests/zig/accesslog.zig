//! accesslog: log `METHOD URI STATUS` at INFO for every request, once the
//! app has answered (the response is buffered so its status is known).

const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, onResponse);
}

// What the request looked like when it came in: the app may see it rewritten.
var method: []const u8 = "";
var uri: []const u8 = "";

fn onRequest() hw.Next {
    if (!hw.logEnabled(.info)) return .proceed;
    method = hw.method();
    uri = hw.uri();
    _ = hw.enableFeatures(hw.feature.buffer_response);
    return .{ .next = true, .ctx = 1 };
}

fn onResponse(logging: u32, is_error: bool) void {
    if (logging == 0) return;
    if (is_error) {
        hw.logf(.info, "{s} {s} error", .{ method, uri });
    } else {
        hw.logf(.info, "{s} {s} {d}", .{ method, uri, hw.statusCode() });
    }
}
