// bodyrewrite: replace substrings in request and response bodies. The config
// is JSON, rules applied in order, each replacing every occurrence:
//
//	{"request":  [{"from": "colour", "to": "color"}],
//	 "response": [{"from": "secret", "to": "******"}]}
//
// With request rules the request body is buffered (buffer_request: the app
// still gets it when nothing matched) and replaced when a rule matched; with
// response rules the response is buffered (buffer_response) and rewritten in
// handle_response. Bodies with a content-encoding (compressed) are left alone.
// The host sets content-length to the new length. Same behaviour as
// guests/zig/bodyrewrite.zig.
package main

import (
	"bytes"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
	"http-wasm-asgi/guests/httpwasm/jsonvalue"
)

func main() {}

type rule struct{ from, to []byte }

var requestRules, responseRules []rule

// init runs once per instance (from _initialize): a bad config fails the guest's load.
func init() {
	raw := httpwasm.Config()
	if len(bytes.TrimSpace(raw)) == 0 {
		return
	}
	parsed, err := jsonvalue.Parse(raw)
	if err != nil {
		panic("bodyrewrite: bad JSON config: " + err.Error())
	}
	top, ok := parsed.(map[string]any)
	if !ok {
		panic("bodyrewrite: bad JSON config: not an object")
	}
	for key, value := range top {
		switch key {
		case "request":
			requestRules = parseRules(key, value)
		case "response":
			responseRules = parseRules(key, value)
		default:
			panic("bodyrewrite: bad JSON config: unknown key \"" + key + "\"")
		}
	}
}

// parseRules reads [{"from": "...", "to": "..."}, ...]; "from" must not be empty.
func parseRules(key string, value any) []rule {
	list, ok := value.([]any)
	rules := make([]rule, 0, len(list))
	for _, item := range list {
		object, isObject := item.(map[string]any)
		from, fromOK := object["from"].(string)
		to, toOK := object["to"].(string)
		if !isObject || !fromOK || !toOK || from == "" || len(object) != 2 {
			ok = false
			break
		}
		rules = append(rules, rule{[]byte(from), []byte(to)})
	}
	if !ok {
		panic("bodyrewrite: bad JSON config: \"" + key + "\" must be a list of {\"from\": non-empty string, \"to\": string}")
	}
	return rules
}

// rewrite applies rules to body; changed is false when no rule matched.
func rewrite(body []byte, rules []rule) (out []byte, changed bool) {
	out = body
	for _, r := range rules {
		if bytes.Contains(out, r.from) {
			out = bytes.ReplaceAll(out, r.from, r.to)
			changed = true
		}
	}
	return out, changed
}

func encoded(m httpwasm.Message) bool {
	enc := strings.TrimSpace(m.Header("content-encoding"))
	return enc != "" && !strings.EqualFold(enc, "identity")
}

//go:wasmexport handle_request
func handleRequest() uint64 {
	if len(requestRules) > 0 && !encoded(httpwasm.Request.Message) {
		httpwasm.EnableFeatures(httpwasm.BufferRequest)
		if body, changed := rewrite(httpwasm.Request.Body.ReadAll(), requestRules); changed {
			httpwasm.Request.Body.Write(body)
		}
	}
	if len(responseRules) > 0 {
		httpwasm.EnableFeatures(httpwasm.BufferResponse)
	}
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {
	if isError != 0 || len(responseRules) == 0 || encoded(httpwasm.Response.Message) {
		return
	}
	if body, changed := rewrite(httpwasm.Response.Body.ReadAll(), responseRules); changed {
		httpwasm.Response.Body.Write(body)
	}
}
