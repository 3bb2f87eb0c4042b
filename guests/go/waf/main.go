// waf: a web application firewall in the style of ModSecurity and Coraza:
// rules from the config, compiled once per instance (in init, run by
// _initialize), checked against every request. The config is JSON:
//
//	{"rules": [
//	  {"id": 942100, "target": "args|body", "regex": "(?i)union\\s+select", "action": "deny"},
//	  {"id": 930100, "target": "uri|args", "regex": "\\.\\./"},
//	  {"id": 930130, "target": "uri", "phrases": ["/.git/", "/.env", "web.config"]}
//	]}
//
// "target" is a |-separated set of
//
//	args     the query's argument names and values, percent-decoded ('+' is a space)
//	uri      the request URI as sent, and percent-decoded
//	headers  request header names and values
//	body     the request body as sent, and percent-decoded when it is a form
//	         (application/x-www-form-urlencoded)
//
// A rule has a "regex" (Go regexp syntax, RE2) or "phrases" (a list of
// strings, one of which must occur in the text, case-insensitively: the @pm
// operator of ModSecurity, for long word lists). "action" is "deny" (the
// default, and the only one). Rules are checked in order and the first that
// matches wins: the client gets 403 with a short body, the host's log a WARN
// line `waf: rule 942100 matched in args`, and the app is never called. When
// nothing matches, the request goes on unchanged. A rule that reads the body
// makes the guest enable buffer_request at init, so the app still gets the body.
//
// A bad config (invalid JSON, a rule without an id, an unknown target, a regex
// that does not compile...) prints what is wrong, naming the rule, to stderr
// and exits with status 1 during init: the host refuses to load the guest and
// its error carries that line.
//
// Thousands of rules stay cheap per request: package prefilter derives from
// each regex strings one of which every match contains, and puts them and the
// phrases into one Aho-Corasick automaton. A request is scanned once per text,
// and only the rules whose strings occur run their regex (plus the few rules
// without such strings). The automaton is a full transition table, 1 KiB per
// state: big rule sets take tens of MiB, like a real WAF's.
//
// guests/go/waf/rules.py generates rule sets; tests/test_waf.py drives the
// guest with a small one and with the heavy one.
package main

import (
	"bytes"
	"os"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
	"http-wasm-asgi/guests/httpwasm/jsonvalue"
	"http-wasm-asgi/guests/waf/prefilter"
)

func main() {}

const (
	targetArgs = iota
	targetURI
	targetHeaders
	targetBody
	numTargets
)

var targetNames = [numTargets]string{"args", "uri", "headers", "body"}

type rule struct {
	id      string
	targets uint8          // bit 1<<target for each target
	re      *regexp.Regexp // nil: a phrases rule, which matches when the prefilter finds a phrase
	always  bool           // a regex without prefilter strings: run on every text of its targets
}

var (
	rules   []rule
	needs   uint8 // the targets any rule reads
	index   *prefilter.Index
	marks   [numTargets][]uint32 // marks[target][rule] == stamp: the prefilter let the rule through
	stamp   uint32
	scratch []byte
)

// init runs once per instance (from _initialize).
func init() {
	config := bytes.TrimSpace(httpwasm.Config())
	if len(config) == 0 {
		return
	}
	parsed, err := jsonvalue.Parse(config)
	if err != nil {
		fail("bad JSON: " + err.Error())
	}
	top, ok := parsed.(map[string]any)
	if !ok {
		fail("the config must be a JSON object {\"rules\": [...]}")
	}
	for key := range top {
		if key != "rules" {
			fail("unknown key \"" + key + "\" (the config has one key, \"rules\")")
		}
	}
	list, ok := top["rules"].([]any)
	if !ok {
		fail("\"rules\" must be a list of rules")
	}
	index = prefilter.NewIndex()
	rules = make([]rule, 0, len(list))
	ids := make(map[string]bool, len(list))
	for n, item := range list {
		r := parseRule(n, item, ids)
		rules = append(rules, r)
		needs |= r.targets
	}
	index.Build()
	if httpwasm.LogEnabled(httpwasm.LogDebug) {
		httpwasm.Log(httpwasm.LogDebug, "waf: "+strconv.Itoa(len(rules))+" rules, a prefilter of "+
			strconv.Itoa(index.States())+" states")
	}
	for t := range marks {
		marks[t] = make([]uint32, len(rules))
	}
	if needs&(1<<targetBody) != 0 {
		httpwasm.EnableFeatures(httpwasm.BufferRequest)
	}
}

// fail ends init: the host turns the exit into a load error carrying the message.
func fail(message string) {
	os.Stderr.WriteString("waf: bad config: " + message + "\n")
	os.Exit(1)
}

