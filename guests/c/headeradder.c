/* headeradder: add headers from config lines `<request|response> <name> <value>`:
 *
 *     request x-a 1           the app sees x-a: 1
 *     response x-b two words  the client sees x-b: two words
 *
 * The value is the rest of the line. Response headers are added before the app runs, so no
 * buffering is needed. */

#include "httpwasm.h"

static hw_next on_request(void) {
    hw_bytes rest = hw_config(), line;
    while (hw_next_line(&rest, &line)) {
        hw_bytes place = hw_next_word(&line);
        hw_bytes name = hw_next_word(&line);
        if (name.len == 0) continue;
        if (hw_eq(place, HW_STR("request")))
            hw_add_header(HW_REQUEST, name, hw_trim(line));
        else if (hw_eq(place, HW_STR("response")))
            hw_add_header(HW_RESPONSE, name, hw_trim(line));
    }
    return HW_PROCEED;
}

HW_EXPORT_HANDLERS(on_request, 0)
