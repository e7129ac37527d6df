"""Durable state of the controller: services, rollouts, instances and the audit log."""
