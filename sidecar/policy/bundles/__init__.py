"""OPA bundles: read (``.tar.gz`` or a directory), verify (``.signatures.json``), stage, poll.

A bundle is untrusted input until its signature (when one is required) and its content have
been checked; see docs/bundles.md.
"""
