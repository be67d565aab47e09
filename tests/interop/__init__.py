"""End to end against peers we did not write: the OpenTelemetry Collector, OPA, telemetrygen, h2spec."""
