// auth: let a request through only with `authorization: Bearer <token>`, where the token is the
// guest's config. Anything else gets 401 with `www-authenticate: Bearer` and never reaches the app.

import * as hw from "./httpwasm";
export { handle_request, handle_response } from "./httpwasm";

function onRequest(): u64 {
  const token = hw.config().trim();
  const given = hw.header(hw.HeaderKind.Request, "authorization");
  // An empty token in the config lets nobody in.
  if (token.length > 0 && given !== null && given.startsWith("Bearer ") &&
      hw.sameSecret(given.substring(7), token)) {
    return hw.NEXT;
  }
  hw.setStatusCode(401);
  hw.setHeader(hw.HeaderKind.Response, "www-authenticate", "Bearer");
  return hw.STOP;
}

hw.handlers(onRequest);
