// copyheader: the benchmark's filter in Go, the same as guests/wat/copy_header.wat.
// handle_request reads the request header `x-id` and sets it as the response header `x-id`;
// handle_response reads the status code: 3 host calls per request, raw ABI, no allocation.
package main

import "unsafe"

//go:wasmimport http_handler get_header_values
func getHeaderValues(kind uint32, name unsafe.Pointer, nameLen uint32, buf unsafe.Pointer, bufLimit uint32) uint64

//go:wasmimport http_handler set_header_value
func setHeaderValue(kind uint32, name unsafe.Pointer, nameLen uint32, value unsafe.Pointer, valueLen uint32)

//go:wasmimport http_handler get_status_code
func getStatusCode() uint32

var (
	name = [4]byte{'x', '-', 'i', 'd'}
	buf  [1024]byte
)

//go:wasmexport handle_request
func handleRequest() uint64 {
	n := uint32(getHeaderValues(0, unsafe.Pointer(&name[0]), uint32(len(name)), unsafe.Pointer(&buf[0]), uint32(len(buf))))
	if n > uint32(len(buf)) {
		panic("x-id too long")
	}
	if n > 0 { // values are NUL-terminated
		setHeaderValue(1, unsafe.Pointer(&name[0]), uint32(len(name)), unsafe.Pointer(&buf[0]), n-1)
	}
	return 1
}

//go:wasmexport handle_response
func handleResponse(reqCtx uint32, isError uint32) {
	_ = getStatusCode()
}

func main() {}
