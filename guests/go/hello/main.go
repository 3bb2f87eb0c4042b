// hello: answers GET /hello itself, and tags every other response.
package main

import "http-wasm-asgi/guests/httpwasm"

func main() {}

//go:wasmexport handle_request
func handleRequest() uint64 {
	name := string(httpwasm.Config()) // the guest's config, e.g. config=b"Go"
	if name == "" {
		name = "world"
	}
	if httpwasm.Request.Method() == "GET" && httpwasm.Request.URI() == "/hello" {
		httpwasm.Response.SetHeader("content-type", "text/plain")
		httpwasm.Response.Body.WriteString("hello, " + name + "\n")
		return httpwasm.Stop // the app is not called
	}
	httpwasm.Response.SetHeader("x-hello", name)
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}
