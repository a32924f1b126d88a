"""The bridge: turns push requests into per-device deliveries and follows them to the end."""
