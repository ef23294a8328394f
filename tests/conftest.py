"""Shared test setup. The real-server fixtures come from the tenantkit.testing plugin."""
