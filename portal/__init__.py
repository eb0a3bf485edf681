"""The live results portal (``ptychoflow serve``): a read-only web application over the
run ledger and the result files."""
