//! headeradder: add headers from config lines `<request|response> <name> <value>`:
//!
//!     request x-a 1           the app sees x-a: 1
//!     response x-b two words  the client sees x-b: two words
//!
//! The value is the rest of the line. Response headers are added before the app runs, so no
//! buffering is needed.

#![no_std]

#[macro_use]
mod httpwasm;

use httpwasm::{HeaderKind, Next};

export_handlers!(on_request);

fn on_request() -> Next {
    for line in httpwasm::config_lines() {
        let (place, rest) = httpwasm::first_word(line);
        let (name, rest) = httpwasm::first_word(rest);
        if name.is_empty() {
            continue;
        }
        let kind = match place {
            b"request" => HeaderKind::Request,
            b"response" => HeaderKind::Response,
            _ => continue,
        };
        httpwasm::add_header(kind, name, httpwasm::trim(rest));
    }
    Next::PROCEED
}
