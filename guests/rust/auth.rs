//! auth: let a request through only with `authorization: Bearer <token>`, where the token is the
//! guest's config. Anything else gets 401 with `www-authenticate: Bearer` and never reaches the app.

#![no_std]

#[macro_use]
mod httpwasm;

use httpwasm::{HeaderKind, Next};

export_handlers!(on_request);

fn on_request() -> Next {
    let token = httpwasm::trim(httpwasm::config());
    let given = httpwasm::header(HeaderKind::Request, b"authorization").unwrap_or(b"");
    // An empty token in the config lets nobody in.
    if let Some(secret) = given.strip_prefix(b"Bearer ") {
        if !token.is_empty() && httpwasm::same_secret(secret, token) {
            return Next::PROCEED;
        }
    }
    httpwasm::set_status_code(401);
    httpwasm::set_header(HeaderKind::Response, b"www-authenticate", b"Bearer");
    Next::STOP
}
