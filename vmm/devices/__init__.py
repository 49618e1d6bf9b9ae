"""Device models. Each implements vmm.bus.PortDevice and knows nothing of the run loop."""
