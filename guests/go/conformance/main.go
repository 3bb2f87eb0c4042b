// The Go conformance guest: runs the checks of the conformance cases
// (http_wasm_asgi/conformance_cases.json) from the guest side, exactly like
// guests/zig/conformance.zig. The case comes from the request header
// x-httpwasm-test-id; the verdict goes out as the response header
// x-conformance-result: pass, or fail: <reason>.
//
// Byte-level checks (buf_limit, count_len, NUL layout) call package abi
// directly; everything else goes through the typed library.
package main

import (
	"bytes"
	"strconv"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
	"http-wasm-asgi/guests/httpwasm/abi"
)

func main() {}

// The config every conformance guest is given (the cases' "config").
const expectedConfig = "{\"name\":\"conformance\",\"answer\":42}"

const resultHeader = "x-conformance-result"

// The cases that check the response in handle_response (they buffer it) and report from there.
var respondingCases = map[string]bool{
	"response_headers/after_next": true,
	"read_body/response":          true,
	"write_body/response":         true,
	"get_status_code/response":    true,
	"set_status_code/response":    true,
	"req_ctx":                     true,
}

// --- verdict -------------------------------------------------------------------

// failure is the first failed check of this request ("" while none failed).
var failure string

func fail(reason string) {
	if failure == "" {
		failure = reason
	}
}

func expect(ok bool, what string) {
	if !ok {
		fail(what)
	}
}

func expectInt(got, want uint64, what string) {
	if got != want {
		fail(what + " = " + strconv.FormatUint(got, 10) + ", want " + strconv.FormatUint(want, 10))
	}
}

func expectStr(got, want, what string) {
	if got != want {
		fail(what + " = '" + printable(got) + "', want '" + printable(want) + "'")
	}
}

// printable keeps a value fit for a header: at most 80 bytes, anything but
// printable ASCII shown as '?'.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80]
	}
	out := []byte(s)
	for i, c := range out {
		if c < 0x20 || c >= 0x7f {
			out[i] = '?'
		}
	}
	return string(out)
}

func report() {
	if failure != "" {
		httpwasm.Response.SetHeader(resultHeader, "fail: "+failure)
	} else {
		httpwasm.Response.SetHeader(resultHeader, "pass")
	}
}

// --- helpers -------------------------------------------------------------------

// probe is the scratch area the byte-level checks hand to the host.
var probe [256]byte

func fillProbe() {
	for i := range probe {
		probe[i] = 0xAA
	}
}

func probeUntouched(from int) bool {
	if from > len(probe) {
		return false
	}
	for _, b := range probe[from:] {
		if b != 0xAA {
			return false
		}
	}
	return true
}

func ptr(s string) (*byte, uint32) {
	if s == "" {
		return nil, 0
	}
	b := []byte(s)
	return &b[0], uint32(len(b))
}

// expectRawValues calls get_header_values into probe and checks the packed result and the exact bytes.
func expectRawValues(kind httpwasm.HeaderKind, name string, count uint32, want string) {
	fillProbe()
	p, n := ptr(name)
	r := abi.GetHeaderValues(uint32(kind), p, n, &probe[0], uint32(len(probe)))
	expectInt(r, uint64(count)<<32|uint64(len(want)), "get_header_values count_len")
	if failure != "" {
		return
	}
	expectStr(string(probe[:len(want)]), want, "get_header_values bytes")
	expect(probeUntouched(len(want)), "get_header_values wrote past its length")
}

func expectValues(headers httpwasm.Headers, name string, want ...string) {
	values := headers.Values(name)
	expectInt(uint64(len(values)), uint64(len(want)), "value count")
	for i, w := range want {
		if i >= len(values) {
			fail("missing value '" + w + "'")
			return
		}
		expectStr(values[i], w, "value")
	}
}

// --- handle_request ------------------------------------------------------------

// current is the case of this request ("" for an unknown one).
var current string

