"""otlp-sidecar: a per-pod OTLP policy sidecar (PCI masking, tenant isolation, sampling)."""

__version__ = "0.1.0"
