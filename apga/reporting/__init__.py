"""Results: the results table, its summary and plots, and mask galleries."""