//go:wasmexport handle_request
func handleRequest() uint64 {
	failure = ""
	current = ""
	id := httpwasm.Request.Header("x-httpwasm-test-id")
	next, known := runRequest(id)
	if !known {
		failure = "unknown case"
		report()
		return httpwasm.Stop
	}
	current = id
	// Cases that buffer the response report from handle_response.
	if next&1 == 0 || !respondingCases[id] {
		report()
	}
	return next
}

func runRequest(id string) (next uint64, known bool) {
	switch id {
	case "get_config/bytes":
		fillProbe()
		n := uint64(len(expectedConfig))
		expectInt(uint64(abi.GetConfig(&probe[0], 0)), n, "get_config(buf, 0)")
		expect(probeUntouched(0), "get_config(buf, 0) wrote to the buffer")
		expectInt(uint64(abi.GetConfig(&probe[0], uint32(n-1))), n, "get_config(buf, len-1)")
		expect(probeUntouched(0), "get_config(buf, len-1) wrote to the buffer")
		full := abi.GetConfig(&probe[0], uint32(len(probe)))
		expectInt(uint64(full), n, "get_config(buf, 256)")
		if failure == "" {
			expectStr(string(probe[:full]), expectedConfig, "config")
		}
		expect(probeUntouched(int(full)), "get_config wrote past the config")
	case "log/levels":
		for _, level := range []httpwasm.LogLevel{httpwasm.LogDebug, httpwasm.LogInfo, httpwasm.LogWarn, httpwasm.LogError} {
			httpwasm.Log(level, "conformance log "+strconv.Itoa(int(level)))
		}
		expectInt(uint64(abi.LogEnabled(-1)), 0, "log_enabled(-1)")
		expectInt(uint64(abi.LogEnabled(0)), 1, "log_enabled(0)")
		expectInt(uint64(abi.LogEnabled(2)), 1, "log_enabled(2)")
		expectInt(uint64(abi.LogEnabled(3)), 0, "log_enabled(3)")
	case "enable_features/request":
		expectInt(uint64(httpwasm.EnableFeatures(0)), 0, "enable_features(0)")
		expectInt(uint64(httpwasm.EnableFeatures(httpwasm.BufferRequest)), 1, "enable_features(1)")
		expectInt(uint64(httpwasm.EnableFeatures(httpwasm.BufferResponse)), 3, "then enable_features(2)")
	case "enable_features/trailers_unsupported":
		got := httpwasm.EnableFeatures(httpwasm.Trailers)
		if got&httpwasm.Trailers != 0 {
			fail("enable_features(4) = " + strconv.Itoa(int(got)) + " has the trailers bit")
		}
		expectInt(abi.GetHeaderNames(2, &probe[0], uint32(len(probe))), 0, "get_header_names(request trailers)")
		expectInt(abi.GetHeaderNames(3, &probe[0], uint32(len(probe))), 0, "get_header_names(response trailers)")
	case "enable_features/trailers_supported":
		got := httpwasm.EnableFeatures(httpwasm.Trailers)
		if got&httpwasm.Trailers == 0 {
			fail("enable_features(4) = " + strconv.Itoa(int(got)) + " lacks the trailers bit")
		}
		expectInt(abi.GetHeaderNames(2, &probe[0], uint32(len(probe))), 0, "get_header_names(request trailers)")
		expectInt(abi.GetHeaderNames(3, &probe[0], uint32(len(probe))), 0, "get_header_names(response trailers)")
	case "get_method/get":
		expectStr(httpwasm.Request.Method(), "GET", "get_method")
	case "get_method/post":
		expectStr(httpwasm.Request.Method(), "POST", "get_method")
	case "set_method":
		httpwasm.Request.SetMethod("PUT")
		expectStr(httpwasm.Request.Method(), "PUT", "get_method after set_method")
	case "get_uri/encoded":
		expectStr(httpwasm.Request.URI(), "/a%20b/c%2Fd?x=1&y=%2F", "get_uri")
	case "get_uri/root":
		expectStr(httpwasm.Request.URI(), "/", "get_uri")
	case "set_uri/path_and_query":
		httpwasm.Request.SetURI("/new/p%2Fq?z=9")
		expectStr(httpwasm.Request.URI(), "/new/p%2Fq?z=9", "get_uri after set_uri")
	case "set_uri/drops_query":
		httpwasm.Request.SetURI("/plain")
		expectStr(httpwasm.Request.URI(), "/plain", "get_uri after set_uri")
	case "get_protocol_version":
		expectStr(httpwasm.Request.ProtocolVersion(), "HTTP/1.1", "get_protocol_version")
	case "get_protocol_version/http2":
		expectStr(httpwasm.Request.ProtocolVersion(), "HTTP/2.0", "get_protocol_version")
	case "get_source_addr":
		checkSourceAddr(httpwasm.Request.SourceAddr())
	case "buf_limit/too_small":
		fillProbe()
		expectInt(uint64(abi.GetURI(&probe[0], 5)), 11, "get_uri(buf, 5)")
		expect(probeUntouched(0), "get_uri(buf, 5) wrote to the buffer")
		expectInt(uint64(abi.GetURI(&probe[0], 0)), 11, "get_uri(buf, 0)")
		expect(probeUntouched(0), "get_uri(buf, 0) wrote to the buffer")
	case "get_header_names/lowercase":
		checkHeaderNames()
	case "get_header_values/single":
		expectRawValues(httpwasm.RequestHeaders, "x-single", 1, "01234567\x00")
	case "get_header_values/multi":
		expectRawValues(httpwasm.RequestHeaders, "x-multi", 2, "a=b\x00c=d\x00")
	case "get_header_values/case_insensitive":
		expectRawValues(httpwasm.RequestHeaders, "X-MIXED", 1, "v\x00")
	case "get_header_values/missing":
		expectRawValues(httpwasm.RequestHeaders, "x-not-there", 0, "")
	case "set_header_value/request":
		httpwasm.Request.SetHeader("x-set", "new")
		expectValues(httpwasm.Request.Headers, "x-set", "new")
	case "add_header_value/request":
		httpwasm.Request.AddHeader("x-add", "second")
		expectValues(httpwasm.Request.Headers, "x-add", "first", "second")
	case "remove_header/request":
		httpwasm.Request.RemoveHeader("x-remove")
		p, n := ptr("x-remove")
		expectInt(abi.GetHeaderValues(0, p, n, &probe[0], uint32(len(probe))), 0, "get_header_values after remove")
	case "set_header_value/response_before_next":
		httpwasm.Response.SetHeader("x-from-guest", "yes")
	case "read_body/request":
		httpwasm.EnableFeatures(httpwasm.BufferRequest)
		checkRequestBody(5)
	case "write_body/request":
		httpwasm.Request.Body.WriteString("re")
		httpwasm.Request.Body.WriteString("written")
	case "response_headers/after_next", "read_body/response", "write_body/response",
		"get_status_code/response", "set_status_code/response":
		httpwasm.EnableFeatures(httpwasm.BufferResponse)
	case "short_circuit/response":
		httpwasm.Response.SetStatus(401)
		httpwasm.Response.SetHeader("www-authenticate", "Basic")
		httpwasm.Response.Body.WriteString("denied")
		return httpwasm.Stop, true
	case "short_circuit/default":
		return httpwasm.Stop, true
	case "req_ctx":
		httpwasm.EnableFeatures(httpwasm.BufferResponse)
		return httpwasm.ContinueWith(42), true
	default:
		return httpwasm.Stop, false
	}
	return httpwasm.Continue, true
}

