// router: redirects and prefix rewrites, first match wins. The config is
// lines, as for guests/zig/router.zig:
//
//	redirect /old /new      GET /old?x=1   -> 302, location: /new?x=1
//	rewrite /api/ /v2/      GET /api/u?x=1 -> the app sees /v2/u?x=1
//
// or JSON: {"redirects": {"/old": "/new"}, "rewrites": {"/api/": "/v2/"}}
// (redirects first, then the longest matching rewrite prefix).
//
// A redirect matches the exact path; a rewrite matches a path prefix. Both keep the query.
package main

import (
	"slices"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
	"http-wasm-asgi/guests/httpwasm/jsonvalue"
)

func main() {}

type rule struct {
	redirect bool // else a rewrite
	from, to string
}

var rules []rule

// init runs once per instance (from _initialize): a bad config fails the guest's load.
func init() {
	config := strings.TrimSpace(string(httpwasm.Config()))
	if strings.HasPrefix(config, "{") {
		rules = jsonRules(config)
		return
	}
	for _, line := range httpwasm.ConfigLines() {
		words := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
		if len(words) < 3 || (words[0] != "redirect" && words[0] != "rewrite") {
			continue
		}
		rules = append(rules, rule{words[0] == "redirect", words[1], words[2]})
	}
}

func jsonRules(config string) []rule {
	parsed, err := jsonvalue.Parse([]byte(config))
	top, isObject := parsed.(map[string]any)
	if err != nil || !isObject {
		panic("router: bad JSON config: " + errorText(err, "not an object"))
	}
	var redirects, rewrites map[string]string
	for key, value := range top {
		switch key {
		case "redirects":
			redirects = stringMap(key, value)
		case "rewrites":
			rewrites = stringMap(key, value)
		default:
			panic("router: bad JSON config: unknown key \"" + key + "\"")
		}
	}
	var out []rule
	for _, from := range sortedKeys(redirects) {
		out = append(out, rule{true, from, redirects[from]})
	}
	prefixes := sortedKeys(rewrites)
	slices.SortStableFunc(prefixes, func(a, b string) int { return len(b) - len(a) })
	for _, from := range prefixes {
		out = append(out, rule{false, from, rewrites[from]})
	}
	return out
}

func errorText(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}

// stringMap is the JSON object value of key, whose values must all be strings.
func stringMap(key string, value any) map[string]string {
	object, ok := value.(map[string]any)
	out := make(map[string]string, len(object))
	for from, to := range object {
		s, isString := to.(string)
		ok = ok && isString
		out[from] = s
	}
	if !ok {
		panic("router: bad JSON config: \"" + key + "\" must be an object of strings")
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

//go:wasmexport handle_request
func handleRequest() uint64 {
	path, query, hasQuery := httpwasm.SplitURI(httpwasm.Request.URI())
	withQuery := func(s string) string {
		if hasQuery {
			return s + "?" + query
		}
		return s
	}
	for _, r := range rules {
		if r.redirect && path == r.from {
			httpwasm.Response.SetStatus(302)
			httpwasm.Response.SetHeader("location", withQuery(r.to))
			return httpwasm.Stop
		}
		if !r.redirect && strings.HasPrefix(path, r.from) {
			httpwasm.Request.SetURI(withQuery(r.to + path[len(r.from):]))
			return httpwasm.Continue
		}
	}
	return httpwasm.Continue
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}
