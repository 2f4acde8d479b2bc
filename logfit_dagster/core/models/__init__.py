"""Model families on one contract (see ``base``): each trains into an artifact folder and loads back into a scorer."""
