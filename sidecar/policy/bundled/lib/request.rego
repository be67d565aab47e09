# METADATA
# title: Helpers over the decision input, shared by the policies
# description: |
#   Keep helpers small and free of comprehensions: the embedded engine
#   (rego-cpp 1.5) can mix up the results of a function with a comprehension
#   called several times in one expression.
package otlp_sidecar.lib.request

import rego.v1

# METADATA
# description: The resource's `service.name`, or "" when it has none.
service_name(request) := object.get(request.resource, "service.name", "")

# METADATA
# description: True when the sender presented a verified client certificate.
verified_peer(request) if request.peer.tls == true
