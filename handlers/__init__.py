"""One thin module per trigger: parse the request, call the core, map the outcome to a response."""
