;; Adds one response header, given by the config as "name: value".
(module
  (import "http_handler" "get_config" (func $get_config (param i32 i32) (result i32)))
  (import "http_handler" "add_header_value" (func $add_header_value (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $name_len (mut i32) (i32.const 0))
  (global $value_len (mut i32) (i32.const 0))
  ;; config at 0 (up to 4096 bytes); the name ends at ':' and the value starts after ": "
  (func $init (local $len i32) (local $i i32)
    (local.set $len (call $get_config (i32.const 0) (i32.const 4096)))
    (if (i32.gt_u (local.get $len) (i32.const 4096)) (then unreachable))
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (local.get $i) (local.get $len)))
        (br_if $found (i32.eq (i32.load8_u (local.get $i)) (i32.const 58)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (if (i32.ge_u (i32.add (local.get $i) (i32.const 2)) (local.get $len)) (then unreachable)) ;; config must be "name: value"
    (global.set $name_len (local.get $i))
    (global.set $value_len (i32.sub (local.get $len) (i32.add (local.get $i) (i32.const 2)))))
  (start $init)
  (func (export "handle_request") (result i64)
    (call $add_header_value (i32.const 1) (i32.const 0) (global.get $name_len)
          (i32.add (global.get $name_len) (i32.const 2)) (global.get $value_len))
    (i64.const 1))
  (func (export "handle_response") (param i32 i32)))
