// accesslog: log "METHOD URI STATUS" at INFO for every request, once the
// app has answered (the response is buffered so its status is known).
package main

import (
	"strconv"

	"http-wasm-asgi/guests/httpwasm"
)

func main() {}

// What the request looked like when it came in: the app may see it rewritten.
var method, uri string

//go:wasmexport handle_request
func handleRequest() uint64 {
	if !httpwasm.LogEnabled(httpwasm.LogInfo) {
		return httpwasm.Continue
	}
	method = httpwasm.Request.Method()
	uri = httpwasm.Request.URI()
	httpwasm.EnableFeatures(httpwasm.BufferResponse)
	return httpwasm.ContinueWith(1)
}

//go:wasmexport handle_response
func handleResponse(logging, isError uint32) {
	if logging == 0 {
		return
	}
	outcome := "error"
	if isError == 0 {
		outcome = strconv.FormatUint(uint64(httpwasm.Response.Status()), 10)
	}
	httpwasm.Log(httpwasm.LogInfo, method+" "+uri+" "+outcome)
}
