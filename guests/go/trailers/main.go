// trailers: reads and edits the app's response trailers, where the server can
// send them (ASGI http.response.trailers, e.g. Hypercorn over HTTP/2). The
// same guest as guests/zig/trailers.zig. Config lines, applied in order in
// handle_response:
//
//	set x-status ok      set a trailer (replaces every value of it)
//	add x-added one      add a value
//	remove x-drop        remove a trailer
//
// handle_request enables buffer_response and trailers, and sets the response
// header "x-trailers: granted", or "unsupported" when the host did not grant
// trailers (then nothing else happens: trailer writes would trap). When
// granted, handle_response first sets the response header x-app-trailers to
// the app's trailers as read, name=value joined with ", ", then edits them.
package main

import (
	"strings"

	"http-wasm-asgi/guests/httpwasm"
)

func main() {}

var granted bool

//go:wasmexport handle_request
func handleRequest() uint64 {
	wanted := httpwasm.BufferResponse | httpwasm.Trailers
	granted = httpwasm.EnableFeatures(wanted)&wanted == wanted
	if granted {
		httpwasm.Response.SetHeader("x-trailers", "granted")
	} else {
		httpwasm.Response.SetHeader("x-trailers", "unsupported")
	}
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {
	if !granted || isError != 0 {
		return
	}
	trailers := httpwasm.Response.Trailers
	var seen []string
	for _, name := range trailers.Names() {
		for _, value := range trailers.Values(name) {
			seen = append(seen, name+"="+value)
		}
	}
	httpwasm.Response.SetHeader("x-app-trailers", strings.Join(seen, ", "))
	for _, line := range httpwasm.ConfigLines() {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		value := strings.Join(fields[2:], " ")
		switch fields[0] {
		case "set":
			trailers.Set(fields[1], value)
		case "add":
			trailers.Add(fields[1], value)
		case "remove":
			trailers.Remove(fields[1])
		}
	}
}