func checkSourceAddr(addr string) {
	const prefix = "127.0.0.1:"
	port, ok := strings.CutPrefix(addr, prefix)
	if !ok {
		fail("get_source_addr = '" + printable(addr) + "'")
		return
	}
	digits := len(port) >= 1 && len(port) <= 5
	for _, c := range []byte(port) {
		digits = digits && c >= '0' && c <= '9'
	}
	if !digits {
		fail("get_source_addr port = '" + printable(port) + "'")
	}
}

func checkHeaderNames() {
	fillProbe()
	r := abi.GetHeaderNames(0, &probe[0], uint32(len(probe)))
	count, n := uint32(r>>32), uint32(r)
	if n == 0 || n > uint32(len(probe)) {
		fail("get_header_names len = " + strconv.FormatUint(uint64(n), 10))
		return
	}
	written := probe[:n]
	expect(written[n-1] == 0, "get_header_names: last name not NUL-terminated")
	expect(probeUntouched(int(n)), "get_header_names wrote past its length")
	expectInt(uint64(count), uint64(bytes.Count(written, []byte{0})), "get_header_names count vs NULs")
	a, b := false, false
	for _, name := range strings.SplitAfter(string(written), "\x00") {
		name, terminated := strings.CutSuffix(name, "\x00")
		if !terminated {
			break
		}
		if strings.ToLower(name) != name {
			fail("header name '" + printable(name) + "' is not lowercase")
			return
		}
		a = a || name == "x-case-a"
		b = b || name == "x-case-b"
	}
	expect(a && b, "x-case-a or x-case-b missing from get_header_names")
	// The library's view (read buffer, retry, split) must be the same list.
	names := httpwasm.Request.Headers.Names()
	expectInt(uint64(len(names)), uint64(count), "Headers.Names count")
	expectStr(strings.Join(names, "\x00")+"\x00", string(written), "Headers.Names bytes")
}

