// Package abi declares the host functions of the http-wasm handler ABI
// (wasm import module "http_handler"), one Go function per host function,
// with the ABI's parameter order.
//
// Pointers are offsets into the guest's linear memory: pass a *byte to the
// first byte of a buffer (nil for an empty one) and its length. Functions
// that read a field write at most bufLimit bytes and return the field's full
// length; when that is bigger than bufLimit nothing was written. Results of
// type uint64 pack two uint32: the upper half is a count (or eof, or ctx), the
// lower half a length.
//
// Most guests should use the typed wrappers of package httpwasm instead.
package abi

//go:wasmimport http_handler enable_features
func EnableFeatures(features uint32) uint32

//go:wasmimport http_handler get_config
func GetConfig(buf *byte, bufLimit uint32) uint32

//go:wasmimport http_handler log_enabled
func LogEnabled(level int32) uint32

//go:wasmimport http_handler log
func Log(level int32, message *byte, messageLen uint32)

//go:wasmimport http_handler get_header_names
func GetHeaderNames(kind uint32, buf *byte, bufLimit uint32) uint64

//go:wasmimport http_handler get_header_values
func GetHeaderValues(kind uint32, name *byte, nameLen uint32, buf *byte, bufLimit uint32) uint64

//go:wasmimport http_handler set_header_value
func SetHeaderValue(kind uint32, name *byte, nameLen uint32, value *byte, valueLen uint32)

//go:wasmimport http_handler add_header_value
func AddHeaderValue(kind uint32, name *byte, nameLen uint32, value *byte, valueLen uint32)

//go:wasmimport http_handler remove_header
func RemoveHeader(kind uint32, name *byte, nameLen uint32)

//go:wasmimport http_handler read_body
func ReadBody(kind uint32, buf *byte, bufLimit uint32) uint64

//go:wasmimport http_handler write_body
func WriteBody(kind uint32, body *byte, bodyLen uint32)

//go:wasmimport http_handler get_method
func GetMethod(buf *byte, bufLimit uint32) uint32

//go:wasmimport http_handler set_method
func SetMethod(method *byte, methodLen uint32)

//go:wasmimport http_handler get_uri
func GetURI(buf *byte, bufLimit uint32) uint32

//go:wasmimport http_handler set_uri
func SetURI(uri *byte, uriLen uint32)

//go:wasmimport http_handler get_protocol_version
func GetProtocolVersion(buf *byte, bufLimit uint32) uint32

//go:wasmimport http_handler get_source_addr
func GetSourceAddr(buf *byte, bufLimit uint32) uint32

//go:wasmimport http_handler get_status_code
func GetStatusCode() uint32

//go:wasmimport http_handler set_status_code
func SetStatusCode(statusCode uint32)
