# METADATA
# title: The decision document the sidecar queries
# description: |
#   `decisions` maps each policy package to the part of the decision it
#   contributes for one resource; the sidecar validates every part and compiles
#   them into one plan. `pod_settings` is queried once per policy version with the
#   pod's identity: egress headers and the rate limit of the pod's tenant.
#   A new policy adds one `part(...)` line to `decisions_for`.
package otlp_sidecar.main

import rego.v1

import data.otlp_sidecar.pci
import data.otlp_sidecar.sampling
import data.otlp_sidecar.tenant

pci_part(request) := {"otlp_sidecar.pci": decision} if {
	decision := pci.decision_for(request)
} else := {}

tenant_part(request) := {"otlp_sidecar.tenant": decision} if {
	decision := tenant.decision_for(request)
} else := {}

sampling_part(request) := {"otlp_sidecar.sampling": decision} if {
	decision := sampling.decision_for(request)
} else := {}

# METADATA
# title: Every policy's part of the decision for one request, by package
decisions_for(request) := object.union_n([pci_part(request), tenant_part(request), sampling_part(request)])

decisions := decisions_for(input)

pod_settings := tenant.pod_settings_for(input)
