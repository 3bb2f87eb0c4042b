"""The server side: config files (`config`), what `serve` runs (`serving`, `serve_options`, `logs`), the
command (`cli`), Prometheus metrics (`metrics`), guest sources (`sources`, `oci`) and other hosts' packaging
(`interop`)."""
