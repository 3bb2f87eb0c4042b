// redact: remove the headers named in the config (one per line) from the
// request before the app sees it, and from the app's response before the
// client does (buffering the response of each request to get the chance).
package main

import "http-wasm-asgi/guests/httpwasm"

func main() {}

//go:wasmexport handle_request
func handleRequest() uint64 {
	for _, name := range httpwasm.ConfigLines() {
		httpwasm.Request.RemoveHeader(name)
	}
	httpwasm.EnableFeatures(httpwasm.BufferResponse)
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {
	for _, name := range httpwasm.ConfigLines() {
		httpwasm.Response.RemoveHeader(name)
	}
}
