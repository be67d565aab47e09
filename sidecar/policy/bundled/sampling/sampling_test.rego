package otlp_sidecar.sampling_test

import rego.v1

import data.otlp_sidecar.sampling

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call decision_for directly.
sampling_request(signal) := {"signal": signal, "resource": {"service.name": "checkout"}}

test_default_ratio_is_ten_percent if {
	decision := sampling.decision_for(sampling_request("traces"))
	decision.sampling.ratio == 0.1
	decision.sampling.rule_id == "sampling.ratio"
}

test_errors_are_always_kept if {
	decision := sampling.decision_for(sampling_request("traces"))
	{"rule_id": "sampling.errors", "kind": "status_error"} in decision.sampling.keep
}

test_large_orders_are_always_kept if {
	decision := sampling.decision_for(sampling_request("traces"))
	rule := {"rule_id": "sampling.large_order", "kind": "attr_at_least", "key": "order.amount", "value": 1000}
	rule in decision.sampling.keep
}

test_vip_users_are_always_kept if {
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.vip_users as ["u-1", "u-2"]
	vips := {rule.value | some rule in decision.sampling.keep; rule.rule_id == "sampling.vip_user"}
	vips == {"u-1", "u-2"}
}

test_ratio_is_tunable_per_service if {
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.service_ratios as {"checkout": 0.5}
	decision.sampling.ratio == 0.5
}

test_other_services_keep_the_default_ratio if {
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.service_ratios as {"cart": 0.5}
	decision.sampling.ratio == 0.1
}

test_logs_and_metrics_are_not_sampled if {
	not sampling.decision_for(sampling_request("logs"))
	not sampling.decision_for(sampling_request("metrics"))
}
