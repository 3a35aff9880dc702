"""Trading environment (gymnax API), the exit resolver and on-device trade statistics."""
