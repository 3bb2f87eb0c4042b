//! headeradder: add headers from config lines `<request|response> <name> <value>`:
//!
//!     request x-a 1           the app sees x-a: 1
//!     response x-b two words  the client sees x-b: two words
//!
//! The value is the rest of the line. Response headers are added before the
//! app runs, so no buffering is needed.

const std = @import("std");
const hw = @import("httpwasm.zig");

pub const panic = hw.panic;

comptime {
    hw.exportHandlers(onRequest, null);
}

fn onRequest() hw.Next {
    var lines = hw.configLines();
    while (lines.next()) |line| {
        var words = std.mem.tokenizeAny(u8, line, " \t");
        const where = words.next() orelse continue;
        const name = words.next() orelse continue;
        const value = std.mem.trim(u8, words.rest(), " \t");
        const kind: hw.HeaderKind = if (std.mem.eql(u8, where, "request"))
            .request
        else if (std.mem.eql(u8, where, "response"))
            .response
        else
            continue;
        hw.addHeader(kind, name, value);
    }
    return .proceed;
}