func parseRule(n int, item any, ids map[string]bool) rule {
	where := "rules[" + strconv.Itoa(n) + "]"
	object, ok := item.(map[string]any)
	if !ok {
		fail(where + ": a rule must be an object")
	}
	number, ok := object["id"].(float64)
	if !ok || number < 1 || number > 1<<53 || number != float64(int64(number)) {
		fail(where + ": \"id\" must be a positive integer")
	}
	r := rule{id: strconv.FormatInt(int64(number), 10)}
	where += " (id " + r.id + ")"
	if ids[r.id] {
		fail(where + ": duplicate id")
	}
	ids[r.id] = true
	for key, value := range object {
		switch key {
		case "id", "target", "regex", "phrases":
		case "action":
			if value != "deny" {
				fail(where + ": \"action\" must be \"deny\"")
			}
		default:
			fail(where + ": unknown key \"" + key + "\"")
		}
	}
	target, _ := object["target"].(string)
	for _, name := range strings.Split(target, "|") {
		found := false
		for t, known := range targetNames {
			if strings.TrimSpace(name) == known {
				r.targets |= 1 << t
				found = true
			}
		}
		if !found {
			fail(where + ": bad target \"" + target + "\": a |-separated set of args, uri, headers, body")
		}
	}
	expr, isRegex := object["regex"].(string)
	phrases, isPhrases := object["phrases"].([]any)
	switch {
	case isRegex == isPhrases || object["regex"] != nil && !isRegex || object["phrases"] != nil && !isPhrases:
		fail(where + ": a rule has either \"regex\" (a string) or \"phrases\" (a list of strings)")
	case isRegex && expr == "", isPhrases && len(phrases) == 0:
		fail(where + ": an empty \"regex\" or \"phrases\" would match every request")
	case isRegex:
		tree, err := syntax.Parse(expr, syntax.Perl)
		if err != nil {
			fail(where + ": bad regex: " + err.Error())
		}
		if r.re, err = regexp.Compile(expr); err != nil {
			fail(where + ": bad regex: " + err.Error())
		}
		if literals, ok := prefilter.Literals(tree); ok {
			index.Add(int32(n), literals)
		} else {
			r.always = true
		}
	default:
		folded := make([]string, len(phrases))
		for i, phrase := range phrases {
			text, ok := phrase.(string)
			if !ok || text == "" {
				fail(where + ": \"phrases\" must be a list of non-empty strings")
			}
			folded[i] = string(prefilter.Fold(nil, text))
		}
		index.Add(int32(n), folded)
	}
	return r
}

//go:wasmexport handle_request
func handleRequest() uint64 {
	if len(rules) == 0 {
		return httpwasm.Continue
	}
	var texts [numTargets][]string
	uri := httpwasm.Request.URI()
	if needs&(1<<targetURI) != 0 {
		texts[targetURI] = withDecoded(texts[targetURI], uri, false)
	}
	if _, query, _ := httpwasm.SplitURI(uri); needs&(1<<targetArgs) != 0 && query != "" {
		for _, arg := range strings.Split(query, "&") {
			name, value, _ := strings.Cut(arg, "=")
			texts[targetArgs] = appendNonEmpty(texts[targetArgs], decode(name, true), decode(value, true))
		}
	}
	if needs&(1<<targetHeaders) != 0 {
		for _, name := range httpwasm.Request.Headers.Names() {
			texts[targetHeaders] = append(texts[targetHeaders], name)
			texts[targetHeaders] = appendNonEmpty(texts[targetHeaders], httpwasm.Request.Headers.Values(name)...)
		}
	}
	if needs&(1<<targetBody) != 0 {
		if body := httpwasm.Request.Body.ReadAll(); len(body) > 0 {
			form := strings.HasPrefix(strings.ToLower(httpwasm.Request.Header("content-type")),
				"application/x-www-form-urlencoded")
			if form {
				texts[targetBody] = withDecoded(texts[targetBody], string(body), true)
			} else {
				texts[targetBody] = append(texts[targetBody], string(body))
			}
		}
	}

	stamp++
	if stamp == 0 { // wrapped around: forget every old mark
		for t := range marks {
			clear(marks[t])
		}
		stamp = 1
	}
	for t := range texts {
		for _, text := range texts[t] {
			scratch = prefilter.Fold(scratch[:0], text)
			index.Scan(scratch, marks[t], stamp)
		}
	}

	for i := range rules {
		r := &rules[i]
		for t := range numTargets {
			if r.targets&(1<<t) == 0 || (!r.always && marks[t][i] != stamp) {
				continue
			}
			if r.re == nil { // phrases: the prefilter's mark is the match
				deny(r, t)
				return httpwasm.Stop
			}
			for _, text := range texts[t] {
				if r.re.MatchString(text) {
					deny(r, t)
					return httpwasm.Stop
				}
			}
		}
	}
	return httpwasm.Continue
}

func deny(r *rule, target int) {
	httpwasm.Log(httpwasm.LogWarn, "waf: rule "+r.id+" matched in "+targetNames[target])
	httpwasm.Response.SetStatus(403)
	httpwasm.Response.SetHeader("content-type", "text/plain; charset=utf-8")
	httpwasm.Response.Body.WriteString("forbidden: the request was blocked\n")
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}

func appendNonEmpty(list []string, values ...string) []string {
	for _, v := range values {
		if v != "" {
			list = append(list, v)
		}
	}
	return list
}

// withDecoded appends s, and its percent-decoded form when that differs.
func withDecoded(list []string, s string, plusIsSpace bool) []string {
	list = append(list, s)
	if decoded := decode(s, plusIsSpace); decoded != s {
		list = append(list, decoded)
	}
	return list
}

// decode undoes percent-encoding (and '+' for a space in forms and queries);
// a '%' not followed by two hex digits stays as it is.
func decode(s string, plusIsSpace bool) string {
	if !strings.ContainsRune(s, '%') && !(plusIsSpace && strings.ContainsRune(s, '+')) {
		return s
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			out = append(out, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		case c == '+' && plusIsSpace:
			out = append(out, ' ')
		default:
			out = append(out, c)
		}
	}
	return string(out)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
