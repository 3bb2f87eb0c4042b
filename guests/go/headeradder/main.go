// headeradder: add headers to the request (the app sees them) and to the
// response (the client sees them). The config is lines, as for
// guests/zig/headeradder.zig, "<request|response> <name> <value>" with the
// value the rest of the line:
//
//	request x-a 1
//	response x-b two words
//
// or JSON, a value being a string or a list of strings (names in sorted order):
//
//	{"request": {"x-a": ["1", "2"]}, "response": {"x-b": "two words"}}
//
// Response headers are added before the app runs, so no buffering is needed.
package main

import (
	"slices"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
	"http-wasm-asgi/guests/httpwasm/jsonvalue"
)

func main() {}

type header struct {
	to          httpwasm.Message
	name, value string
}

var headers []header

// init runs once per instance (from _initialize): a bad config fails the guest's load.
func init() {
	config := strings.TrimSpace(string(httpwasm.Config()))
	if strings.HasPrefix(config, "{") {
		headers = jsonHeaders(config)
		return
	}
	for _, line := range httpwasm.ConfigLines() {
		where, rest := nextWord(line)
		name, rest := nextWord(rest)
		to, ok := target(where)
		if !ok || name == "" {
			continue
		}
		headers = append(headers, header{to, name, strings.Trim(rest, " \t")})
	}
}

// nextWord splits off the first word of s (words are separated by spaces and tabs).
func nextWord(s string) (word, rest string) {
	s = strings.TrimLeft(s, " \t")
	end := strings.IndexAny(s, " \t")
	if end < 0 {
		return s, ""
	}
	return s[:end], s[end:]
}

func target(where string) (httpwasm.Message, bool) {
	switch where {
	case "request":
		return httpwasm.Request.Message, true
	case "response":
		return httpwasm.Response.Message, true
	}
	return httpwasm.Message{}, false
}

func jsonHeaders(config string) []header {
	parsed, err := jsonvalue.Parse([]byte(config))
	top, isObject := parsed.(map[string]any)
	if err != nil || !isObject {
		panic("headeradder: bad JSON config: " + errorText(err, "not an object"))
	}
	for key := range top {
		if _, ok := target(key); !ok {
			panic("headeradder: bad JSON config: unknown key \"" + key + "\"")
		}
	}
	var out []header
	for _, where := range []string{"request", "response"} {
		to, _ := target(where)
		object, isObject := top[where].(map[string]any)
		if _, present := top[where]; present && !isObject {
			panic("headeradder: bad JSON config: \"" + where + "\" must be an object")
		}
		names := make([]string, 0, len(object))
		for name := range object {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			for _, value := range stringOrList(where, name, object[name]) {
				out = append(out, header{to, name, value})
			}
		}
	}
	return out
}

// stringOrList is a JSON string as one value, or a list of strings.
func stringOrList(where, name string, value any) []string {
	if s, ok := value.(string); ok {
		return []string{s}
	}
	list, ok := value.([]any)
	out := make([]string, len(list))
	for i, item := range list {
		s, isString := item.(string)
		ok = ok && isString
		out[i] = s
	}
	if !ok {
		panic("headeradder: bad JSON config: " + where + " header \"" + name + "\" must be a string or a list of strings")
	}
	return out
}

func errorText(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}

//go:wasmexport handle_request
func handleRequest() uint64 {
	for _, h := range headers {
		h.to.AddHeader(h.name, h.value)
	}
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}
