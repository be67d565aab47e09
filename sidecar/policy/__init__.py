"""The policy engine: Rego policies evaluated once per resource into rewriter plans."""
