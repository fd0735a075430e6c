"""European XFEL-style data for headrace's tests and examples: runs with known answers (`headrace.xfel.generate`)."""
