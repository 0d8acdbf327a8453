"""Feature store plumbing: staging the Feast repository, materialising, offline and online reads."""
