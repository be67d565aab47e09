package otlp_sidecar.pci_test

import rego.v1

import data.otlp_sidecar.pci

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call decision_for directly.
pci_request(signal) := {"signal": signal, "resource": {"service.name": "checkout"}}

actions_for(decision, key) := {rule.action |
	some rule in decision.attributes
	key in rule.keys
}

test_card_numbers_are_masked_in_every_value if {
	decision := pci.decision_for(pci_request("traces"))
	decision.detectors == [{"rule_id": "pci.pan", "kind": "pan", "action": "mask_pan"}]
}

test_security_codes_track_data_and_pin_blocks_are_dropped if {
	decision := pci.decision_for(pci_request("traces"))
	actions_for(decision, "cvv") == {"drop"}
	actions_for(decision, "cvc") == {"drop"}
	actions_for(decision, "security_code") == {"drop"}
	actions_for(decision, "track1") == {"drop"}
	actions_for(decision, "track2") == {"drop"}
	actions_for(decision, "pin") == {"drop"}
	actions_for(decision, "pin_block") == {"drop"}
}

test_full_card_numbers_are_masked if {
	decision := pci.decision_for(pci_request("traces"))
	actions_for(decision, "card_number") == {"mask_pan"}
	actions_for(decision, "primary_account_number") == {"mask_pan"}
}

test_holder_names_are_hashed if {
	decision := pci.decision_for(pci_request("traces"))
	actions_for(decision, "cardholder_name") == {"hash"}
	actions_for(decision, "card_holder_name") == {"hash"}
}

test_security_codes_are_never_hashed_or_kept if {
	decision := pci.decision_for(pci_request("traces")) with data.otlp_sidecar.config.pci.sensitive_action as "hash"
	sensitive := {rule.action | some rule in decision.attributes; rule.rule_id == "pci.sensitive"}
	sensitive == {"drop"}
}

test_redact_is_allowed_for_security_codes if {
	decision := pci.decision_for(pci_request("traces")) with data.otlp_sidecar.config.pci.sensitive_action as "redact"
	actions_for(decision, "cvv") == {"redact"}
}

test_pan_detector_can_hash if {
	decision := pci.decision_for(pci_request("traces")) with data.otlp_sidecar.config.pci.pan_action as "hash"
	decision.detectors == [{"rule_id": "pci.pan", "kind": "pan", "action": "hash"}]
}

test_pan_detector_cannot_be_turned_off_by_a_bad_action if {
	decision := pci.decision_for(pci_request("traces")) with data.otlp_sidecar.config.pci.pan_action as "keep"
	decision.detectors == [{"rule_id": "pci.pan", "kind": "pan", "action": "mask_pan"}]
}

test_applies_to_logs_and_metrics if {
	count(pci.decision_for(pci_request("logs")).detectors) == 1
	count(pci.decision_for(pci_request("metrics")).detectors) == 1
}
