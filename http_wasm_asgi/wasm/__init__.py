"""The wasmtime room: nothing here knows HTTP. The engine and its epoch ticker (`engine`), the compile cache
(`cache`, `cache_files`), the two call paths (`calls`: native and Python), cooperative slices (`scheduler`),
WASI shims (`wasi`), call counters (`stats`), `WasmModule` (`module`), `WasmInstance` (`instance`) and
snapshots after init (`snapshot`)."""
