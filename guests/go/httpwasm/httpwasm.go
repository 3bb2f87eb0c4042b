// Package httpwasm is a small typed library for writing http-wasm guests
// (the http-handler ABI) in Go, compiled with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared
//
// A guest is a main package with an empty main and two exported handlers:
//
//	func main() {}
//
//	//go:wasmexport handle_request
//	func handleRequest() uint64 {
//		if httpwasm.Request.Header("authorization") == "" {
//			httpwasm.Response.SetStatus(401)
//			return httpwasm.Stop
//		}
//		return httpwasm.Continue
//	}
//
//	//go:wasmexport handle_response
//	func handleResponse(reqCtx, isError uint32) {}
//
// Reading a field: the library hands the host its read buffer; when the host
// answers with a length bigger than the buffer (so nothing was written), the
// buffer grows to exactly that length and the call is made once more. A host
// that answers bigger again is broken: the guest panics (a trap for the host).
// Values are copied out of the read buffer, so strings and slices returned
// here stay valid.
//
// The raw host functions are in package abi, for byte-level work.
package httpwasm

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"unsafe"

	"http-wasm-asgi/guests/httpwasm/abi"
)

// What handle_request returns.
const (
	// Stop: do not call the next handler; the client gets what the guest
	// wrote (status 200 and an empty body unless set). handle_response is not called.
	Stop uint64 = 0
	// Continue: call the next handler, then handle_response with reqCtx 0.
	Continue uint64 = 1
)

// ContinueWith calls the next handler, then handle_response with reqCtx = ctx.
func ContinueWith(ctx uint32) uint64 {
	return uint64(ctx)<<32 | 1
}

// Features are the bits of enable_features.
type Features uint32

const (
	BufferRequest  Features = 1
	BufferResponse Features = 2
	Trailers       Features = 4
)

// EnableFeatures enables features for the current request (or, called from
// init, for every request) and returns every feature enabled now.
func EnableFeatures(f Features) Features {
	return Features(abi.EnableFeatures(uint32(f)))
}

// LogLevel is the level of a log message; LogNone is only for LogEnabled.
type LogLevel int32

const (
	LogDebug LogLevel = -1
	LogInfo  LogLevel = 0
	LogWarn  LogLevel = 1
	LogError LogLevel = 2
	LogNone  LogLevel = 3
)

// Log sends a message to the host's log at level.
func Log(level LogLevel, message string) {
	abi.Log(int32(level), stringData(message), uint32(len(message)))
}

// LogEnabled reports whether the host logs messages at level.
func LogEnabled(level LogLevel) bool {
	return abi.LogEnabled(int32(level)) != 0
}

var (
	config     []byte
	configRead bool
)

// Config returns the guest's configuration, read once per instance.
// The caller must not modify it.
func Config() []byte {
	if !configRead {
		_, value := fetch(func(buf *byte, limit uint32) uint64 {
			return uint64(abi.GetConfig(buf, limit))
		})
		config = bytes.Clone(value)
		configRead = true
	}
	return config
}

// ConfigLines returns the non-empty lines of the config, trimmed of spaces,
// tabs and carriage returns, without the lines that start with '#'.
func ConfigLines() []string {
	var lines []string
	for _, raw := range strings.Split(string(Config()), "\n") {
		line := strings.Trim(raw, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		lines = append(lines, line)
	}
	return lines
}

// --- reading fields ------------------------------------------------------------

// readBuf is what the host writes fields into; it only ever grows.
var readBuf = make([]byte, 2048)

// fetch calls read with the read buffer, growing it and calling once more when
// the value does not fit. It returns the upper half of the result (a count for
// lists) and the bytes written, which alias readBuf until the next fetch.
func fetch(read func(buf *byte, bufLimit uint32) uint64) (uint32, []byte) {
	result := read(&readBuf[0], uint32(len(readBuf)))
	n := uint32(result)
	if uint64(n) > uint64(len(readBuf)) {
		readBuf = make([]byte, n)
		result = read(&readBuf[0], n)
		n = uint32(result)
		if uint64(n) > uint64(len(readBuf)) {
			panic("httpwasm: host value changed size between calls")
		}
	}
	return uint32(result >> 32), readBuf[:n]
}

func fetchString(read func(buf *byte, bufLimit uint32) uint32) string {
	_, value := fetch(func(buf *byte, limit uint32) uint64 { return uint64(read(buf, limit)) })
	return string(value)
}

// splitList splits a NUL-terminated sequence ("a\x00b\x00") into its strings.
func splitList(count uint32, list []byte) []string {
	out := make([]string, 0, count)
	for {
		end := bytes.IndexByte(list, 0)
		if end < 0 {
			return out
		}
		out = append(out, string(list[:end]))
		list = list[end+1:]
	}
}

func stringData(s string) *byte {
	if s == "" {
		return nil
	}
	return unsafe.StringData(s)
}

func sliceData(b []byte) *byte {
	if len(b) == 0 {
		return nil
	}
	return &b[0]
}

// --- headers -------------------------------------------------------------------

// HeaderKind selects a header section: request or response headers or trailers.
type HeaderKind uint32

const (
	RequestHeaders   HeaderKind = 0
	ResponseHeaders  HeaderKind = 1
	RequestTrailers  HeaderKind = 2
	ResponseTrailers HeaderKind = 3
)

// Headers is one header section of the current request or response.
type Headers struct{ Kind HeaderKind }

// Names returns every header name, lowercase, in the host's order.
func (h Headers) Names() []string {
	count, list := fetch(func(buf *byte, limit uint32) uint64 {
		return abi.GetHeaderNames(uint32(h.Kind), buf, limit)
	})
	return splitList(count, list)
}

// Values returns every value of the header name (case-insensitive), in order.
func (h Headers) Values(name string) []string {
	count, list := fetch(func(buf *byte, limit uint32) uint64 {
		return abi.GetHeaderValues(uint32(h.Kind), stringData(name), uint32(len(name)), buf, limit)
	})
	return splitList(count, list)
}

// Get returns the first value of the header name, and whether there is one.
func (h Headers) Get(name string) (string, bool) {
	values := h.Values(name)
	if len(values) == 0 {
		return "", false
	}
	return values[0], true
}

// Set replaces every value of the header name with value.
func (h Headers) Set(name, value string) {
	abi.SetHeaderValue(uint32(h.Kind), stringData(name), uint32(len(name)), stringData(value), uint32(len(value)))
}

// Add adds one value to the header name.
func (h Headers) Add(name, value string) {
	abi.AddHeaderValue(uint32(h.Kind), stringData(name), uint32(len(name)), stringData(value), uint32(len(value)))
}

// Remove removes every value of the header name.
func (h Headers) Remove(name string) {
	abi.RemoveHeader(uint32(h.Kind), stringData(name), uint32(len(name)))
}

// --- bodies --------------------------------------------------------------------

// BodyKind selects the request or the response body.
type BodyKind uint32

const (
	RequestBody  BodyKind = 0
	ResponseBody BodyKind = 1
)

// Body is the request or response body: an io.Reader over read_body and an
// io.Writer over write_body. The first write in a handler replaces the body;
// the next ones append.
type Body struct{ Kind BodyKind }

// Read reads the next bytes of the body; it returns io.EOF with the last ones.
func (b Body) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // read_body with a zero buf_limit traps
	}
	result := abi.ReadBody(uint32(b.Kind), &p[0], uint32(len(p)))
	n := int(uint32(result))
	if n > len(p) {
		panic("httpwasm: host read past buf_limit")
	}
	if result>>32 != 0 {
		return n, io.EOF
	}
	return n, nil
}