func checkResponseBody(body []byte) {
	expect(bytes.HasPrefix(body, []byte("{")), "response body does not start with '{'")
	expect(bytes.Contains(body, []byte("\"method\"")), "response body lacks \"method\"")
}

// checkRequestBody reads the request body to EOF in chunks of at most chunkLimit, then checks it.
func checkRequestBody(chunkLimit uint32) {
	var body []byte
	chunk := make([]byte, chunkLimit)
	for calls := 0; ; calls++ {
		if calls == 10_000 {
			fail("read_body never reached eof")
			return
		}
		r := abi.ReadBody(0, &chunk[0], chunkLimit)
		n, eof := uint32(r), uint32(r>>32)
		if n > chunkLimit {
			fail("read_body returned " + strconv.FormatUint(uint64(n), 10) + " bytes for a limit of " +
				strconv.FormatUint(uint64(chunkLimit), 10))
			return
		}
		body = append(body, chunk[:n]...)
		if eof == 1 {
			break
		}
		if eof != 0 {
			fail("read_body eof = " + strconv.FormatUint(uint64(eof), 10))
			return
		}
	}
	expectStr(string(body), "hello conformance body", "request body")
}

// --- handle_response -----------------------------------------------------------

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {
	if current == "" || !respondingCases[current] {
		return
	}
	if isError != 0 {
		fail("handle_response is_error = 1")
	}
	if failure == "" {
		switch current {
		case "response_headers/after_next":
			expectValues(httpwasm.Response.Headers, "content-type", "application/json")
			expectValues(httpwasm.Response.Headers, "x-echo", "1")
		case "read_body/response":
			checkResponseBody(httpwasm.Response.Body.ReadAll())
		case "write_body/response":
			httpwasm.Response.Body.WriteString("replaced")
		case "get_status_code/response":
			expectInt(uint64(httpwasm.Response.Status()), 200, "get_status_code")
		case "set_status_code/response":
			httpwasm.Response.SetStatus(418)
		case "req_ctx":
			expectInt(uint64(reqCtx), 42, "handle_response req_ctx")
		}
	}
	report()
}
