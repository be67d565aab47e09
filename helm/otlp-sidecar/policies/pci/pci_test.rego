package otlp_sidecar.pci_test

import rego.v1

import data.otlp_sidecar.pci

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call decision_for directly.
# They hold for any valid data.json (the chart writes its values there): what they
# assert is relative to the data, or pinned with `with`.
pci_request(signal) := {"signal": signal, "resource": {"service.name": "checkout"}}

settings := data.otlp_sidecar.config.pci

actions_for(decision, key) := {rule.action |
	some rule in decision.attributes
	key in rule.keys
}

test_card_numbers_are_detected_in_every_value if {
	decision := pci.decision_for(pci_request("traces"))
	decision.detectors == [{"rule_id": "pci.pan", "kind": "pan", "action": pci.pan_action}]
	pci.pan_action in {"mask_pan", "hash", "redact"}
}

test_card_numbers_are_masked_by_default if {
	decision := pci.decision_for(pci_request("traces")) with data.otlp_sidecar.config.pci.pan_action as null
	decision.detectors == [{"rule_id": "pci.pan", "kind": "pan", "action": "mask_pan"}]
}

test_every_sensitive_key_disappears if {
	decision := pci.decision_for(pci_request("traces"))
	every key in settings.sensitive_keys {
		actions_for(decision, key) == {pci.sensitive_action}
	}
	pci.sensitive_action in {"drop", "redact"}
}

test_security_codes_track_data_and_pin_blocks_are_dropped if {
	keys := ["cvv", "cvc", "security_code", "track1", "track2", "pin", "pin_block"]
	decision := pci.decision_for(pci_request("traces"))
		with data.otlp_sidecar.config.pci.sensitive_keys as keys
		with data.otlp_sidecar.config.pci.sensitive_action as "drop"
	every key in keys {
		actions_for(decision, key) == {"drop"}
	}
}

test_every_card_number_key_is_never_kept if {
	decision := pci.decision_for(pci_request("traces"))
	every key in settings.card_number_keys {
		actions_for(decision, key) == {pci.card_number_action}
	}
	pci.card_number_action in {"mask_pan", "hash", "redact", "drop"}
}

test_full_card_numbers_are_masked if {
	decision := pci.decision_for(pci_request("traces"))
		with data.otlp_sidecar.config.pci.card_number_keys as ["card_number", "primary_account_number"]
		with data.otlp_sidecar.config.pci.card_number_action as "mask_pan"
	actions_for(decision, "card_number") == {"mask_pan"}
	actions_for(decision, "primary_account_number") == {"mask_pan"}
}

test_every_holder_key_is_hidden if {
	decision := pci.decision_for(pci_request("traces"))
	every key in settings.holder_keys {
		actions_for(decision, key) == {pci.holder_action}
	}
	pci.holder_action in {"hash", "redact", "drop"}
}

test_holder_names_are_hashed if {
	decision := pci.decision_for(pci_request("traces"))
		with data.otlp_sidecar.config.pci.holder_keys as ["cardholder_name", "card_holder_name"]
		with data.otlp_sidecar.config.pci.holder_action as "hash"
	actions_for(decision, "cardholder_name") == {"hash"}
	actions_for(decision, "card_holder_name") == {"hash"}
}

test_security_codes_are_never_hashed_or_kept if {
	decision := pci.decision_for(pci_request("traces"))
		with data.otlp_sidecar.config.pci.sensitive_keys as ["cvv"]
		with data.otlp_sidecar.config.pci.sensitive_action as "hash"
	sensitive := {rule.action | some rule in decision.attributes; rule.rule_id == "pci.sensitive"}
	sensitive == {"drop"}
}

test_redact_is_allowed_for_security_codes if {
	decision := pci.decision_for(pci_request("traces"))
		with data.otlp_sidecar.config.pci.sensitive_keys as ["cvv"]
		with data.otlp_sidecar.config.pci.sensitive_action as "redact"
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
