"""What an operator meets: alerts that fire (promtool), metrics that exist, a dashboard that shows data."""
