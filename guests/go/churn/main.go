// churn: a heavy guest that churns its heap per request, the way a guest
// with a garbage collector does (Coraza built with TinyGo, for one). It keeps
// a live state built at init (like a WAF's compiled rules) and, per request,
// copies the request into fresh buffers, builds temporary maps and strings and
// drops them all: the heap grows to the collector's high-water mark and every
// page of it stays dirty. bench/heavy.py measures what that costs the host
// (its memory per instance); tests/test_snapshot.py checks that the host
// gives it back.
//
// The config is space-separated key=value pairs (all optional):
//
//	state=16    MiB of live state built at init (a table and a map of strings)
//	churn=4096  KiB allocated, written and dropped per request
//
// Every response gets a header x-churn: the checksum of
// what was written for it (the same request gives the same checksum, from a
// fresh instance or a reused one) and the state's checksum, so a test can
// see that the state is intact.
package main

import (
	"slices"
	"strconv"
	"strings"

	"http-wasm-asgi/guests/httpwasm"
)

func main() {}

const (
	defaultStateMiB = 16
	defaultChurnKiB = 4096
	chunk           = 64 * 1024 // one temporary buffer
	words           = 4096      // strings in the state's map
)

var (
	table    []uint32          // the live state's bulk: pointer-free, cheap to mark
	names    map[string]uint32 // the live state's map: pointers the collector walks
	stateSum uint32
	churnKiB = defaultChurnKiB
)

// init runs once (at the snapshot, or per instance without one).
func init() {
	stateMiB := defaultStateMiB
	for _, field := range strings.Fields(string(httpwasm.Config())) {
		key, value, _ := strings.Cut(field, "=")
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			panic("churn: bad config field " + field)
		}
		switch key {
		case "state":
			stateMiB = n
		case "churn":
			churnKiB = n
		default:
			panic("churn: unknown config key " + key)
		}
	}
	table = make([]uint32, stateMiB*1024*1024/4)
	seed := uint32(2166136261)
	for i := range table {
		seed = seed*16777619 ^ uint32(i)
		table[i] = seed
	}
	names = make(map[string]uint32, words)
	for i := 0; i < words; i++ {
		names["rule-"+strconv.Itoa(i)] = table[i*7%len(table)]
	}
	for i := 0; i < len(table); i += 1024 {
		stateSum += table[i]
	}
}

//go:wasmexport handle_request
func handleRequest() uint64 {
	seen := copyRequest()
	sum := churn(seen)
	httpwasm.Response.SetHeader("x-churn", strconv.FormatUint(uint64(sum), 16)+"/"+
		strconv.FormatUint(uint64(stateSum), 16))
	return httpwasm.Continue
}

// copyRequest copies the request into fresh strings and a map (garbage after the request).
func copyRequest() map[string]string {
	seen := make(map[string]string)
	seen[":method"] = strings.Clone(httpwasm.Request.Method())
	seen[":uri"] = strings.ToLower(httpwasm.Request.URI())
	for _, name := range httpwasm.Request.Headers.Names() {
		seen[strings.ToUpper(name)] = strings.Join(httpwasm.Request.Headers.Values(name), ", ")
	}
	seen[":body"] = string(httpwasm.Request.Body.ReadAll())
	return seen
}

// churn allocates churnKiB in fresh buffers filled from the request and the state, and drops them.
func churn(seen map[string]string) uint32 {
	keys := make([]string, 0, len(seen))
	for key := range seen {
		keys = append(keys, key)
	}
	slices.Sort(keys) // map order is random: the checksum must not be
	var text strings.Builder
	for _, key := range keys {
		text.WriteString(key + "=" + seen[key] + "\n")
	}
	source := []byte(text.String() + "|")
	sum := uint32(len(seen))
	var kept [][]byte // alive until the request ends, like a request's parsed state
	for left := churnKiB * 1024; left > 0; left -= chunk {
		buf := make([]byte, min(chunk, left))
		head := buf[:min(len(buf), 256)]
		for i := range head { // the request's bytes mixed with the state's, then copied over the rest
			head[i] = source[(i+len(kept))%len(source)] ^ byte(table[(i+len(kept)*256)%len(table)])
		}
		for done := len(head); done < len(buf); done *= 2 {
			copy(buf[done:], buf[:done])
		}
		sum = sum*31 + uint32(buf[len(buf)-1]) + names["rule-"+strconv.Itoa(len(kept)%words)]
		kept = append(kept, buf)
	}
	return sum
}

//go:wasmexport handle_response
func handleResponse(reqCtx, isError uint32) {}
