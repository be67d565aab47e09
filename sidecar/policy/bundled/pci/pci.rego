# METADATA
# title: PCI DSS - card data never leaves the pod readable
# description: |
#   - Card numbers inside every string value are masked to their last four digits
#     (the rewriter's `pan` detector: Luhn-valid, on a brand prefix and length).
#   - Attributes named like card security codes, track data or PIN blocks are
#     dropped (never kept, not even hashed).
#   - Attributes named like a full card number are masked to the last four.
#   - Attributes naming the card holder are replaced by their keyed hash.
#   Tunables: `data.otlp_sidecar.config.pci`.
package otlp_sidecar.pci

import rego.v1

settings := data.otlp_sidecar.config.pci

# Security codes, track data and PIN blocks may only disappear: `drop` or `redact`.
default sensitive_action := "drop"

sensitive_action := settings.sensitive_action if settings.sensitive_action in {"drop", "redact"}

# A card number may be masked, hashed, redacted or dropped, never kept.
default card_number_action := "mask_pan"

card_number_action := settings.card_number_action if {
	settings.card_number_action in {"mask_pan", "hash", "redact", "drop"}
}

default pan_action := "mask_pan"

pan_action := settings.pan_action if settings.pan_action in {"mask_pan", "hash", "redact"}

default holder_action := "hash"

holder_action := settings.holder_action if settings.holder_action in {"hash", "redact", "drop"}

# METADATA
# title: Card numbers in every string value
detectors := [{"rule_id": "pci.pan", "kind": "pan", "action": pan_action}]

# METADATA
# title: Attributes by key - security codes, full card numbers, holder identity
attributes := [rule |
	some rule in [
		{"rule_id": "pci.sensitive", "keys": settings.sensitive_keys, "action": sensitive_action},
		{"rule_id": "pci.card_number", "keys": settings.card_number_keys, "action": card_number_action},
		{"rule_id": "pci.holder", "keys": settings.holder_keys, "action": holder_action},
	]
	count(rule.keys) > 0
]

# METADATA
# title: The PCI part of the decision for one request (the same for every signal)
decision_for(_) := {"detectors": detectors, "attributes": attributes}

decision := decision_for(input)
