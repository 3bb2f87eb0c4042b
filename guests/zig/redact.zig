//! redact: remove the headers named in the config (one per line) from the
//! request before the app sees it, and from the app's response before the
//! client does (buffering the response of each request to get the chance).

const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, onResponse);
}

fn onRequest() hw.Next {
    removeAll(.request);
    _ = hw.enableFeatures(hw.feature.buffer_response);
    return .proceed;
}

fn onResponse(_: u32, _: bool) void {
    removeAll(.response);
}

fn removeAll(kind: hw.HeaderKind) void {
    var names = hw.configLines();
    while (names.next()) |name| hw.removeHeader(kind, name);
}
