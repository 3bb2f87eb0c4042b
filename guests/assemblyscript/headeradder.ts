// headeradder: add headers from config lines `<request|response> <name> <value>`:
//
//     request x-a 1           the app sees x-a: 1
//     response x-b two words  the client sees x-b: two words
//
// The value is the rest of the line. Response headers are added before the app runs, so no
// buffering is needed.

import * as hw from "./httpwasm";
export { handle_request, handle_response } from "./httpwasm";

function onRequest(): u64 {
  const lines = hw.configLines();
  for (let i = 0; i < lines.length; i++) {
    const place = hw.firstWord(lines[i]);
    const name = hw.firstWord(place[1]);
    if (name[0].length == 0) continue;
    if (place[0] == "request") hw.addHeader(hw.HeaderKind.Request, name[0], name[1].trim());
    else if (place[0] == "response") hw.addHeader(hw.HeaderKind.Response, name[0], name[1].trim());
  }
  return hw.NEXT;
}

hw.handlers(onRequest);
