/* auth: let a request through only with `authorization: Bearer <token>`, where the token is the
 * guest's config. Anything else gets 401 with `www-authenticate: Bearer` and never reaches the app. */

#include "httpwasm.h"

static hw_next on_request(void) {
    hw_bytes token = hw_trim(hw_config());
    hw_bytes given;
    hw_header(HW_REQUEST, HW_STR("authorization"), &given);
    hw_bytes prefix = HW_STR("Bearer ");
    /* An empty token in the config lets nobody in. */
    if (token.len > 0 && hw_starts_with(given, prefix) &&
        hw_same_secret(hw_slice(given, prefix.len, given.len), token))
        return HW_PROCEED;
    hw_set_status_code(401);
    hw_set_header(HW_RESPONSE, HW_STR("www-authenticate"), HW_STR("Bearer"));
    return HW_STOP;
}

HW_EXPORT_HANDLERS(on_request, 0)
