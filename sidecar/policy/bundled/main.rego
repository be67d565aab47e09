# METADATA
# title: The decision document the sidecar queries
# description: |
#   `decisions` maps each policy package to the part of the decision it
#   contributes for one resource; the sidecar validates every part and compiles
#   them into one plan. `pod_settings` is queried once per policy version with the
#   pod's identity: egress headers and the rate limit of the pod's tenant.
#   A new policy package has no effect until it is listed here: an import, a
#   `<name>_part(request)` function like those below and its call in
#   `decisions_for` (docs/policy.md, "Adding a policy package"). `pod_settings`
#   also lists the set's PCI exemptions.
package otlp_sidecar.main

import rego.v1

import data.otlp_sidecar.k8s
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

k8s_part(request) := {"otlp_sidecar.k8s": decision} if {
	decision := k8s.decision_for(request)
} else := {}

# METADATA
# title: Every policy's part of the decision for one request, by package
decisions_for(request) := object.union_n([
	pci_part(request), tenant_part(request), sampling_part(request), k8s_part(request),
])

decisions := decisions_for(input)

# METADATA
# title: Attribute keys that may carry card numbers unmasked, each with its reason
# description: |
#   Exact keys only (the engine refuses a glob); each use is counted per rule id.
#   None by default: `data.otlp_sidecar.config.exemptions`, e.g.
#   [{"rule_id": "qa.test_cards", "key": "qa.sample_value", "reason": "..."}].
#   An exemption only keeps its key from the card-number detectors: a key that
#   a rule masks or drops stays masked or dropped (`pci.card_number` masks
#   `test.card_number`, which ends in `card_number`).
exemptions := object.get(data.otlp_sidecar.config, "exemptions", [])

pod_settings := object.union(tenant.pod_settings_for(input), {"exemptions": exemptions})
