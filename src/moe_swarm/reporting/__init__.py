"""Human-readable reports (markdown tables, plots) of evaluation results computed elsewhere."""
