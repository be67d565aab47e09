package otlp_sidecar.sampling_test

import rego.v1

import data.otlp_sidecar.sampling

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call decision_for directly.
# They hold for any valid data.json (the chart writes its values there).
sampling_request(signal) := {"signal": signal, "resource": {"service.name": "checkout"}}

settings := data.otlp_sidecar.config.sampling

test_ratio_comes_from_the_data if {
	decision := sampling.decision_for(sampling_request("traces"))
	decision.sampling.ratio == to_number(settings.ratio)
	decision.sampling.rule_id == "sampling.ratio"
}

test_ratio_of_the_data_is_a_probability if {
	ratio := sampling.decision_for(sampling_request("traces")).sampling.ratio
	ratio >= 0
	ratio <= 1
}

test_any_ratio_is_applied if {
	low := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.ratio as 0
		with data.otlp_sidecar.config.sampling.service_ratios as {}
	low.sampling.ratio == 0
	fifth := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.ratio as 0.2
		with data.otlp_sidecar.config.sampling.service_ratios as {}
	fifth.sampling.ratio == 0.2
	whole := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.ratio as 1
		with data.otlp_sidecar.config.sampling.service_ratios as {}
	whole.sampling.ratio == 1
}

test_a_ratio_given_as_text_is_a_number if {
	# `helm --set sampling.ratio=0.2` hands the chart a string
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.ratio as "0.2"
		with data.otlp_sidecar.config.sampling.service_ratios as {}
	decision.sampling.ratio == 0.2
}

test_errors_are_always_kept if {
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.keep_errors as true
	{"rule_id": "sampling.errors", "kind": "status_error"} in decision.sampling.keep
}

test_errors_kept_as_the_data_says if {
	decision := sampling.decision_for(sampling_request("traces"))
	kept := [rule | some rule in decision.sampling.keep; rule.rule_id == "sampling.errors"]
	count(kept) == count([true | settings.keep_errors == true])
}

test_large_orders_are_always_kept if {
	decision := sampling.decision_for(sampling_request("traces"))
		with data.otlp_sidecar.config.sampling.order_attribute as "order.amount"
		with data.otlp_sidecar.config.sampling.order_threshold as 1000
	rule := {"rule_id": "sampling.large_order", "kind": "attr_at_least", "key": "order.amount", "value": 1000}
	rule in decision.sampling.keep
}

test_order_threshold_comes_from_the_data if {
	decision := sampling.decision_for(sampling_request("traces")) with data.otlp_sidecar.config.sampling.order_attribute as "order.amount"
	some rule in decision.sampling.keep
	rule.rule_id == "sampling.large_order"
	rule.value == to_number(settings.order_threshold)
}

test_a_threshold_given_as_text_is_a_number if {
	decision := sampling.decision_for(sampling_request("traces"))
		with data.otlp_sidecar.config.sampling.order_attribute as "order.amount"
		with data.otlp_sidecar.config.sampling.order_threshold as "2500"
	some rule in decision.sampling.keep
	rule.rule_id == "sampling.large_order"
	rule.value == 2500
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
	decision.sampling.ratio == to_number(settings.ratio)
}

test_logs_and_metrics_are_not_sampled if {
	not sampling.decision_for(sampling_request("logs"))
	not sampling.decision_for(sampling_request("metrics"))
}
