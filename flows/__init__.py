"""The flow: definition and input schema (JSON data), deployment, starting runs,
run status, and the two backends (Globus Flows and the embedded local one)."""