// ReadAll reads the rest of the body.
func (b Body) ReadAll() []byte {
	out := make([]byte, 0, 4096)
	for {
		out = slices.Grow(out, 4096)
		n, err := b.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if err != nil {
			return out
		}
	}
}

// Write appends p to the body (replacing it on the first write of a handler).
func (b Body) Write(p []byte) (int, error) {
	abi.WriteBody(uint32(b.Kind), sliceData(p), uint32(len(p)))
	return len(p), nil
}

// WriteString is Write for a string.
func (b Body) WriteString(s string) (int, error) {
	abi.WriteBody(uint32(b.Kind), stringData(s), uint32(len(s)))
	return len(s), nil
}

// --- request and response ------------------------------------------------------

// Message is what requests and responses share: headers, trailers and a body.
type Message struct {
	Headers  Headers
	Trailers Headers
	Body     Body
}

// Header returns the first value of the header name, or "" when there is none.
func (m Message) Header(name string) string {
	value, _ := m.Headers.Get(name)
	return value
}

// SetHeader replaces every value of the header name with value.
func (m Message) SetHeader(name, value string) { m.Headers.Set(name, value) }

// AddHeader adds one value to the header name.
func (m Message) AddHeader(name, value string) { m.Headers.Add(name, value) }

// RemoveHeader removes the header name.
func (m Message) RemoveHeader(name string) { m.Headers.Remove(name) }

// HTTPRequest is the type of Request.
type HTTPRequest struct{ Message }

// HTTPResponse is the type of Response.
type HTTPResponse struct{ Message }

// Request is the request being handled.
var Request = HTTPRequest{Message{Headers{RequestHeaders}, Headers{RequestTrailers}, Body{RequestBody}}}

// Response is the response to it: written before the next handler runs, or
// read and changed in handle_response (changes need BufferResponse).
var Response = HTTPResponse{Message{Headers{ResponseHeaders}, Headers{ResponseTrailers}, Body{ResponseBody}}}

// Method returns the request method, e.g. "GET".
func (HTTPRequest) Method() string { return fetchString(abi.GetMethod) }

// SetMethod changes the method the next handler sees.
func (HTTPRequest) SetMethod(method string) { abi.SetMethod(stringData(method), uint32(len(method))) }

// URI returns the request URI, still encoded, with its query: "/a%20b?x=1".
func (HTTPRequest) URI() string { return fetchString(abi.GetURI) }

// SetURI changes the URI (encoded path, and query after '?') the next handler
// sees. A URI without '?' leaves no query.
func (HTTPRequest) SetURI(uri string) { abi.SetURI(stringData(uri), uint32(len(uri))) }

// ProtocolVersion returns e.g. "HTTP/1.1".
func (HTTPRequest) ProtocolVersion() string { return fetchString(abi.GetProtocolVersion) }

// SourceAddr returns the client address, e.g. "127.0.0.1:5000" or "[::1]:5000".
func (HTTPRequest) SourceAddr() string { return fetchString(abi.GetSourceAddr) }

// Status returns the response status code.
func (HTTPResponse) Status() uint32 { return abi.GetStatusCode() }

// SetStatus sets the response status code.
func (HTTPResponse) SetStatus(code uint32) { abi.SetStatusCode(code) }

// SplitURI splits a URI into its path and its query (without '?');
// hasQuery is false when there is no '?'.
func SplitURI(uri string) (path, query string, hasQuery bool) {
	path, query, hasQuery = strings.Cut(uri, "?")
	return path, query, hasQuery
}
