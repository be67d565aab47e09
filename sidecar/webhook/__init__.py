"""The Kubernetes injection webhook: decides, patches and serves AdmissionReview v1."""
