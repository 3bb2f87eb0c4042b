// auth: let a request through only with "authorization: Bearer <token>",
// where the token is the guest's config. Anything else gets 401 with
// "www-authenticate: Bearer" and never reaches the app.
package main

import (
	"crypto/subtle"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
)

func main() {}

//go:wasmexport handle_request
func handleRequest() uint64 {
	token := strings.Trim(string(httpwasm.Config()), " \t\r\n")
	given, isBearer := strings.CutPrefix(httpwasm.Request.Header("authorization"), "Bearer ")
	// An empty token in the config lets nobody in.
	if token != "" && isBearer && subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1 {
		return httpwasm.Continue
	}
	httpwasm.Response.SetStatus(401)
	httpwasm.Response.SetHeader("www-authenticate", "Bearer")
	return httpwasm.Stop
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}
